"""Peers on the real engine: a fake model server container, or a second proxy, as the remote.

A peer's model is served through the same hop as a local one (its key sent, its own model
name in the body, one activity row and the counters), listed in ``/v1/models``, never started
or swapped; a peer that does not answer is a 502 in the caller's dialect.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import (
    FAKE_UPSTREAM_IMAGE,
    RUN_INSTANCE,
    chat,
    fake_model,
    model_containers,
    unused_tcp_port,
)

REMOTE_KEY = "sk-remote-7f3a"


def activity(url: str, headers: dict[str, str] | None = None, deadline_s: float = 30) -> list[dict]:
    """The proxy's activity rows (newest first), once it has any."""
    deadline = time.monotonic() + deadline_s
    while True:
        body = httpx.get(f"{url}/api/metrics/activity", headers=headers, timeout=10).json()
        rows: list[dict[str, Any]] = body.get("activity", body.get("data", []))
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture
def remote(test_containers) -> tuple[Any, str]:
    """A fake model server that wants ``REMOTE_KEY``, as a remote peer would."""
    container, url = test_containers.run(
        FAKE_UPSTREAM_IMAGE, ["--port", "8080", "--api-key", REMOTE_KEY, "--tokens", "5"])
    deadline = time.monotonic() + 30
    while True:  # its /health is open (like llama-server's with --api-key)
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return container, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the remote did not come up"
        time.sleep(0.05)


def test_a_peers_model_is_served_with_its_key_and_recorded_like_a_local_one(
        start_proxy, remote, docker_client, instance_name) -> None:
    _, remote_url = remote
    proxy = start_proxy({"local": fake_model()},
                        peers={"lab": {"proxy": remote_url, "apiKey": REMOTE_KEY,
                                       "models": ["fake-model"]}})

    by_full_name = chat(proxy.url, "lab/fake-model")
    assert by_full_name.status_code == 200, by_full_name.text
    assert by_full_name.json()["model"] == "fake-model"  # the peer got its own name for it
    stats = httpx.get(f"{remote_url}/debug/stats", timeout=10).json()
    assert stats["last_headers"]["authorization"] == f"Bearer {REMOTE_KEY}"
    assert stats["last_headers"]["x-api-key"] == REMOTE_KEY

    by_bare_name = chat(proxy.url, "fake-model", stream=True)  # one peer alone has it
    assert by_bare_name.status_code == 200
    assert by_bare_name.headers["content-type"].startswith("text/event-stream")
    assert by_bare_name.text.rstrip().endswith("data: [DONE]")

    passthrough = httpx.get(f"{proxy.url}/upstream/lab/fake-model/debug/stats", timeout=10)
    assert passthrough.status_code == 200 and passthrough.json()["requests"] == 2

    listed = {m["id"]: m for m in httpx.get(f"{proxy.url}/v1/models", timeout=10).json()["data"]}
    assert listed["lab/fake-model"]["meta"]["llamaswap"] == {"type": "peer", "peerID": "lab"}
    assert listed["lab/fake-model"]["name"] == "lab: fake-model"

    rows = activity(proxy.url)
    peer_rows = [row for row in rows if row["model"] == "lab/fake-model"]
    assert len(peer_rows) == 3
    assert {row["resp_status_code"] for row in peer_rows} == {200}
    chats = [row for row in peer_rows if row["req_path"] == "/v1/chat/completions"]
    assert [row["tokens"]["output_tokens"] for row in chats] == [4, 4]  # chat() asks for 4
    metrics = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    assert 'model="lab/fake-model"' in metrics

    # Never started or swapped: no container for it, and the local model was never touched.
    assert model_containers(docker_client, instance_name) == []
    assert httpx.get(f"{proxy.url}/running", timeout=10).json()["running"] == []


def test_a_dead_peer_is_a_502_in_the_openai_and_the_anthropic_shape(start_proxy) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port()}"
    proxy = start_proxy({"local": fake_model()},
                        peers={"gone": {"proxy": dead, "models": ["m"],
                                        "timeouts": {"connect": 5}}})

    openai_style = chat(proxy.url, "gone/m")
    assert openai_style.status_code == 502
    error = openai_style.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "peer 'gone'" in error["message"] and dead in error["message"]

    client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=4,
                               messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "api_error"
    assert "peer 'gone'" in caught.value.body["error"]["message"]

    rows = activity(proxy.url)
    assert sorted((row["model"], row["resp_status_code"]) for row in rows) == [
        ("gone/m", 502), ("gone/m", 502)]


def test_a_second_proxy_serves_as_a_peer_behind_its_api_key(start_proxy, instance_name) -> None:
    behind = start_proxy({"m": fake_model(aliases=["m-alias"])}, apiKeys=["sk-behind"])
    front = start_proxy(
        {"local": fake_model()},
        docker={"instance": f"{instance_name}-front"},
        peers={"behind": {"proxy": behind.url, "apiKey": "sk-behind",
                          "models": ["m", "m-alias"],
                          "filters": {"setParams": {"max_tokens": 3}}}})

    reply = chat(front.url, "behind/m-alias")
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "m-alias"
    assert reply.json()["usage"]["completion_tokens"] == 3  # the peer's setParams went with it

    key = {"Authorization": "Bearer sk-behind"}
    behind_rows = activity(behind.url, headers=key)
    assert [(row["model"], row["resp_status_code"]) for row in behind_rows] == [("m", 200)]
    assert [row["model"] for row in activity(front.url)] == ["behind/m-alias"]
    assert RUN_INSTANCE in instance_name  # both instances are reaped by this run
