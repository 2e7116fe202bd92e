"""Test harness: a real Docker engine, locally built images, a tiny GGUF, and a label reaper.

Every container, network and volume a test run makes carries ``io.llamaswap.managed=true`` and
an ``io.llamaswap.instance`` starting with this run's ``RUN_INSTANCE`` (or the
``io.llamaswap.test-run`` label); the session reaper removes them all at the end, also when
tests fail. There is no skipping: without an engine the run fails and says how to start one.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from llamaswap_docker.tinymodel import ensure_tiny_gguf

REPO = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:8]
#: Ownership instance of this run; tests needing more instances append a suffix.
RUN_INSTANCE = f"pytest-{RUN_ID}"
TEST_RUN_LABEL = "io.llamaswap.test-run"

FAKE_UPSTREAM_IMAGE = "llamaswap/fake-upstream:local"
LLAMA_SERVER_IMAGE = "llamaswap/llama-server:local"

_NO_ENGINE = (
    "No Docker engine answers ({error}). These tests run against a real engine and never skip. "
    "Start one: `dockerd > /tmp/dockerd.log 2>&1 &` (install it with `apt-get install -y docker.io`), "
    "or point DOCKER_HOST at a running engine. `bash .ci/run` does both."
)


def _load_image_builder() -> Any:
    spec = importlib.util.spec_from_file_location("llamaswap_images_build", REPO / "images" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _is_ours(labels: dict[str, str], prefix: str = RUN_INSTANCE) -> bool:
    if prefix == RUN_INSTANCE and labels.get(TEST_RUN_LABEL) == RUN_ID:
        return True
    if prefix != RUN_INSTANCE and TEST_RUN_LABEL in labels:
        return True
    return labels.get("io.llamaswap.instance", "").startswith(prefix)


#: Leftovers of other test runs are reaped only past this age: a run in progress is younger.
STALE_AFTER_S = 3600


def _created_s(attrs: dict[str, Any]) -> float:
    created = attrs.get("Created", "")
    if isinstance(created, (int, float)):
        return float(created)
    try:
        return datetime.fromisoformat(created[:26].rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return time.time()


def reap(client: docker.DockerClient, prefix: str = RUN_INSTANCE) -> list[str]:
    """Remove every container, network and volume this run made; return their names.

    With ``prefix="pytest-"`` it removes what earlier, killed test runs left behind (older than
    ``STALE_AFTER_S``, so a test run going on beside this one keeps its containers).
    """
    min_age = 0 if prefix == RUN_INSTANCE else STALE_AFTER_S

    def _is_ours_here(labels: dict[str, str], attrs: dict[str, Any] | None = None) -> bool:
        if not _is_ours(labels, prefix):
            return False
        return min_age == 0 or attrs is None or time.time() - _created_s(attrs) > min_age

    removed: list[str] = []
    for container in client.containers.list(all=True):
        if _is_ours_here(container.labels, container.attrs):
            try:
                container.remove(force=True, v=True)
                removed.append(container.name)
            except docker.errors.NotFound:
                pass
    for network in client.networks.list():
        network.reload()
        if _is_ours_here(network.attrs.get("Labels") or {}, network.attrs):
            try:
                network.remove()
                removed.append(network.name)
            except docker.errors.APIError:
                pass
    for volume in client.volumes.list():
        if _is_ours_here(volume.attrs.get("Labels") or {}, volume.attrs):
            try:
                volume.remove(force=True)
                removed.append(volume.name)
            except docker.errors.APIError:
                pass
    return removed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        pytest.fail(_NO_ENGINE.format(error=exc), pytrace=False)
    reap(client, prefix="pytest-")  # leftovers of an earlier run that was killed
    yield client
    reap(client)
    client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The locally built images (built now if missing: minutes on a fresh machine)."""
    builder = _load_image_builder()
    builder.ensure_images(client=docker_client)
    return {"fake": FAKE_UPSTREAM_IMAGE, "llama": LLAMA_SERVER_IMAGE}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory holding ``tiny.gguf``, to mount into llama-server containers."""
    directory = tmp_path_factory.mktemp("models")
    ensure_tiny_gguf(directory)
    directory.chmod(0o755)
    return directory


def unused_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Call ``check`` until it returns something true, and return that; fail naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_http_ok(url: str, timeout: float = 30.0) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.05)


class ContainerFactory:
    """Starts labelled containers directly through docker-py and removes them after the test."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.started: list[Any] = []

    def run(self, image: str, command: list[str] | None = None, *, port: int = 8080,
            labels: dict[str, str] | None = None, **kwargs: Any) -> tuple[Any, str]:
        """Run ``image`` with ``port`` published on 127.0.0.1; return (container, base URL)."""
        all_labels = {
            "io.llamaswap.managed": "true",
            "io.llamaswap.instance": RUN_INSTANCE,
            TEST_RUN_LABEL: RUN_ID,
            **(labels or {}),
        }
        container = self.client.containers.run(
            image, command, detach=True, labels=all_labels,
            ports={f"{port}/tcp": ("127.0.0.1", None)}, **kwargs,
        )
        self.started.append(container)
        container.reload()
        host_port = container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"]
        return container, f"http://127.0.0.1:{host_port}"

    def cleanup(self) -> None:
        for container in self.started:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def test_containers(docker_client: docker.DockerClient, images: dict[str, str]) -> Iterator[ContainerFactory]:
    helper = ContainerFactory(docker_client)
    yield helper
    helper.cleanup()


