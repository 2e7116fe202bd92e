"""Shared pieces of the benchmarks: a real proxy process, configs, percentiles.

Benchmarks print figures and ratios against a baseline measured in the same run; they assert
nothing about speed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import yaml

FAKE_IMAGE = "llamaswap/fake-upstream:local"
#: Every benchmark resource is owned by an instance under this prefix and reaped at the end.
INSTANCE_PREFIX = "bench-"
#: The process id of each running proxy_process, by its URL (to pin it to a core).
PIDS: dict[str, int] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"p50 {percentile(ms, 50):7.2f} ms  p99 {percentile(ms, 99):7.2f} ms  "
            f"mean {statistics.fmean(ms):7.2f} ms  (n={len(ms)})")


def fake_model(*args: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {"image": FAKE_IMAGE, "port": port, "cmd": ["--port", str(port), *args], **extra}


@contextlib.contextmanager
def proxy_process(models: dict[str, Any], src: Path | None = None,
                  env: dict[str, str] | None = None, wrap: tuple[str, ...] = (),
                  start_timeout: float = 30, **top: Any) -> Iterator[str]:
    """Run ``llamaswap-docker serve`` on a config in a subprocess; yield its URL.

    ``src``: run the package from that source tree instead (another commit, checked out with
    ``git worktree add``), for a before/after comparison in one run; ``env``: extra environment
    (``LLAMASWAP_*`` settings); ``wrap``: a command the interpreter runs under (valgrind).
    """
    instance = f"{INSTANCE_PREFIX}{uuid.uuid4().hex[:6]}"
    config = {
        "healthCheckTimeout": 60, **top,
        "docker": {"instance": instance, "network": f"{instance}-net", "routing": "host",
                   "pullPolicy": "never", "stopTimeout": 2},
        "models": models,
    }
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        environment = {**os.environ, **(env or {}), **({"PYTHONPATH": str(src)} if src else {})}
        process = subprocess.Popen(
            [*wrap, sys.executable, "-m", "llamaswap_docker", "serve", "-c", str(path),
             "-l", f"127.0.0.1:{port}", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment, cwd=src,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the proxy did not start")
                time.sleep(0.05)
            PIDS[url] = process.pid
            yield url
        finally:
            PIDS.pop(url, None)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            reap(instance)


def reap(instance: str) -> None:
    client = docker.from_env()
    for container in client.containers.list(
            all=True, filters={"label": f"io.llamaswap.instance={instance}"}):
        container.remove(force=True)
    for network in client.networks.list(names=[f"{instance}-net"]):
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
    client.close()


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **extra}


def time_to_first_byte(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    """Seconds from sending ``body`` to the first byte of the response body."""
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for _ in response.iter_raw():
            return time.perf_counter() - started
    return time.perf_counter() - started


os.environ.setdefault("PYTHONUNBUFFERED", "1")
