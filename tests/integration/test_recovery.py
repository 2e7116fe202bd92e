"""Ownership and recovery on the real engine: adoption after a kill, reaping, verified stop,
engine events, config reload, graceful shutdown — with real proxy processes."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.conftest import (
    RUN_ID,
    TEST_RUN_LABEL,
    chat,
    fake_model,
    model_containers,
    ready_ids,
    unused_tcp_port,
)
from tests.conftest import container_exists as exists

# Slow enough that a reload would be obvious next to an adoption.
LOAD_DELAY = "1"


def pair(**extra_a) -> dict:
    return {
        "models": {
            "a": fake_model("--load-delay", LOAD_DELAY, "--model-name", "a", **extra_a),
            "b": fake_model("--load-delay", LOAD_DELAY, "--model-name", "b"),
        },
        "groups": {"both": {"swap": False, "exclusive": False, "members": ["a", "b"]}},
    }


def serve_pair_then_sigkill(proxy_processes) -> dict[str, str]:
    """A proxy serving both models, killed with SIGKILL; the ids of their containers."""
    config = pair()
    first = proxy_processes(config["models"], groups=config["groups"])
    assert chat(first.url, "a").status_code == 200
    assert chat(first.url, "b").status_code == 200
    ids = ready_ids(first.url)
    assert set(ids) == {"a", "b"}
    first.signal(signal.SIGKILL)
    first.wait()
    return ids


def test_sigkilled_proxy_restart_adopts_both_models_and_serves_without_reload(
    proxy_processes, docker_client, instance_name
) -> None:
    before = serve_pair_then_sigkill(proxy_processes)

    started_at = {model: docker_client.containers.get(cid).attrs["State"]["StartedAt"]
                  for model, cid in before.items()}
    second = proxy_processes()  # same config file
    assert ready_ids(second.url) == before, "both containers must be adopted, not replaced"
    response = chat(second.url, "a")
    assert response.status_code == 200
    assert response.headers["x-fake-hostname"] == before["a"][:12]
    # Served by the same container, never restarted: the model was not loaded again.
    for model, cid in before.items():
        state = docker_client.containers.get(cid).attrs["State"]
        assert state["Running"] and state["StartedAt"] == started_at[model], model
    assert len(model_containers(docker_client, instance_name)) == 2
    assert "adopted running container" in second.log()

    # Graceful shutdown: exit 0, every owned container stopped and removed.
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert model_containers(docker_client, instance_name) == []


def test_restart_replaces_changed_model_reaps_removed_one_and_leaves_foreign_containers(
    proxy_processes, docker_client, instance_name, tmp_path
) -> None:
    old = serve_pair_then_sigkill(proxy_processes)

    foreign = docker_client.containers.run(
        "llamaswap/fake-upstream:local", detach=True,
        labels={"io.llamaswap.managed": "true", "io.llamaswap.instance": f"{instance_name}-other",
                "io.llamaswap.model": "a"},
    )
    unlabelled = docker_client.containers.run(
        "llamaswap/fake-upstream:local", detach=True, labels={TEST_RUN_LABEL: RUN_ID},
    )

    # a changes (one more argument), b is gone from the config.
    second = proxy_processes(
        {"a": fake_model("--load-delay", LOAD_DELAY, "--model-name", "a", "--tokens", "3")}
    )
    assert not exists(docker_client, old["a"]), "changed model's old container must be replaced"
    assert not exists(docker_client, old["b"]), "removed model's container must be reaped"
    log = second.log()
    assert "config changed (spec hash differs)" in log
    assert "model no longer configured" in log
    foreign.reload()
    unlabelled.reload()
    assert foreign.status == "running" and unlabelled.status == "running"

    assert chat(second.url, "a").status_code == 200
    assert ready_ids(second.url)["a"] != old["a"]


def test_on_shutdown_keep_leaves_containers_for_the_next_start(
    proxy_processes, docker_client, instance_name
) -> None:
    first = proxy_processes({"a": fake_model("--model-name", "a")}, docker={"onShutdown": "keep"})
    assert chat(first.url, "a").status_code == 200
    before = ready_ids(first.url)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    [kept] = model_containers(docker_client, instance_name)
    assert kept.id == before["a"] and kept.status == "running"

    second = proxy_processes()
    assert ready_ids(second.url) == before


def test_sighup_reload_restarts_changed_stops_removed_and_keeps_untouched(
    proxy_processes, docker_client, instance_name
) -> None:
    models = {
        "a": fake_model("--model-name", "a"),
        "b": fake_model("--model-name", "b"),
        "c": fake_model("--model-name", "c"),
    }
    groups = {"all": {"swap": False, "exclusive": False, "members": ["a", "b", "c"]}}
    proxy = proxy_processes(models, groups=groups)
    for model in ("a", "b", "c"):
        assert chat(proxy.url, model).status_code == 200
    before = ready_ids(proxy.url)

    from tests.conftest import proxy_config_yaml

    models["a"] = fake_model("--model-name", "a", "--tokens", "2")  # changed
    del models["b"]  # removed
    models["d"] = fake_model("--model-name", "d")  # added
    groups = {"all": {"swap": False, "exclusive": False, "members": ["a", "c", "d"]}}
    proxy.config_path.write_text(proxy_config_yaml(models, instance_name, groups=groups))
    proxy.signal(signal.SIGHUP)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        exists(docker_client, before["a"]) or exists(docker_client, before["b"])
    ):
        time.sleep(0.1)
    assert not exists(docker_client, before["a"]) and not exists(docker_client, before["b"]), proxy.log()[-3000:]
    assert ready_ids(proxy.url) == {"c": before["c"]}, "untouched model must keep running"
    assert chat(proxy.url, "b").status_code == 404
    assert chat(proxy.url, "d").status_code == 200
    assert chat(proxy.url, "a").status_code == 200


def test_docker_kill_mid_stream_gives_a_clear_error_then_a_fresh_container(
    start_proxy, docker_client
) -> None:
    # A 100 s stream: the kill lands mid-stream however slowly this machine runs.
    proxy = start_proxy({"slow": fake_model("--tokens", "2000", "--token-rate", "20")})
    assert chat(proxy.url, "slow").status_code == 200
    [old_id] = ready_ids(proxy.url).values()
    lines: list[str] = []
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True,
            "max_tokens": 2000}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=30) as stream:
        for line in stream.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                threading.Thread(target=docker_client.containers.get(old_id).kill).start()
    errors = [line for line in lines if '"error"' in line]
    assert errors, f"the stream ended without an error event: {lines[-3:]}"
    assert "slow" in errors[-1] and ("exited with code" in errors[-1] or "removed" in errors[-1])

    response = chat(proxy.url, "slow")
    assert response.status_code == 200
    assert ready_ids(proxy.url)["slow"] != old_id


def test_container_dying_outside_our_control_is_noticed_without_a_request(
    start_proxy, docker_client
) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert chat(proxy.url, "fake").status_code == 200
    [container_id] = ready_ids(proxy.url).values()
    docker_client.containers.get(container_id).kill()

    deadline = time.monotonic() + 30
    entry: dict = {}
    while time.monotonic() < deadline:
        [entry] = httpx.get(f"{proxy.url}/running?all=true").json()["running"]
        if entry["state"] == "failed":
            break
        time.sleep(0.05)
    assert entry["state"] == "failed"
    assert "exited with code 137" in entry["failure"]
    assert chat(proxy.url, "fake").status_code == 200


def test_container_ignoring_sigterm_is_killed_after_stop_timeout_and_removed(
    start_proxy, docker_client, instance_name
) -> None:
    # The model's stopTimeout (1 s) against the proxy-wide one (5 s): the engine's own event
    # times say which grace the SIGKILL followed.
    proxy = start_proxy({"stubborn": fake_model("--ignore-sigterm", stopTimeout=1)},
                        docker={"stopTimeout": 5})
    assert chat(proxy.url, "stubborn").status_code == 200
    [container_id] = ready_ids(proxy.url).values()
    since = int(time.time()) - 1
    assert httpx.post(f"{proxy.url}/api/models/unload/stubborn", timeout=30).status_code == 200
    assert model_containers(docker_client, instance_name) == []
    kills = {event["Actor"]["Attributes"]["signal"]: event["timeNano"] / 1e9
             for event in docker_client.events(
                 since=since, until=int(time.time()) + 1, decode=True,
                 filters={"container": container_id, "event": "kill"})}
    assert set(kills) == {"15", "9"}, kills  # SIGTERM ignored, then SIGKILL
    grace = kills["9"] - kills["15"]
    assert 0.9 <= grace < 4.5, f"SIGKILL came {grace:.2f}s after SIGTERM, not after stopTimeout 1"


def test_event_stream_interrupted_and_restored_keeps_state_correct(start_proxy, docker_client) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert chat(proxy.url, "fake").status_code == 200
    [container_id] = ready_ids(proxy.url).values()
    watcher = proxy.manager.deaths.events
    assert watcher.connected.wait(30)

    watcher.interrupt()  # the stream drops, as when the engine restarts
    docker_client.containers.get(container_id).kill()  # happens while we are not listening

    deadline = time.monotonic() + 30
    state = None
    while time.monotonic() < deadline:
        [entry] = httpx.get(f"{proxy.url}/running?all=true").json()["running"]
        state = entry["state"]
        if state == "failed":
            break
        time.sleep(0.1)
    assert state == "failed", "the death during the gap must be caught after reconnecting"
    assert watcher.connected.wait(30)

    # Healthy again afterwards, and later deaths are still seen.
    assert chat(proxy.url, "fake").status_code == 200
    [new_id] = ready_ids(proxy.url).values()
    docker_client.containers.get(new_id).kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ready_ids(proxy.url):
        time.sleep(0.05)
    assert ready_ids(proxy.url) == {}


def test_a_second_proxy_on_a_live_instance_exits_naming_the_owner_and_touches_nothing(
    proxy_processes, instance_name
) -> None:
    import subprocess
    import sys

    first = proxy_processes({"a": fake_model("--model-name", "a")})
    assert chat(first.url, "a").status_code == 200
    before = ready_ids(first.url)

    # The same instance, another port: what a user's own `serve` next to the demo used to do.
    second = subprocess.run(
        [sys.executable, "-m", "llamaswap_docker", "serve", "-c", str(first.config_path),
         "-l", f"127.0.0.1:{unused_tcp_port()}"],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0
    message = second.stderr.strip().splitlines()[-1]
    assert f"docker.instance {instance_name!r} is owned by" in message, second.stderr
    assert f"127.0.0.1:{first.port}" in message and f"pid {first.process.pid}" in message
    assert "Traceback" not in second.stderr

    # The first proxy's model is untouched: same container, still served.
    assert ready_ids(first.url) == before
    assert chat(first.url, "a").headers["x-fake-hostname"] == before["a"][:12]

    # Once the owner stops gracefully the instance is free again.
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    third = proxy_processes()
    assert chat(third.url, "a").status_code == 200
