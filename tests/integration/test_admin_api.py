"""Management API on the real engine: /running, load and unload, /logs and log streams."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from llamaswap_docker.logs import logger
from tests.conftest import fake_model, model_containers


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


class Later:
    """Run ``work`` in a thread while the test reads a stream; ``join()`` re-raises what it
    raised. Each caller starts it once its stream is subscribed, so no delay is needed."""

    def __init__(self, work) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=60)
        if self.error is not None:
            raise self.error


def wait_for_state(url: str, model: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        entries = httpx.get(f"{url}/running", params={"all": "true"}, timeout=10).json()["running"]
        entry = next(e for e in entries if e["model"] == model)
        if entry["state"] == state:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"{model} did not become {state}: {entry}")
        time.sleep(0.1)


@pytest.fixture
def proxy(start_proxy):
    return start_proxy(
        {"fake": fake_model("--model-name", "fake", aliases=["fake-alias"], ttl=300),
         "other": fake_model("--model-name", "other")},
        groups={"both": {"swap": False, "exclusive": False, "members": ["fake", "other"]}},
    )


def test_running_lists_loaded_models_with_container_fields(proxy, docker_client, instance_name) -> None:
    assert httpx.get(f"{proxy.url}/running").json() == {"running": []}
    assert chat(proxy.url, "fake").status_code == 200

    [entry] = httpx.get(f"{proxy.url}/running").json()["running"]

    [container] = model_containers(docker_client, instance_name, "fake")
    assert entry["model"] == "fake"
    assert entry["state"] == "ready"
    assert entry["container_id"] == container.id
    assert entry["container_name"] == container.name
    assert entry["image"] == "llamaswap/fake-upstream:local"
    assert entry["in_flight"] == 0 and entry["waiting"] == 0
    assert entry["ttl"] == 300 and 0 < entry["ttl_left_s"] <= 300
    assert entry["uptime_s"] >= 0
    assert entry["base_url"].startswith("http://127.0.0.1:")
    assert entry["failure"] is None
    every = httpx.get(f"{proxy.url}/running", params={"all": "true"}).json()["running"]
    assert {e["model"]: e["state"] for e in every} == {"fake": "ready", "other": "stopped"}


def test_load_without_wait_answers_202_then_becomes_ready(proxy, docker_client, instance_name) -> None:
    response = httpx.post(f"{proxy.url}/api/models/load/fake-alias", params={"wait": "false"},
                          timeout=10)

    assert response.status_code == 202
    assert response.json()["msg"] == "loading" and response.json()["model"] == "fake"
    wait_for_state(proxy.url, "fake", "ready")
    assert len(model_containers(docker_client, instance_name, "fake")) == 1


def test_load_waits_until_ready_and_unload_removes_the_container(
    proxy, docker_client, instance_name
) -> None:
    loaded = httpx.post(f"{proxy.url}/api/models/load/other", timeout=60)
    assert loaded.status_code == 200
    assert loaded.json() == {"msg": "ok", "model": "other", "state": "ready"}
    assert len(model_containers(docker_client, instance_name, "other")) == 1

    unloaded = httpx.post(f"{proxy.url}/api/models/unload/other", timeout=60)

    assert unloaded.json() == {"msg": "ok", "unloaded": "other"}
    assert model_containers(docker_client, instance_name) == []


def test_unload_all_stops_every_model(proxy, docker_client, instance_name) -> None:
    assert chat(proxy.url, "fake").status_code == 200
    assert chat(proxy.url, "other").status_code == 200
    assert len(model_containers(docker_client, instance_name)) == 2

    response = httpx.post(f"{proxy.url}/api/models/unload", timeout=60)

    assert response.json() == {"msg": "ok", "unloaded": "all"}
    assert model_containers(docker_client, instance_name) == []


def test_load_of_unknown_model_is_404_in_openai_shape(proxy) -> None:
    response = httpx.post(f"{proxy.url}/api/models/load/nope", timeout=10)
    assert response.status_code == 404
    assert "'nope' is not configured" in response.json()["error"]["message"]


def test_health_answers_ok_as_text(proxy) -> None:
    response = httpx.get(f"{proxy.url}/health")
    assert response.status_code == 200 and response.text == "OK"


def test_logs_returns_the_proxys_buffered_lines(proxy) -> None:
    assert chat(proxy.url, "fake").status_code == 200

    response = httpx.get(f"{proxy.url}/logs")

    assert response.headers["content-type"].startswith("text/plain")
    assert "model ready" in response.text and "model=fake" in response.text


def test_logs_stream_sends_history_then_live_lines(proxy) -> None:
    marker = f"live-marker-{time.monotonic_ns()}"
    lines: list[str] = []
    with httpx.stream("GET", f"{proxy.url}/logs/stream", timeout=10) as response:
        iterator = response.iter_lines()
        lines.append(next(iterator))  # history arrived: the stream is subscribed
        later = Later(lambda: logger.info(marker))
        for line in iterator:
            lines.append(line)
            if marker in line:
                break
    later.join()
    assert "proxy starting" in "\n".join(lines)
    assert marker in lines[-1]


def test_logs_stream_without_history_sends_only_new_lines(proxy) -> None:
    marker = f"fresh-marker-{time.monotonic_ns()}"
    with httpx.stream("GET", f"{proxy.url}/logs/stream?no-history", timeout=10) as response:
        later = Later(lambda: logger.info(marker))
        first = next(response.iter_lines())
    later.join()
    assert marker in first


def test_model_log_stream_yields_container_output_and_follows(proxy) -> None:
    assert chat(proxy.url, "fake").status_code == 200
    seen: list[str] = []
    with httpx.stream("GET", f"{proxy.url}/logs/stream/fake", timeout=10) as response:
        assert response.status_code == 200
        iterator = response.iter_lines()
        for line in iterator:
            seen.append(line)
            if "ready" in line:
                break
        # A request now shows up live, from the engine's log stream.
        later = Later(lambda: chat(proxy.url, "fake").raise_for_status())
        for line in iterator:
            seen.append(line)
            if "POST /v1/chat/completions" in line:
                break
    later.join()
    text = "\n".join(seen)
    assert "fake-upstream listening" in text
    assert "POST /v1/chat/completions" in seen[-1]


def test_model_log_tail_without_follow_ends(proxy) -> None:
    assert chat(proxy.url, "fake").status_code == 200
    response = httpx.get(f"{proxy.url}/logs/stream/fake", params={"follow": "false", "tail": 2},
                         timeout=10)
    assert response.status_code == 200
    assert len(response.text.splitlines()) == 2


def test_model_log_stream_of_a_stopped_model_is_404(proxy) -> None:
    response = httpx.get(f"{proxy.url}/logs/stream/other", timeout=10)
    assert response.status_code == 404
    assert "has no container" in response.json()["error"]["message"]


def test_model_log_stream_ends_when_the_container_stops(proxy) -> None:
    assert chat(proxy.url, "fake").status_code == 200
    with httpx.stream("GET", f"{proxy.url}/logs/stream/fake", params={"tail": 0},
                      timeout=30) as response:
        later = Later(lambda: httpx.post(f"{proxy.url}/api/models/unload/fake",
                                              timeout=30).raise_for_status())
        # Ends (rather than timing out after 30 s without a byte): the engine closes a
        # follow when the container stops.
        list(response.iter_lines())
    later.join()


def test_openapi_documents_management_shapes(proxy) -> None:
    schema = httpx.get(f"{proxy.url}/openapi.json").json()
    assert "/running" in schema["paths"]
    assert "/api/models/load/{model}" in schema["paths"]
    assert "/logs/stream/{model}" in schema["paths"]
    components = schema["components"]["schemas"]
    assert {"RunningModel", "RunningList", "LoadResult", "UnloadResult"} <= set(components)
    assert "container_id" in components["RunningModel"]["properties"]


def test_model_log_stream_stops_reading_the_engine_when_the_client_disconnects(proxy) -> None:
    assert chat(proxy.url, "fake").status_code == 200

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "logs-fake"]

    with httpx.stream("GET", f"{proxy.url}/logs/stream/fake", params={"tail": 0},
                      timeout=30) as response:
        # Following: a request made now shows up in the stream (what a `logs -f` user sees).
        later = Later(lambda: chat(proxy.url, "fake").raise_for_status())
        assert any("POST /v1/chat/completions" in line for line in response.iter_lines())
        later.join()
    # The client left: the reader of the engine's stream ends (polled: it notices the close).
    deadline = time.monotonic() + 30
    while readers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert readers() == [], "the engine log stream was left open after the client left"


def test_proxy_log_tail_keeps_the_last_lines(proxy) -> None:
    every = httpx.get(f"{proxy.url}/logs").text.splitlines()
    last_two = httpx.get(f"{proxy.url}/logs", params={"tail": 2}).text.splitlines()
    assert len(every) > 2 and last_two == every[-2:]
    assert httpx.get(f"{proxy.url}/logs", params={"tail": 0}).text == ""
