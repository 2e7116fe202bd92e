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


def _is_ours(labels: dict[str, str]) -> bool:
    return labels.get(TEST_RUN_LABEL) == RUN_ID or labels.get("io.llamaswap.instance", "").startswith(
        RUN_INSTANCE
    )


def reap(client: docker.DockerClient) -> list[str]:
    """Remove every container, network and volume this run made; return their names."""
    removed: list[str] = []
    for container in client.containers.list(all=True):
        if _is_ours(container.labels):
            try:
                container.remove(force=True, v=True)
                removed.append(container.name)
            except docker.errors.NotFound:
                pass
    for network in client.networks.list():
        network.reload()
        if _is_ours(network.attrs.get("Labels") or {}):
            try:
                network.remove()
                removed.append(network.name)
            except docker.errors.APIError:
                pass
    for volume in client.volumes.list():
        if _is_ours(volume.attrs.get("Labels") or {}):
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
