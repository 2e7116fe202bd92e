"""Model lifecycle on the real engine: cold starts, swaps, groups, TTL, failures, limits."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from datetime import datetime

import httpx
import pytest

from tests.conftest import chat, container_exists, fake_model, llama_model, model_containers
from tests.conftest import ready_ids as running_ids


def test_cold_start_on_first_request_creates_one_labelled_container(
    start_proxy, docker_client, instance_name
) -> None:
    proxy = start_proxy({"fake": fake_model("--model-name", "fake")})
    assert model_containers(docker_client, instance_name) == []

    response = chat(proxy.url, "fake")

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    [container] = model_containers(docker_client, instance_name)
    assert container.status == "running"
    labels = container.labels
    assert labels["io.llamaswap.managed"] == "true"
    assert labels["io.llamaswap.instance"] == instance_name
    assert labels["io.llamaswap.model"] == "fake"
    assert len(labels["io.llamaswap.spec-hash"]) == 16
    # Answered by that very container.
    assert response.headers["x-fake-hostname"] == container.id[:12]


def test_exclusive_group_swaps_stop_and_remove_the_other_container(
    start_proxy, docker_client, instance_name, tiny_model_dir
) -> None:
    proxy = start_proxy({
        "a": fake_model("--model-name", "a"),
        "llama": llama_model(tiny_model_dir),
    })
    assert chat(proxy.url, "a").status_code == 200
    first_a = running_ids(proxy.url)["a"]

    assert chat(proxy.url, "llama").status_code == 200
    ids = running_ids(proxy.url)
    assert set(ids) == {"llama"}
    assert not container_exists(docker_client, first_a), "swapped-out container was not removed"

    assert chat(proxy.url, "a").status_code == 200
    ids_back = running_ids(proxy.url)
    assert set(ids_back) == {"a"}
    assert ids_back["a"] != first_a, "a swap back must start a fresh container"
    assert not container_exists(docker_client, ids["llama"])
    assert len(model_containers(docker_client, instance_name)) == 1


def test_group_without_swap_keeps_both_models_running(start_proxy) -> None:
    proxy = start_proxy(
        {"a": fake_model("--model-name", "a"), "b": fake_model("--model-name", "b")},
        groups={"pair": {"swap": False, "exclusive": True, "members": ["a", "b"]}},
    )
    assert chat(proxy.url, "a").status_code == 200
    assert chat(proxy.url, "b").status_code == 200
    assert set(running_ids(proxy.url)) == {"a", "b"}


def test_persistent_group_member_survives_other_groups_swaps(start_proxy) -> None:
    proxy = start_proxy(
        {
            "embed": fake_model("--model-name", "embed"),
            "a": fake_model("--model-name", "a"),
            "b": fake_model("--model-name", "b"),
        },
        groups={
            "always": {"persistent": True, "swap": False, "exclusive": False, "members": ["embed"]},
            "chat": {"swap": True, "exclusive": True, "members": ["a", "b"]},
        },
    )
    assert chat(proxy.url, "embed").status_code == 200
    embed_id = running_ids(proxy.url)["embed"]
    assert chat(proxy.url, "a").status_code == 200
    assert chat(proxy.url, "b").status_code == 200
    ids = running_ids(proxy.url)
    assert set(ids) == {"embed", "b"}
    assert ids["embed"] == embed_id


def test_ttl_unloads_an_idle_model(start_proxy, docker_client, instance_name) -> None:
    proxy = start_proxy({"fake": fake_model(ttl=1)})
    assert chat(proxy.url, "fake").status_code == 200
    [container] = model_containers(docker_client, instance_name)

    deadline = time.monotonic() + 60
    while container_exists(docker_client, container.id) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert not container_exists(docker_client, container.id), "idle model was not unloaded"
    assert running_ids(proxy.url) == {}


def test_concurrent_cold_requests_start_exactly_one_container(
    start_proxy, docker_client, instance_name
) -> None:
    proxy = start_proxy({"fake": fake_model("--load-delay", "1")})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: chat(proxy.url, "fake"), range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    assert len(model_containers(docker_client, instance_name, "fake")) == 1
    assert len({r.headers["x-fake-hostname"] for r in responses}) == 1


def test_container_crashing_at_start_fails_fast_with_exit_code_and_log_tail(
    start_proxy, docker_client, instance_name
) -> None:
    # A health check allowed 10 minutes: the answer coming within chat()'s 60 s read timeout
    # shows the dead container failed the start at once.
    proxy = start_proxy({"broken": fake_model("--exit-at-start", "3")}, healthCheckTimeout=600)
    response = chat(proxy.url, "broken")

    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "exited with code 3" in message
    assert "fatal: failed to load model" in message
    assert model_containers(docker_client, instance_name) == [], "failed container not removed"
    [entry] = httpx.get(f"{proxy.url}/running?all=true").json()["running"]
    assert entry["state"] == "failed" and "exited with code 3" in entry["failure"]


def test_swap_requested_mid_stream_waits_for_the_stream_to_finish(start_proxy) -> None:
    proxy = start_proxy({
        "slow": fake_model("--tokens", "20", "--token-rate", "10", "--model-name", "slow"),
        "other": fake_model("--model-name", "other"),
    })
    assert chat(proxy.url, "slow").status_code == 200  # warm
    done_at: dict[str, float] = {}
    chunks: list[str] = []
    streaming = threading.Event()

    def stream_slow() -> None:
        body = {"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True,
                "max_tokens": 20}
        with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line)
                    streaming.set()
                if line == "data: [DONE]":
                    done_at["slow"] = time.monotonic()

    streamer = threading.Thread(target=stream_slow)
    streamer.start()
    assert streaming.wait(30), "the stream never started"  # mid-stream from here on
    other = chat(proxy.url, "other")
    done_at["other"] = time.monotonic()
    streamer.join()

    assert other.status_code == 200
    assert chunks[-1] == "data: [DONE]"
    assert sum('"content": "tok' in c for c in chunks) == 20, "the stream was cut"
    assert done_at["other"] > done_at["slow"]


def test_requests_queued_during_swaps_are_served_grouped_by_model(start_proxy) -> None:
    # a loads for 3 s: the four requests all queue behind that load, in the order sent.
    proxy = start_proxy({
        "a": fake_model("--model-name", "a", "--load-delay", "3"),
        "b": fake_model("--model-name", "b", "--load-delay", "0.5"),
    })

    def ask(model: str) -> None:
        assert chat(proxy.url, model).status_code == 200

    threads = []
    for arrived, model in enumerate(("a", "b", "a", "b"), start=1):  # ABAB arrives
        thread = threading.Thread(target=ask, args=(model,))
        thread.start()
        threads.append(thread)
        # The next one is sent only once the proxy has queued this one: the arrival order holds.
        deadline = time.monotonic() + 30
        while waiting_total(proxy.url) < arrived:
            assert time.monotonic() < deadline, f"request {arrived} ({model}) never queued"
            time.sleep(0.02)
    for thread in threads:
        thread.join()

    # The order they were served in, by the proxy's own clock (each row's end time).
    rows = httpx.get(f"{proxy.url}/api/metrics", timeout=10).json()
    served = [row["model"] for row in sorted(rows, key=lambda row: datetime.fromisoformat(row["timestamp"]))]
    assert served == ["a", "a", "b", "b"], served  # AABB served


def waiting_total(url: str) -> int:
    running = httpx.get(f"{url}/running?all=true", timeout=10).json()["running"]
    return sum(entry["waiting"] for entry in running)


def running_entry(url: str, model: str) -> dict:
    running = httpx.get(f"{url}/running?all=true", timeout=10).json()["running"]
    return next(entry for entry in running if entry["model"] == model)


def test_over_concurrency_limit_answers_429_with_retry_after(start_proxy) -> None:
    proxy = start_proxy({"one": fake_model("--tokens", "30", "--token-rate", "5", concurrencyLimit=1)})
    assert chat(proxy.url, "one", max_tokens=1).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, proxy.url, "one", max_tokens=30)  # 6 s of generation
        deadline = time.monotonic() + 30
        while running_entry(proxy.url, "one")["in_flight"] < 1:  # at the model: the limit is full
            assert time.monotonic() < deadline, "the first request never reached the model"
            time.sleep(0.02)
        rejected = chat(proxy.url, "one")
        assert slow.result().status_code == 200

    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "rate_limit_error"


def test_missing_image_with_pull_policy_never_fails_fast(start_proxy) -> None:
    proxy = start_proxy({"ghost": {"image": "llamaswap/does-not-exist:never"}})
    response = chat(proxy.url, "ghost")
    assert response.status_code == 503
    assert "llamaswap/does-not-exist:never" in response.json()["error"]["message"]
    assert "pullPolicy" in response.json()["error"]["message"]


@pytest.mark.parametrize("method", ["api", "legacy"])
def test_unload_stops_and_removes_containers(start_proxy, docker_client, instance_name, method) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert chat(proxy.url, "fake").status_code == 200
    if method == "api":
        assert httpx.post(f"{proxy.url}/api/models/unload/fake", timeout=30).status_code == 200
    else:
        assert httpx.get(f"{proxy.url}/unload", timeout=30).status_code == 200
    assert model_containers(docker_client, instance_name) == []
    assert running_ids(proxy.url) == {}


def test_a_network_removed_under_the_proxy_is_created_again_on_the_next_start(
    start_proxy, docker_client, instance_name
) -> None:
    # What `docker-compose down` of another stack using the same network name does.
    network = f"{instance_name}-vanishing"
    proxy = start_proxy({"fake": fake_model()}, docker={"network": network})
    assert chat(proxy.url, "fake").status_code == 200
    httpx.post(f"{proxy.url}/api/models/unload", timeout=30).raise_for_status()
    [gone] = docker_client.networks.list(names=[network])
    gone.remove()

    response = chat(proxy.url, "fake")
    assert response.status_code == 200, response.text
    [back] = docker_client.networks.list(names=[network])
    back.reload()
    assert back.attrs["Labels"]["io.llamaswap.instance"] == instance_name  # ours: reaped later


#: Long enough that quick's start (a few seconds on a busy machine) ends inside it.
SLOW_LOAD_S = 12


def test_a_quick_model_in_another_group_starts_while_a_slow_one_loads(start_proxy) -> None:
    # Two non-exclusive groups: neither start evicts the other, so quick must not queue
    # behind slow's load (it used to: one operation at a time, quick answered after slow).
    proxy = start_proxy(
        {"slow": fake_model("--load-delay", str(SLOW_LOAD_S), "--model-name", "slow"),
         "quick": fake_model("--model-name", "quick")},
        groups={"g_slow": {"swap": True, "exclusive": False, "members": ["slow"]},
                "g_quick": {"swap": True, "exclusive": False, "members": ["quick"]}},
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, proxy.url, "slow")
        deadline = time.monotonic() + 30
        while running_entry(proxy.url, "slow")["state"] != "starting":
            assert time.monotonic() < deadline, "slow never started loading"
            time.sleep(0.02)
        quick = chat(proxy.url, "quick")
        assert quick.status_code == 200, quick.text
        # Behind slow's load, quick could not answer before it.
        assert not slow.done(), "slow answered before quick: the loads were not side by side"
        assert running_entry(proxy.url, "slow")["state"] == "starting"
        assert slow.result().status_code == 200
    assert set(running_ids(proxy.url)) == {"slow", "quick"}
