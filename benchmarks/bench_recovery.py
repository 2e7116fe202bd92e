"""Proxy restart → first served request: two adopted models against two cold starts.

Both models are fake upstreams with a 2 s load delay (a stand-in for a model that takes time to
load), in a group that keeps both up. The proxy keeps its containers on shutdown
(``onShutdown: keep``), so the second start adopts them.

    python3 benchmarks/bench_recovery.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

from common import chat_body, fake_model, free_port, reap, summary


def start_and_serve(config: Path, port: int) -> tuple[subprocess.Popen, float]:
    """Start ``serve``; return it and the seconds until both models answered a request."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "llamaswap_docker", "serve", "-c", str(config),
         "-l", f"127.0.0.1:{port}", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.01)
    with httpx.Client(timeout=60) as client:
        for model in ("a", "b"):
            client.post(f"{url}/v1/chat/completions", json=chat_body(model)).raise_for_status()
    return process, time.perf_counter() - started


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    instance = f"bench-{uuid.uuid4().hex[:6]}"
    document = {
        "docker": {"instance": instance, "network": f"{instance}-net", "routing": "host",
                   "pullPolicy": "never", "stopTimeout": 2, "onShutdown": "keep"},
        "models": {m: fake_model("--load-delay", "2") for m in ("a", "b")},
        "groups": {"both": {"swap": False, "exclusive": False, "members": ["a", "b"]}},
    }
    cold, adopted = [], []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(document))
        port = free_port()
        try:
            for _ in range(rounds):
                reap(instance)  # nothing to adopt: a cold start
                process, seconds = start_and_serve(config, port)
                cold.append(seconds)
                stop(process)  # keeps both containers
                process, seconds = start_and_serve(config, port)
                adopted.append(seconds)
                stop(process)
        finally:
            reap(instance)
    print(f"restart → both models served, cold start: {summary(cold)}")
    print(f"restart → both models served, adopted:    {summary(adopted)}")
    p50 = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(f"adopted / cold (p50): {p50(adopted) / p50(cold):.2f}x")


if __name__ == "__main__":
    main()
