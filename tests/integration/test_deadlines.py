"""Nothing holds a model forever: forced unloads, cancelling one request, stalled readers."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from tests.conftest import chat, fake_model, model_containers

STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def stream_in_thread(url: str, model: str, max_tokens: int) -> tuple[threading.Thread, dict]:
    """A streaming chat read line by line in a thread; the result dict fills as it goes."""
    result: dict = {"lines": [], "first": threading.Event(), "ended_at": None}

    def run() -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                              json={**STREAM, "model": model, "max_tokens": max_tokens}) as r:
                result["status"] = r.status_code
                for line in r.iter_lines():
                    if line:
                        result["lines"].append(line)
                        result["first"].set()
        except httpx.HTTPError as exc:
            result["error"] = exc
        finally:
            result["ended_at"] = time.monotonic()
            result["first"].set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_forced_unload_ends_a_running_stream_with_an_error_and_removes_the_container(
    start_proxy, docker_client, instance_name
) -> None:
    proxy = start_proxy({"slow": fake_model("--token-rate", "4")})
    thread, result = stream_in_thread(proxy.url, "slow", 400)  # ≈100 s of tokens
    assert result["first"].wait(30) and result.get("status") == 200
    response = httpx.post(f"{proxy.url}/api/models/unload/slow?force=true", timeout=30)
    assert response.status_code == 200, response.text
    thread.join(60)  # the stream had ≈100 s to go: ending now is the cut
    assert not thread.is_alive() and result["ended_at"] is not None, result
    last = json.loads(result["lines"][-1].removeprefix("data: "))
    assert "request cut" in last["error"]["message"] and "unloaded (force)" in last["error"]["message"]
    assert model_containers(docker_client, instance_name, "slow") == []


def test_inflight_lists_requests_and_cancel_cuts_one(start_proxy) -> None:
    proxy = start_proxy({"slow": fake_model("--token-rate", "4")})
    thread, result = stream_in_thread(proxy.url, "slow", 400)
    assert result["first"].wait(30)
    [entry] = httpx.get(f"{proxy.url}/api/inflight", timeout=10).json()["inflight"]
    assert entry["model"] == "slow" and entry["path"] == "/v1/chat/completions"
    assert entry["bytes"] > 0 and entry["elapsed_s"] > 0 and entry["client"].startswith("127.0.0.1:")

    cancelled = httpx.post(f"{proxy.url}/api/inflight/{entry['id']}/cancel", timeout=10)
    assert cancelled.status_code == 200
    thread.join(60)
    assert not thread.is_alive() and "cancelled" in result["lines"][-1]
    assert httpx.get(f"{proxy.url}/api/inflight").json()["inflight"] == []
    again = httpx.post(f"{proxy.url}/api/inflight/{entry['id']}/cancel", timeout=10)
    assert again.status_code == 404
    assert chat(proxy.url, "slow").status_code == 200  # the model serves on


def test_a_stalled_reader_is_cut_and_the_swap_waiting_on_it_proceeds(start_proxy) -> None:
    # a and b swap; a's answer is far larger than the socket buffers and its client stops
    # reading: without the stall timeout the swap to b would wait forever.
    proxy = start_proxy({"a": fake_model("--tokens", "400000"), "b": fake_model()},
                        stallTimeout=1)
    host, port = proxy.url.removeprefix("http://").split(":")
    body = json.dumps({**STREAM, "model": "a", "max_tokens": 400000}).encode()
    stalled = socket.create_connection((host, int(port)))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body))
    assert b" 200 " in stalled.recv(1024)  # headers arrive; then this client reads no more
    try:
        # Queues behind a's in-flight request: without the cut it would wait past chat()'s 60 s.
        response = chat(proxy.url, "b")
        assert response.status_code == 200, response.text
        running = {e["model"]: e for e in httpx.get(f"{proxy.url}/running?all=true").json()["running"]}
        assert running["a"]["in_flight"] == 0 and running["b"]["state"] == "ready"
    finally:
        stalled.close()
