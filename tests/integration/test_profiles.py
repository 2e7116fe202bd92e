"""Profiles, selectors, setParamsByID names and ``upstream.ignorePaths`` on the real engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from tests.conftest import chat, fake_model, model_containers, poll, ready_ids


def _events(lines: Iterator[str], kind: str) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event["type"] == kind:
                yield event["data"]


def test_a_profile_pins_names_at_runtime_and_the_event_stream_says_so(start_proxy) -> None:
    proxy = start_proxy({"a": fake_model(), "b": fake_model()},
                        profiles={"work": {"description": "at work",
                                           "pins": {"chat": "b", "draw": None}},
                                  "home": {"pins": {"chat": "a"}}})
    url = proxy.url
    assert httpx.get(f"{url}/api/profiles", timeout=10).json() == {
        "active": None,
        "profiles": [{"id": "home", "description": "", "pins": {"chat": "a"}},
                     {"id": "work", "description": "at work", "pins": {"chat": "b", "draw": ""}}]}
    assert chat(url, "chat").status_code == 404  # a pin is no name while its profile is off

    with httpx.stream("GET", f"{url}/api/events", timeout=30) as stream:
        changes = _events(stream.iter_lines(), "profileChanged")
        assert next(changes)["active"] is None  # where a new subscriber starts
        put = httpx.put(f"{url}/api/profiles/active", json={"name": "work"}, timeout=10)
        assert (put.status_code, put.json()) == (200, {"active": "work"})
        assert next(changes)["active"] == "work"

    reply = chat(url, "chat")
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "b"  # the server sees the name the pin chose
    assert list(ready_ids(url)) == ["b"]
    off = chat(url, "draw")
    assert off.status_code == 404 and "turned off by the active profile 'work'" in \
        off.json()["error"]["message"]
    listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
    assert listed["chat"]["meta"]["llamaswap"]["type"] == "profile"
    assert "draw" not in listed

    for body, status in (({"name": "nope"}, 404), ({"name": 3}, 400), ({}, 400)):
        assert httpx.put(f"{url}/api/profiles/active", json=body, timeout=10).status_code == status
    assert httpx.put(f"{url}/api/profiles/active", content=b"{oops", timeout=10).status_code == 400
    assert httpx.get(f"{url}/api/profiles", timeout=10).json()["active"] == "work"
    cleared = httpx.put(f"{url}/api/profiles/active", json={"name": None}, timeout=10)
    assert cleared.json() == {"active": None}
    assert chat(url, "chat").status_code == 404


def test_warm_takes_the_ready_model_and_spillover_starts_the_next_when_one_is_full(
        start_proxy) -> None:
    slow = ("--token-rate", "4")  # a 4-token stream lasts about a second
    proxy = start_proxy(
        {"a": fake_model(*slow), "b": fake_model(*slow)},
        groups={"side": {"swap": False, "exclusive": False, "members": ["a", "b"]}},
        selectors={"auto": {"strategy": "warm", "targets": ["a", "b"]},
                   "pool": {"strategy": "spillover", "targets": ["a", "b"],
                            "settings": {"spillover": 1}}})
    url = proxy.url
    assert httpx.post(f"{url}/api/models/load/b", timeout=60).status_code == 200

    reply = chat(url, "auto")
    assert reply.status_code == 200 and reply.json()["model"] == "b"
    assert list(ready_ids(url)) == ["b"]  # a, the first target, was never started

    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(chat(url, "pool", stream=True)))
    first.start()
    # b is ready: it takes the first request; with it full, the next one starts a.
    poll(lambda: [r for r in httpx.get(f"{url}/api/inflight", timeout=10).json()["inflight"]
                    if r["model"] == "b"], "the first request in flight on b")
    second = chat(url, "pool", stream=True)
    first.join(60)
    assert second.status_code == 200 and results[0].status_code == 200
    assert sorted(ready_ids(url)) == ["a", "b"]
    assert '"model": "a"' in second.text or '"model":"a"' in second.text


def test_set_params_by_id_names_are_aliases_that_change_the_body(start_proxy) -> None:
    proxy = start_proxy(
        {"m": fake_model(filters={"setParams": {"top_k?": 40},
                                  "setParamsByID": {"${MODEL_ID}:high": {"effort": "high"}}})},
        includeAliasesInList=True)
    rerank = {"query": "q", "documents": ["x"]}
    high = httpx.post(f"{proxy.url}/v1/rerank", json={"model": "m:high", **rerank}, timeout=60)
    assert high.status_code == 200, high.text
    assert {"effort", "top_k"} <= set(high.json()["json_keys"])
    plain = httpx.post(f"{proxy.url}/v1/rerank", json={"model": "m", **rerank}, timeout=60)
    assert "effort" not in plain.json()["json_keys"]
    listed = [m["id"] for m in httpx.get(f"{proxy.url}/v1/models", timeout=10).json()["data"]]
    assert listed == ["m", "m:high"]


def test_ignored_upstream_paths_answer_409_until_the_model_is_loaded(
        start_proxy, docker_client, instance_name) -> None:
    proxy = start_proxy({"org/m": fake_model()})
    refused = httpx.get(f"{proxy.url}/upstream/org/m/favicon.ico", timeout=10)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "model_not_loaded"
    assert model_containers(docker_client, instance_name) == []  # nothing was started

    assert httpx.get(f"{proxy.url}/upstream/org/m/health", timeout=60).status_code == 200
    served = httpx.get(f"{proxy.url}/upstream/org/m/favicon.ico", timeout=10)
    assert served.status_code == 404  # loaded: relayed to the server, which has none
    assert "model_not_loaded" not in served.text
