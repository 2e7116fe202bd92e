"""Sleep tier on the real engine: swapping vLLM-style models by putting them to sleep (the fake
upstream speaks vLLM's /sleep, /wake_up and /is_sleeping) instead of replacing containers."""

from __future__ import annotations

import signal

import httpx

from tests.conftest import chat, fake_model, ready_ids

LOAD_DELAY_S = 1


def sleepy(name: str, *args: str, level: int = 1) -> dict:
    """A vLLM-style fake with sleep mode, slow to load, quick to wake."""
    return fake_model("--mode", "vllm", "--enable-sleep-mode", "--model-name", name,
                      "--load-delay", str(LOAD_DELAY_S), *args,
                      env={"VLLM_SERVER_DEV_MODE": "1"}, sleepMode=level)


PAIR = {"models": {"a": sleepy("a"), "b": sleepy("b", level=2)},
        "groups": {"pair": {"swap": True, "exclusive": True, "members": ["a", "b"]}}}


def states(url: str) -> dict[str, tuple[str, str | None]]:
    running = httpx.get(f"{url}/running", timeout=10).json()["running"]
    return {e["model"]: (e["state"], e["container_id"]) for e in running}


def debug(proxy, model: str) -> dict:
    """The fake's own counters, read from its container directly (the proxy's upstream route
    would wake it), at the address the proxy reports for it."""
    running = httpx.get(f"{proxy.url}/running", timeout=10).json()["running"]
    base_url = next(entry["base_url"] for entry in running if entry["model"] == model)
    return httpx.get(f"{base_url}/debug/stats", timeout=10).json()


def test_alternating_models_sleep_and_wake_in_the_same_two_containers(start_proxy) -> None:
    proxy = start_proxy(PAIR["models"], groups=PAIR["groups"])
    ids: dict[str, str] = {}
    for turn in range(10):
        model = "ab"[turn % 2]
        response = chat(proxy.url, model)
        assert response.status_code == 200, response.text
        current = states(proxy.url)
        assert current[model][0] == "ready"
        other = "ba"[turn % 2]
        if turn >= 1:
            assert current[other][0] == "asleep", current
        ids.setdefault(model, current[model][1])
        assert current[model][1] == ids[model], "a wake must reuse the container"
        assert response.headers["x-fake-hostname"] == ids[model][:12]
    # Same containers throughout, woken rather than loaded again (a load happens only when
    # a container starts): the server's own counts of sleeps and wakes say so.
    stats = debug(proxy, "b")
    assert stats["sleep_calls"] == 4 and stats["wake_calls"] == 4, stats


def test_a_wake_that_fails_falls_back_to_a_cold_start(start_proxy) -> None:
    models = {"a": sleepy("a", "--wake-fails"), "b": sleepy("b")}
    proxy = start_proxy(models, groups=PAIR["groups"])
    assert chat(proxy.url, "a").status_code == 200
    first_a = states(proxy.url)["a"][1]
    assert chat(proxy.url, "b").status_code == 200
    assert states(proxy.url)["a"] == ("asleep", first_a)

    response = chat(proxy.url, "a")
    assert response.status_code == 200, response.text
    state, second_a = states(proxy.url)["a"]
    assert state == "ready" and second_a != first_a, "the failed wake must end in a new container"
    assert response.headers["x-fake-hostname"] == second_a[:12]
    assert states(proxy.url)["b"][0] == "asleep"


def test_an_asleep_container_is_adopted_asleep_after_the_proxy_is_killed(proxy_processes) -> None:
    first = proxy_processes(PAIR["models"], groups=PAIR["groups"])
    assert chat(first.url, "a").status_code == 200
    assert chat(first.url, "b").status_code == 200
    before = states(first.url)
    assert before["a"][0] == "asleep" and before["b"][0] == "ready"
    first.signal(signal.SIGKILL)
    first.wait()

    second = proxy_processes()  # the same config
    assert states(second.url) == before, "adopted as they were: a asleep, b ready"
    response = chat(second.url, "a")
    assert response.status_code == 200
    # Woken in the container it slept in: not loaded again.
    assert ready_ids(second.url) == {"a": before["a"][1]}
    assert response.headers["x-fake-hostname"] == before["a"][1][:12]
    assert debug(second, "a")["wake_calls"] == 1
    assert states(second.url)["b"] == ("asleep", before["b"][1])
