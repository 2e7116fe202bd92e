"""The deployment users run: ``docker compose up`` the proxy image, which drives sibling model
containers through the mounted socket (pytest-docker, compose v1 or v2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import openai
import pytest

from tests.conftest import (
    REPO,
    RUN_ID,
    RUN_INSTANCE,
    TEST_RUN_LABEL,
    fake_model,
    llama_model,
    proxy_config_yaml,
    ready_ids,
    unused_tcp_port,
)

COMPOSE_FILE = REPO / "compose" / "docker-compose.yml"
INSTANCE = f"{RUN_INSTANCE}-compose"
NETWORK = f"{INSTANCE}-net"
PROXY_IMAGE = "llamaswap/llamaswap-docker:local"


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    # Debian packages compose v1 only; the file is valid for both.
    return "docker compose" if shutil.which("docker-compose") is None else "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return INSTANCE.replace("-", "")


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d"]  # the image is built by the `images` fixture, not by compose


@pytest.fixture(scope="session")
def compose_env(tmp_path_factory, tiny_model_dir: Path) -> dict[str, str]:
    """Environment for compose: the test config, a free port, the test network."""
    config_dir = tmp_path_factory.mktemp("compose")
    config = config_dir / "config.yaml"
    config.write_text(proxy_config_yaml(
        {
            "vllm-like": fake_model("--mode", "vllm", "--model-name", "vllm-like", port=8000),
            "tiny": llama_model(tiny_model_dir),
            # The common mistake: a path as the proxy container sees it, not the host's.
            "misplaced": fake_model(volumes=["/etc/llamaswap/config.yaml:/config.yaml:ro"],
                                    unlisted=True),
        },
        INSTANCE,
        groups={"pair": {"swap": False, "exclusive": False, "members": ["vllm-like", "tiny"]}},
        docker={"network": NETWORK, "routing": "auto"},
    ))
    env = {
        "LLAMASWAP_CONFIG_FILE": str(config),
        "LLAMASWAP_PORT": str(unused_tcp_port()),
        "LLAMASWAP_NETWORK": NETWORK,
        "LLAMASWAP_LOG_LEVEL": "debug",
    }
    os.environ.update(env)
    return env


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="session")
def stack(images, compose_env, docker_services, docker_client) -> Iterator[str]:
    url = f"http://127.0.0.1:{compose_env['LLAMASWAP_PORT']}"
    # Generous: a proxy container starting on a busy 2-core machine.
    docker_services.wait_until_responsive(check=lambda: healthy(url), timeout=180, pause=0.2)
    yield url
    # A test that failed midway leaves model containers on the stack's network, and then
    # `down` cannot remove it: take them away first (the reaper would only come later).
    for container in docker_client.containers.list(
            all=True, filters={"label": f"io.llamaswap.instance={INSTANCE}"}):
        container.remove(force=True)


def proxy_container(client: docker.DockerClient) -> docker.models.containers.Container:
    [container] = client.containers.list(
        all=True, filters={"label": "com.docker.compose.service=llamaswap",
                           "name": INSTANCE.replace("-", "")})
    return container


def test_compose_stack_serves_two_models_as_unpublished_siblings_adopts_after_crash_and_downs_clean(
    stack, docker_client, compose_env
) -> None:
    client = openai.OpenAI(base_url=f"{stack}/v1", api_key="unused", max_retries=0, timeout=60)
    for model in ("vllm-like", "tiny"):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert reply.choices[0].message.content is not None

    before = ready_ids(stack)
    assert set(before) == {"vllm-like", "tiny"}
    for container_id in before.values():
        container = docker_client.containers.get(container_id)
        assert NETWORK in container.attrs["NetworkSettings"]["Networks"]
        assert not container.attrs["HostConfig"]["PortBindings"], "model ports must not be published"
    running = httpx.get(f"{stack}/running").json()["running"]
    assert all(entry["base_url"].startswith("http://llamaswap-") for entry in running)

    proxy_log = proxy_container(docker_client).logs().decode()
    assert "volume source '/etc/llamaswap/config.yaml' is a path inside the proxy container" in proxy_log
    assert f"you probably mean '{compose_env['LLAMASWAP_CONFIG_FILE']}'" in proxy_log

    # The proxy crashes (SIGKILL under its init); compose's restart policy brings it back and it
    # adopts both model containers instead of reloading them.
    proxy = proxy_container(docker_client)
    subprocess.run(["docker", "exec", proxy.id, "python3", "-c",
                    "import os\n"
                    "for p in os.listdir('/proc'):\n"
                    "    if p.isdigit() and int(p) not in (1, os.getpid()):\n"
                    "        cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
                    "        if b'llamaswap-docker' in cmd and b'python3\\x00-c' not in cmd:\n"
                    "            os.kill(int(p), 9)\n"], check=False)
    # Killing the server ends the container (its init exits), and with it this exec: 137 is
    # what that looks like from here. The restart below is the check.
    deadline = time.monotonic() + 180
    while True:
        proxy.reload()
        if proxy.attrs["RestartCount"] >= 1 and proxy.status == "running" and healthy(stack):
            break
        assert time.monotonic() < deadline, (
            f"the proxy did not come back healthy: {proxy.attrs['State']}")
        time.sleep(0.2)
    assert ready_ids(stack) == before, "after a restart the running models must be adopted"

    # down: the proxy stops gracefully and removes its model containers.
    subprocess.run(
        f"{'docker-compose' if shutil.which('docker-compose') else 'docker compose'} "
        f"-f {COMPOSE_FILE} -p {INSTANCE.replace('-', '')} down".split(),
        check=True, env={**os.environ, **compose_env}, capture_output=True,
    )
    left = docker_client.containers.list(
        all=True, filters={"label": f"io.llamaswap.instance={INSTANCE}"})
    assert left == []
    assert docker_client.networks.list(names=[NETWORK]) == []


def compose(directory: Path, project: str, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """``docker compose`` (v2) or ``docker-compose`` (v1) in ``directory``, as a user runs it."""
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMASWAP_", "DOCKER_GID"))}
    return subprocess.run([*command, "-p", project, *args], cwd=directory, check=check,
                          capture_output=True, text=True, env={**clean_env, **(env or {})})


@pytest.fixture
def clean_compose_copy(tmp_path: Path) -> Path:
    """compose/ as a fresh clone has it (no .env, no config.yaml), next to the image's context."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "proxy").symlink_to(REPO / "images" / "proxy")
    target = tmp_path / "compose"
    target.mkdir()
    for name in ("docker-compose.yml", "demo.yaml"):
        shutil.copy(REPO / "compose" / name, target / name)
    return target


