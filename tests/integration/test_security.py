"""Web pages the operator visits cannot drive a loopback proxy (real server, real engine)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import fake_model

ALLOWED_ORIGIN = "https://chat.example.com"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def proxy(start_proxy):
    return start_proxy({"fake": fake_model()}, cors={"allowOrigins": [ALLOWED_ORIGIN]})


ROUTES = [("POST", "/v1/chat/completions"), ("GET", "/running"), ("GET", "/unload"),
          ("POST", "/api/models/unload"), ("GET", "/logs"), ("GET", "/v1/models")]


@pytest.mark.parametrize(("header", "value", "hint"), [
    ("host", "evil.example", "allowedHosts"),  # DNS rebinding: the page's name on 127.0.0.1
    ("origin", "https://evil.example", "cors.allowOrigins"),  # a cross-site fetch or form
])
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_foreign_host_or_origin_is_refused_on_every_route(proxy, method, path, header, value,
                                                            hint) -> None:
    response = httpx.request(method, f"{proxy.url}{path}", json=CHAT, headers={header: value},
                             timeout=10)
    assert response.status_code == 403, response.text
    assert hint in response.json()["error"]["message"]


def test_a_cross_site_get_without_origin_is_refused(proxy) -> None:
    # <img src="http://127.0.0.1:8080/unload">: no Origin, but the browser says where from.
    response = httpx.get(f"{proxy.url}/unload", headers={"sec-fetch-site": "cross-site"})
    assert response.status_code == 403
    same = httpx.get(f"{proxy.url}/running", headers={"sec-fetch-site": "same-origin"})
    assert same.status_code == 200


def test_nothing_a_refused_page_sent_reached_a_model(proxy) -> None:
    httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10,
               headers={"origin": "https://evil.example"})
    httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10,
               headers={"host": "evil.example"})
    running = httpx.get(f"{proxy.url}/running", timeout=10).json()["running"]
    assert running == []  # no model was started for them


def test_health_answers_any_origin_for_probes(proxy) -> None:
    response = httpx.get(f"{proxy.url}/health", headers={"origin": "https://evil.example"})
    assert response.status_code == 200


def test_an_allowed_origin_gets_a_working_preflight_and_response(proxy) -> None:
    preflight = httpx.options(f"{proxy.url}/v1/chat/completions", headers={
        "origin": ALLOWED_ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"}, timeout=10)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"]
    refused = httpx.options(f"{proxy.url}/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"}, timeout=10)
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers

    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=60,
                          headers={"origin": ALLOWED_ORIGIN})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert response.json()["choices"][0]["message"]["content"]


def test_json_sent_as_text_plain_is_415_and_starts_nothing(proxy) -> None:
    # The cross-site "simple request": no preflight, so only the content type can stop it.
    import json

    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = httpx.post(f"{proxy.url}/v1/chat/completions", content=json.dumps(CHAT),
                              headers={"content-type": content_type}, timeout=10)
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert httpx.get(f"{proxy.url}/running", timeout=10).json()["running"] == []


def test_models_answer_only_the_proxy_also_after_a_restart_with_adoption(
    proxy_processes, tiny_model_dir, docker_client, instance_name
) -> None:
    import signal

    from tests.conftest import chat, llama_model, model_containers, ready_ids

    models = {
        "fake": fake_model(upstreamKeyEnv="FAKE_API_KEY"),
        "llama": llama_model(tiny_model_dir, upstreamKeyEnv="LLAMA_API_KEY"),
    }
    groups = {"both": {"swap": False, "exclusive": False, "members": ["fake", "llama"]}}
    first = proxy_processes(models, groups=groups)
    for model in models:
        assert chat(first.url, model).status_code == 200
    running = {e["model"]: e for e in httpx.get(f"{first.url}/running").json()["running"]}

    def direct_status(model: str) -> int:
        return httpx.post(f"{running[model]['base_url']}/v1/chat/completions", timeout=30,
                          json={**CHAT, "model": model}).status_code

    assert {model: direct_status(model) for model in models} == {"fake": 401, "llama": 401}
    # Health checks stay open; the key appears in no label, no API answer, no log line.
    for model in models:
        assert httpx.get(f"{running[model]['base_url']}/health").status_code == 200
    containers = model_containers(docker_client, instance_name)
    keys = {c.labels["io.llamaswap.model"]: next(
        e.split("=", 1)[1] for e in c.attrs["Config"]["Env"] if e.split("=")[0].endswith("API_KEY"))
        for c in containers}
    assert len(set(keys.values())) == 2 and all(len(k) >= 32 for k in keys.values())
    visible = (json_text(first.url, "/running?all=true") + json_text(first.url, "/logs")
               + first.log() + str([c.labels for c in containers]))
    assert not any(key in visible for key in keys.values())

    # SIGKILL, restart: the containers are adopted, with the keys they were started with.
    ids = ready_ids(first.url)
    first.signal(signal.SIGKILL)
    first.wait()
    second = proxy_processes()
    assert ready_ids(second.url) == ids
    for model in models:
        assert chat(second.url, model).status_code == 200
    assert {model: direct_status(model) for model in models} == {"fake": 401, "llama": 401}


def json_text(url: str, path: str) -> str:
    return httpx.get(f"{url}{path}", timeout=10).text


def test_serve_and_every_reload_say_what_the_config_gives_the_host(proxy_processes) -> None:
    import signal
    import time

    # Never started here: the warning is about the config, said before anything runs.
    risky = fake_model(docker={"privileged": True}, unlisted=True)
    process = proxy_processes({"fake": fake_model(), "risky": risky})

    def warnings() -> list[str]:
        return [line for line in process.log().splitlines()
                if "config gives the host away" in line]

    [line] = warnings()
    assert "the container runs privileged" in line and "models.risky.docker.privileged" in line
    assert str(process.config_path) in line  # file (and line) named, as `config check` does
    process.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while len(warnings()) < 2:
        assert time.monotonic() < deadline, process.log()[-2000:]
        time.sleep(0.1)
    assert httpx.get(f"{process.url}/health", timeout=5).status_code == 200  # said, not refused
