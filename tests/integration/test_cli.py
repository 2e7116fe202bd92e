"""The CLI as a real process (``python -m llamaswap_docker``) against a real proxy and engine."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest
from loguru import logger

from tests.conftest import (
    FAKE_UPSTREAM_IMAGE,
    REPO,
    RUN_ID,
    RUN_INSTANCE,
    TEST_RUN_LABEL,
    container_exists as exists,
    fake_model,
    model_containers,
    unused_tcp_port,
)

KEY = "sk-cli-test"


def cli(*args: str, url: str | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; ``url`` goes in LLAMASWAP_URL, as a user would export it."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if url is not None:
        full_env["LLAMASWAP_URL"] = url
    return subprocess.run([sys.executable, "-m", "llamaswap_docker", *args], capture_output=True,
                          text=True, cwd=REPO, env=full_env, timeout=timeout)


def read_lines_until(process: subprocess.Popen[bytes], needle: str, timeout: float = 60) -> list[str]:
    """Lines of a running process's unbuffered stdout until one contains ``needle``."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            break
        line = process.stdout.readline().decode(errors="replace")
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen within {timeout}s; got {lines!r}")


@pytest.fixture
def proxy(start_proxy):
    return start_proxy(
        {"fake": fake_model("--model-name", "fake", aliases=["fast"], description="the fake one"),
         "other": fake_model("--model-name", "other")},
        groups={"both": {"swap": False, "exclusive": False, "members": ["fake", "other"]}},
    )


def test_ps_prints_a_table_and_json(proxy) -> None:
    empty = cli("ps", url=proxy.url)
    assert empty.returncode == 0 and "no model is running" in empty.stdout

    assert cli("load", "fake", url=proxy.url).returncode == 0
    table = cli("ps", url=proxy.url)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["MODEL", "STATE", "CONTAINER"]
    assert row.split()[:2] == ["fake", "ready"]
    assert "llamaswap/fake-upstream:local" in row
    # Piped (as here), the container name is whole: it can be pasted into `docker`.
    container_name = ready_names(proxy.url)["fake"]
    assert row.split()[2] == container_name and "…" not in table.stdout

    every = cli("status", "-a", "--json", url=proxy.url)
    data = json.loads(every.stdout)
    assert {e["model"]: e["state"] for e in data["running"]} == {"fake": "ready", "other": "stopped"}


def test_load_and_unload_start_and_remove_containers(proxy, docker_client, instance_name) -> None:
    loaded = cli("load", "fast", url=proxy.url)  # an alias
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("fake: ready (")
    assert len(model_containers(docker_client, instance_name, "fake")) == 1

    background = cli("load", "other", "--no-wait", url=proxy.url)
    assert background.returncode == 0 and "other: loading" in background.stdout
    deadline = time.monotonic() + 30
    while not any(c.status == "running" for c in model_containers(docker_client, instance_name, "other")):
        assert time.monotonic() < deadline, "--no-wait load never started the model"
        time.sleep(0.2)

    one = cli("unload", "fake", url=proxy.url)
    assert one.returncode == 0 and one.stdout.strip() == "fake: unloaded"
    assert model_containers(docker_client, instance_name, "fake") == []

    everything = cli("unload", "--all", url=proxy.url)
    assert everything.returncode == 0, everything.stderr
    assert model_containers(docker_client, instance_name) == []


def test_unknown_model_prints_the_servers_message_in_one_line(proxy) -> None:
    result = cli("load", "nope", url=proxy.url)
    assert result.returncode == 1
    assert result.stderr == ("Error: model 'nope' is not configured; GET /v1/models lists the "
                             "models you can use\n")


def test_models_lists_the_configured_models(proxy) -> None:
    table = cli("models", url=proxy.url)
    assert table.returncode == 0
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert set(rows) == {"fake", "other"}
    assert "the fake one" in rows["fake"] and "stopped" in rows["fake"]
    data = json.loads(cli("models", "--json", url=proxy.url).stdout)
    assert [entry["id"] for entry in data["data"]] == ["fake", "other"]


def test_logs_prints_the_tail_of_the_model_container(proxy) -> None:
    assert cli("load", "fake", url=proxy.url).returncode == 0

    result = cli("logs", "fake", url=proxy.url)

    assert result.returncode == 0, result.stderr
    assert "fake-upstream listening" in result.stdout
    assert "ready" in result.stdout
    assert len(cli("logs", "fake", "--tail", "1", url=proxy.url).stdout.splitlines()) == 1