def test_compose_up_as_written_serves_the_demo_and_down_leaves_nothing(
    images, docker_client, clean_compose_copy
) -> None:
    project = f"lsdemo{RUN_INSTANCE.split('-')[-1]}"
    port = unused_tcp_port()  # the only thing set: 8080 may be taken on a test machine
    env = {"LLAMASWAP_PORT": str(port)}
    started = time.monotonic()
    try:
        compose(clean_compose_copy, project, "up", "-d", env=env)
        url = f"http://127.0.0.1:{port}"
        reply = None
        while time.monotonic() - started < 90:
            try:
                reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                    "model": "tiny-llama", "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]})
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert reply is not None and reply.status_code == 200, reply and reply.text
        first_answer_s = time.monotonic() - started
        assert reply.json()["choices"][0]["message"]["content"] is not None
        # The answer came from a sibling container the proxy started on the stack's network.
        [model] = docker_client.containers.list(
            filters={"label": ["io.llamaswap.instance=compose-demo", "io.llamaswap.model=tiny-llama"]})
        assert "llamaswap-compose" in model.attrs["NetworkSettings"]["Networks"]
        [proxy] = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        assert proxy.attrs["State"]["Health"]["Status"] in ("starting", "healthy")
        top = proxy.top(ps_args="-o pid,uid,args")
        uid = top["Titles"].index("UID")
        servers = [row for row in top["Processes"] if "llamaswap-docker serve" in row[-1]]
        assert servers and all(row[uid] == "10001" for row in servers), top  # unprivileged
        # The published port serves its loopback names only (a DNS-rebinding page is refused)...
        foreign = httpx.get(f"{url}/v1/models", headers={"host": "evil.example"}, timeout=10)
        assert foreign.status_code == 403, foreign.text
        # ...while containers on the stack's network reach the proxy by its service name.
        code, output = proxy.exec_run(["python3", "-c", (
            "import urllib.request; print(urllib.request.urlopen("
            "'http://llamaswap:8080/v1/models', timeout=10).status)")])
        assert code == 0 and output.decode().strip() == "200", output
        print(f"compose up -> first answer: {first_answer_s:.1f}s")
    finally:
        compose(clean_compose_copy, project, "down", "-v", check=False)
        # What `down` left is judged below; removed here so a failure leaves nothing either.
        models_left = docker_client.containers.list(
            all=True, filters={"label": "io.llamaswap.instance=compose-demo"})
        for leftover in models_left:
            leftover.remove(force=True)
    assert docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}) == []
    assert [c.name for c in models_left] == []
    assert docker_client.networks.list(names=["llamaswap-compose"]) == []
    assert docker_client.volumes.list(
        filters={"label": f"com.docker.compose.project={project}"}) == []


