"""llama-swap's per-model limits on the real engine: ``timeouts.responseHeader`` (504 in the
caller's dialect, the request cancelled at the server, the model given back), ``unloadTimeout``
as the stop grace, and a model's own ``healthCheckTimeout``."""

from __future__ import annotations

import time

import httpx

from tests.conftest import chat, fake_model


def running(url: str) -> dict[str, dict]:
    return {entry["model"]: entry for entry in
            httpx.get(f"{url}/running", params={"all": "true"}, timeout=10).json()["running"]}


def wait_for(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_no_response_headers_in_time_is_504_and_the_model_is_given_back(start_proxy) -> None:
    proxy = start_proxy({
        "hung": fake_model("--hang", timeouts={"responseHeader": 1}),
        "other": fake_model(),
    })  # one swap group: "other" can load only once "hung" holds no request
    response = chat(proxy.url, "hung")
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout" and error["type"] == "server_error"
    assert "timeouts.responseHeader (1 s)" in error["message"]

    anthropic = httpx.post(f"{proxy.url}/v1/messages", timeout=60, json={
        "model": "hung", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status_code == 504
    assert anthropic.json() == {"type": "error", "error": {
        "type": "timeout_error", "message": anthropic.json()["error"]["message"]}}

    # The request was cancelled at the model server (its connection closed) ...
    base_url = running(proxy.url)["hung"]["base_url"]
    stats = lambda: httpx.get(f"{base_url}/debug/stats", timeout=5).json()  # noqa: E731
    assert wait_for(lambda: stats()["cancelled_streams"] >= 2)
    # ... and the model given back: nothing in flight, and a swap to another model goes ahead.
    assert running(proxy.url)["hung"]["in_flight"] == 0
    assert chat(proxy.url, "other").status_code == 200
    assert running(proxy.url)["hung"]["state"] == "stopped"


def test_response_header_bounds_only_the_wait_for_headers(start_proxy) -> None:
    # 8 tokens at 4/s: a blocking answer sends its headers after 2 s, a stream at once.
    proxy = start_proxy({"slow": fake_model("--tokens", "8", "--token-rate", "4",
                                            timeouts={"responseHeader": 1, "connect": 5})})
    assert chat(proxy.url, "slow", max_tokens=8).status_code == 504
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body,
                      timeout=60) as stream:
        assert stream.status_code == 200
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 8  # every token, well past 1 s


def test_response_header_timeout_reaches_a_loading_stream_in_band(start_proxy) -> None:
    proxy = start_proxy({"hung": fake_model("--hang", timeouts={"responseHeader": 1},
                                            sendLoadingState=True)})
    body = {"model": "hung", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body,
                      timeout=60) as stream:
        assert stream.status_code == 200  # sent while the model loaded
        text = "".join(stream.iter_text())
    assert '"code": "upstream_timeout"' in text and text.endswith("data: [DONE]\n\n")


def test_unload_timeout_is_the_grace_before_a_stubborn_server_is_killed(start_proxy) -> None:
    # Both servers ignore SIGTERM: an unload takes the whole grace. docker.stopTimeout (60 s)
    # would outlast the unload call's deadline; unloadTimeout (1 s), global or the model's own,
    # is the grace that applies.
    proxy = start_proxy(
        {"global": fake_model("--ignore-sigterm"),
         "own": fake_model("--ignore-sigterm", unloadTimeout=1)},
        unloadTimeout=1, docker={"stopTimeout": 60},
        groups={"both": {"swap": False, "exclusive": False, "members": ["global", "own"]}})
    assert proxy.config.stop_timeout("global") == proxy.config.stop_timeout("own") == 1
    for model in ("global", "own"):
        assert chat(proxy.url, model).status_code == 200
        unloaded = httpx.post(f"{proxy.url}/api/models/unload/{model}", timeout=20)
        assert unloaded.status_code == 200, unloaded.text
        assert running(proxy.url)[model]["container_id"] is None


def test_a_models_own_health_check_timeout_bounds_its_start(start_proxy) -> None:
    # The global healthCheckTimeout is 30 s (the harness's); this model's own 2 s applies.
    proxy = start_proxy({"slow-start": fake_model("--load-delay", "120", healthCheckTimeout=2)})
    response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=25, json={
        "model": "slow-start", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 502
    assert "within healthCheckTimeout=2s" in response.json()["error"]["message"]