def test_logs_follow_prints_new_container_output_until_killed(proxy) -> None:
    assert cli("load", "fake", url=proxy.url).returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "llamaswap_docker", "logs", "fake", "-f", "--url", proxy.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, bufsize=0,  # select() sees all
    )
    try:
        read_lines_until(process, "ready")
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        read_lines_until(process, "POST /v1/chat/completions")
        assert process.poll() is None, "logs -f ended while the container runs"
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_logs_without_a_model_prints_and_follows_the_proxy_log(proxy) -> None:
    result = cli("logs", "--tail", "-1", url=proxy.url)
    assert result.returncode == 0
    assert "proxy starting" in result.stdout

    process = subprocess.Popen(
        [sys.executable, "-m", "llamaswap_docker", "logs", "-f", "--tail", "0", "--url", proxy.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, bufsize=0,
    )
    try:
        # Until the follow is subscribed, lines would be missed: log markers until one shows.
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while not selector.select(timeout=0.2):
            assert time.monotonic() < deadline, "logs -f printed nothing"
            logger.info("cli-follow-marker")
        assert httpx.post(f"{proxy.url}/api/models/load/fake", timeout=30).status_code == 200
        lines = read_lines_until(process, "model ready")
        assert "cli-follow-marker" in lines[0]
        assert "proxy starting" not in "".join(lines), "--tail 0 printed the history"
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_api_key_from_flag_or_environment(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model()}, apiKeys=[KEY])

    refused = cli("ps", url=proxy.url)
    assert refused.returncode == 1
    assert refused.stderr.startswith("Error: missing API key")
    assert "pass --api-key, or set LLAMASWAP_API_KEY" in refused.stderr
    assert cli("ps", "--api-key", KEY, url=proxy.url).returncode == 0
    assert cli("ps", url=proxy.url, env={"LLAMASWAP_API_KEY": KEY}).returncode == 0


def test_config_check_good_and_broken_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"models:\n  fake:\n    image: {FAKE_UPSTREAM_IMAGE}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"models:\n  fake:\n    image: {FAKE_UPSTREAM_IMAGE}\n    ttl: soon\n"
                      "    checkEndpint: /health\n")

    ok = cli("config", "check", str(good))
    bad = cli("config", "check", str(broken))

    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}: OK (1 model, 0 groups)"
    assert bad.returncode == 1
    assert f"{broken}:4: models.fake.ttl: Input should be a valid integer" in bad.stderr
    assert (f"{broken}:5: models.fake.checkEndpint: unknown field 'checkEndpint' "
            "(did you mean 'checkEndpoint'?)") in bad.stderr
    assert "Traceback" not in bad.stderr


# -- cleanup ------------------------------------------------------------------------------------


def plant(client: docker.DockerClient, labels: dict[str, str], name: str) -> docker.models.containers.Container:
    """A container of the fake image, as a crashed proxy would have left it."""
    return client.containers.run(
        FAKE_UPSTREAM_IMAGE, ["--port", "8080"], detach=True, name=f"{name}-{RUN_ID}-{time.monotonic_ns() % 10**6}",
        labels={TEST_RUN_LABEL: RUN_ID, **labels},
    )


def test_cleanup_lists_then_removes_only_the_instances_orphans(docker_client, images, instance_name) -> None:
    ours = {"io.llamaswap.managed": "true", "io.llamaswap.instance": instance_name}
    orphans = [plant(docker_client, {**ours, "io.llamaswap.model": "m1"}, "orphan-a"),
               plant(docker_client, {**ours, "io.llamaswap.model": "m2"}, "orphan-b")]
    orphans[1].stop(timeout=0)  # an exited one counts too
    foreign = plant(docker_client, {"io.llamaswap.managed": "true",
                                    "io.llamaswap.instance": f"{RUN_INSTANCE}-someone-else"}, "foreign")
    unlabelled = plant(docker_client, {}, "unlabelled")
    nobody = f"http://127.0.0.1:{unused_tcp_port()}"

    listed = cli("cleanup", "--instance", instance_name, url=nobody)

    assert listed.returncode == 0, listed.stderr
    for container in orphans:
        assert container.name in listed.stdout
        assert exists(docker_client, container.id), "a dry run removed a container"
    assert "m1" in listed.stdout and "exited" in listed.stdout
    assert foreign.name not in listed.stdout and unlabelled.name not in listed.stdout
    assert "run again with --yes" in listed.stdout

    removed = cli("cleanup", "--instance", instance_name, "--yes", url=nobody)

    assert removed.returncode == 0, removed.stderr
    for container in orphans:
        assert f"removed {container.name}" in removed.stdout
        assert not exists(docker_client, container.id)
    assert exists(docker_client, foreign.id) and exists(docker_client, unlabelled.id)
    again = cli("cleanup", "--instance", instance_name, url=nobody)
    assert f"no orphaned containers of instance '{instance_name}'" in again.stdout