def test_a_socket_the_proxy_cannot_use_ends_in_a_visible_nonzero_exit(
    images, docker_client, clean_compose_copy, tmp_path: Path
) -> None:
    import socket as socketlib

    # A real unix socket the unprivileged server may not open (root's, mode 0600): no engine.
    path = tmp_path / "locked.sock"
    listener = socketlib.socket(socketlib.AF_UNIX)
    listener.bind(str(path))
    path.chmod(0o600)
    project = f"lslocked{RUN_INSTANCE.split('-')[-1]}"
    env = {"LLAMASWAP_PORT": str(unused_tcp_port()), "LLAMASWAP_DOCKER_SOCKET": str(path),
           "LLAMASWAP_NETWORK": f"{RUN_INSTANCE}-locked"}
    started = int(time.time()) - 1
    try:
        compose(clean_compose_copy, project, "up", "-d", env=env)
        # The restart policy (unless-stopped: the proxy must come back after a reboot) retries
        # with a growing delay. Between tries `ps` says "Restarting", but a poll can miss that
        # window on a busy machine; the engine's own record of each exit cannot be missed.
        [proxy] = docker_client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"})
        deadline = time.monotonic() + 90
        exits: list[str] = []
        while len(exits) < 2:  # it exited, was restarted by the policy, and exited again
            assert time.monotonic() < deadline, f"the proxy did not exit twice: {exits}"
            time.sleep(0.3)
            exits = [event["Actor"]["Attributes"].get("exitCode") for event in docker_client.events(
                since=started, until=int(time.time()), decode=True,
                filters={"container": proxy.id, "event": "die"})]
        assert set(exits) == {"1"}, exits  # a visible failure (1), not a crash or a clean 0
        proxy.reload()
        assert proxy.attrs["RestartCount"] >= 1
        logs = compose(clean_compose_copy, project, "logs", "--no-color", env=env).stdout
        errors = [line for line in logs.splitlines() if "Error:" in line]
        assert errors and "permission denied" in errors[0].lower(), logs
        assert "Traceback" not in logs
    finally:
        compose(clean_compose_copy, project, "down", "-v", env=env, check=False)
        listener.close()


def run_entrypoint(docker_client: docker.DockerClient, *, volumes: dict | None = None,
                   environment: dict | None = None) -> tuple[int, str]:
    """The proxy image's entrypoint with ``--version`` for the server: its exit code and output."""
    container = docker_client.containers.run(
        PROXY_IMAGE, ["--version"], detach=True, volumes=volumes or {},
        environment=environment or {}, labels={TEST_RUN_LABEL: RUN_ID})
    try:
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


def test_the_entrypoint_says_which_group_it_takes_and_why_it_cannot_start(
    images, docker_client, tmp_path: Path
) -> None:
    socket_path = "/var/run/docker.sock"
    # No socket mounted: one line saying what to mount, and EX_CONFIG (78), not a crash loop
    # of tracebacks.
    code, output = run_entrypoint(docker_client)
    assert code == 78 and f"no Docker socket at {socket_path}" in output, output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    # Something that is not a socket mounted there (a common typo: a missing host path
    # becomes a directory).
    code, output = run_entrypoint(docker_client, volumes={str(tmp_path): {
        "bind": socket_path, "mode": "ro"}})
    assert code == 78 and "is not a socket" in output, output
    # The socket: the server joins its group, found on the socket itself...
    mount = {"/var/run/docker.sock": {"bind": socket_path, "mode": "rw"}}
    code, output = run_entrypoint(docker_client, volumes=mount)
    gid = os.stat("/var/run/docker.sock").st_gid
    assert code == 0 and f"group {gid} (the group of {socket_path})" in output, output
    assert "llamaswap-docker " in output  # the server ran (its --version)
    # ...unless DOCKER_GID says otherwise.
    code, output = run_entrypoint(docker_client, volumes=mount,
                                  environment={"DOCKER_GID": "4242"})
    assert code == 0 and "group 4242 (DOCKER_GID)" in output, output
