"""The data plane's connection pools follow the containers: each start publishes a new port,
and the pool of a container that stopped or died is dropped, so swaps never grow the map."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.conftest import chat, fake_model

SWAPS = 50


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def serving_base_url(url: str, model: str) -> str:
    running = httpx.get(f"{url}/running", timeout=10).json()["running"]
    [entry] = [e for e in running if e["model"] == model and e["state"] == "ready"]
    return entry["base_url"]


def test_pool_count_is_back_to_its_baseline_after_50_swaps(start_proxy) -> None:
    proxy = start_proxy({"a": fake_model("--model-name", "a"),
                         "b": fake_model("--model-name", "b")})  # one at a time: each request swaps
    upstream = proxy.app.state.llamaswap.upstream
    baseline = len(upstream.base_urls)
    seen: set[str] = set()

    for n in range(SWAPS):
        model = "ab"[n % 2]
        response = chat(proxy.url, model)
        assert response.status_code == 200, response.text
        base_url = serving_base_url(proxy.url, model)
        seen.add(base_url)
        # The swapped-out container's pool goes once its container is stopped and removed.
        wait_for(lambda: upstream.base_urls == [base_url],
                 f"only {model}'s pool after swap {n + 1} (pools: {upstream.base_urls})")

    assert len(seen) > 2, "the swaps reused ports: the test proves nothing"
    assert httpx.post(f"{proxy.url}/api/models/unload", timeout=60).status_code == 200
    wait_for(lambda: len(upstream.base_urls) == baseline, "the pools back to their baseline")