@pytest.fixture
def run_label() -> Callable[[], dict[str, str]]:
    return lambda: {TEST_RUN_LABEL: RUN_ID}


# -- the proxy under test -----------------------------------------------------------------------


def proxy_config_yaml(models: dict[str, Any], instance: str, **top: Any) -> str:
    """A config for a test proxy: its own instance and network, host routing, no pulls."""
    import yaml

    # One network for the whole run: the engine has address pools for only ~30 bridges.
    docker_block = {"instance": instance, "network": f"{RUN_INSTANCE}-net", "routing": "host",
                    "pullPolicy": "never", "stopTimeout": 2, **top.pop("docker", {})}
    document = {"healthCheckTimeout": 30, **top, "docker": docker_block, "models": models}
    return yaml.safe_dump(document, sort_keys=False)


class ProxyHandle:
    """A real proxy (uvicorn on a real socket) running in a thread of the test process."""

    def __init__(self, config_text: str, port: int) -> None:
        import threading

        import uvicorn

        from llamaswap_docker.api import create_app
        from llamaswap_docker.config import load_config_text
        from llamaswap_docker.runtime import Engine
        from llamaswap_docker.server import uvicorn_config

        self.config = load_config_text(config_text, source="test-config.yaml")
        self.engine = Engine.from_settings()
        self.app = create_app(self.config, self.engine)
        self.url = f"http://127.0.0.1:{port}"
        # Served as `serve` serves it (uvloop, httptools, TCP_NODELAY).
        self.server = uvicorn.Server(uvicorn_config(
            self.app, "127.0.0.1", port, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="test-proxy", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the test proxy did not start")
            time.sleep(0.02)

    @property
    def manager(self) -> Any:
        return self.app.state.llamaswap.manager

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.engine.close()


@pytest.fixture
def instance_name(request: pytest.FixtureRequest) -> str:
    """A per-test ownership instance (under this run's prefix, so the reaper finds it)."""
    return f"{RUN_INSTANCE}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def start_proxy(
    docker_client: docker.DockerClient, images: dict[str, str], instance_name: str
) -> Iterator[Callable[..., ProxyHandle]]:
    """Start a proxy on a config: ``start_proxy(models, **top_level_keys)``."""
    from llamaswap_docker.logs import configure_logging

    configure_logging("debug")
    handles: list[ProxyHandle] = []

    def start(models: dict[str, Any], **top: Any) -> ProxyHandle:
        handle = ProxyHandle(proxy_config_yaml(models, instance_name, **top), unused_tcp_port())
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


def fake_model(*args: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    """A model entry running the fake upstream with ``args``."""
    return {"image": FAKE_UPSTREAM_IMAGE, "port": port, "cmd": ["--port", str(port), *args], **extra}


def llama_model(model_dir: Path, *args: str, **extra: Any) -> dict[str, Any]:
    """A model entry running the real llama-server on the tiny GGUF."""
    return {
        "image": LLAMA_SERVER_IMAGE,
        "cmd": ["-m", "/models/tiny.gguf", "-c", "512", *args],
        "volumes": [f"{model_dir}:/models:ro"],
        **extra,
    }


def model_containers(client: docker.DockerClient, instance: str, model_id: str | None = None,
                     all: bool = True) -> list[Any]:
    """Containers the engine lists for an instance (and model)."""
    labels = [f"io.llamaswap.instance={instance}"]
    if model_id:
        labels.append(f"io.llamaswap.model={model_id}")
    return client.containers.list(all=all, filters={"label": labels})


class ProxyProcess:
    """``llamaswap-docker serve`` as a real process, for restart, kill and signal tests."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        import subprocess

        self.config_path = config_path
        self.log_path = log_path
        self.port = unused_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamaswap_docker", "serve", "-c", str(config_path),
             "-l", f"127.0.0.1:{self.port}", "--log-level", "debug"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"proxy did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def ensure_stopped(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if not self._log.closed:
            self._log.close()


@pytest.fixture
def proxy_processes(
    docker_client: docker.DockerClient, images: dict[str, str], instance_name: str, tmp_path: Path
) -> Iterator[Callable[..., ProxyProcess]]:
    """Start ``serve`` processes: ``start(models, **top)`` writes the config and starts one."""
    started: list[ProxyProcess] = []
    config_path = tmp_path / "config.yaml"

    def start(models: dict[str, Any] | None = None, **top: Any) -> ProxyProcess:
        if models is not None:
            config_path.write_text(proxy_config_yaml(models, instance_name, **top))
        handle = ProxyProcess(config_path, tmp_path / "proxy.log")
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.ensure_stopped()


# -- small client helpers shared by the integration tests -----------------------------------------


def chat(url: str, model: str, **extra: Any) -> httpx.Response:
    """A small chat completion through the proxy at ``url``."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def ready_ids(url: str) -> dict[str, str]:
    """Model id → container id of the models the proxy reports ready."""
    running = httpx.get(f"{url}/running", timeout=10).json()["running"]
    return {entry["model"]: entry["container_id"] for entry in running if entry["state"] == "ready"}


def container_exists(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True