def test_cleanup_leaves_containers_a_running_proxy_owns(start_proxy, docker_client, instance_name) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert cli("load", "fake", url=proxy.url).returncode == 0
    [owned] = model_containers(docker_client, instance_name, "fake")
    orphan = plant(docker_client, {"io.llamaswap.managed": "true",
                                   "io.llamaswap.instance": instance_name,
                                   "io.llamaswap.model": "gone"}, "orphan")

    result = cli("cleanup", "--instance", instance_name, "--yes", url=proxy.url)

    assert result.returncode == 0, result.stderr
    assert f"in use by the proxy at {proxy.url}, left alone" in result.stdout
    assert f"{owned.name} (fake)" in result.stdout
    assert f"removed {orphan.name}" in result.stdout
    assert exists(docker_client, owned.id) and not exists(docker_client, orphan.id)
    assert httpx.get(f"{proxy.url}/running").json()["running"][0]["state"] == "ready"


def test_cleanup_removes_nothing_when_the_proxy_will_not_say_what_it_owns(
    start_proxy, docker_client, instance_name
) -> None:
    proxy = start_proxy({"fake": fake_model()}, apiKeys=[KEY])
    orphan = plant(docker_client, {"io.llamaswap.managed": "true",
                                   "io.llamaswap.instance": instance_name}, "orphan")

    result = cli("cleanup", "--instance", instance_name, "--yes", url=proxy.url)

    assert result.returncode == 1
    assert "did not list its containers" in result.stderr and "nothing was removed" in result.stderr
    assert exists(docker_client, orphan.id)


def test_cleanup_takes_the_instance_from_the_config(tmp_path, docker_client, images, instance_name) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"docker: {{instance: {instance_name}, stopTimeout: 1}}\n"
                      f"models: {{m: {{image: {FAKE_UPSTREAM_IMAGE}}}}}\n")
    orphan = plant(docker_client, {"io.llamaswap.managed": "true",
                                   "io.llamaswap.instance": instance_name}, "orphan")

    result = cli("cleanup", "-c", str(config), "-y", url=f"http://127.0.0.1:{unused_tcp_port()}")

    assert result.returncode == 0, result.stderr
    assert not exists(docker_client, orphan.id)


def test_pull_of_an_image_no_registry_has_fails_in_one_line(tmp_path: Path, docker_client) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("models: {m: {image: 'llamaswap/does-not-exist-anywhere:never'}}\n")

    result = cli("pull", "-c", str(config))

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: pulling image 'llamaswap/does-not-exist-anywhere:never' failed")


def test_log_followers_do_not_hold_up_a_graceful_shutdown(proxy_processes) -> None:
    server = proxy_processes({"fake": fake_model()})
    assert cli("load", "fake", url=server.url).returncode == 0
    followers = [
        subprocess.Popen([sys.executable, "-m", "llamaswap_docker", "logs", *args, "-f",
                          "--url", server.url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, bufsize=0)
        for args in ([], ["fake"])
    ]
    try:
        read_lines_until(followers[0], "proxy starting")
        read_lines_until(followers[1], "ready")

        server.signal(signal.SIGTERM)
        # A follower holding up the shutdown would keep it for the whole 30 s grace.
        assert server.wait(timeout=25) == 0
        for follower in followers:
            follower.wait(timeout=10)
    finally:
        for follower in followers:
            follower.kill()
            follower.communicate(timeout=10)


def ready_names(url: str) -> dict[str, str]:
    running = httpx.get(f"{url}/running", timeout=10).json()["running"]
    return {e["model"]: e["container_name"] for e in running if e["state"] == "ready"}


def test_logs_after_a_swap_prints_the_last_output_of_the_gone_container(start_proxy) -> None:
    from tests.conftest import chat

    proxy = start_proxy({"a": fake_model("--model-name", "a"), "b": fake_model("--model-name", "b")})
    assert chat(proxy.url, "a").status_code == 200
    name_a = ready_names(proxy.url)["a"]
    assert chat(proxy.url, "b").status_code == 200  # one swap group: a's container is removed
    assert "a" not in ready_names(proxy.url)

    shown = cli("logs", "a", url=proxy.url)
    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    assert f"the last output of {name_a}" in header and "swapping to b" in header
    assert any("POST /v1/chat/completions 200" in line for line in lines), shown.stdout

    never = cli("logs", "nowhere-yet", url=proxy.url)  # unknown model: the server's message
    assert never.returncode == 1
