"""Cold start and swap: request → first byte through the proxy, against ``docker run`` by hand.

Measured on the fake upstream with zero load delay, so the figures are the orchestration cost:
create + start + health polling + routing. The floor is the same container started directly
through docker-py with its health polled every 10 ms, in the same run.

    python3 benchmarks/bench_lifecycle.py [--runs 20]
"""

from __future__ import annotations

import argparse
import time

import docker
import httpx

from common import FAKE_IMAGE, chat_body, fake_model, proxy_process, summary, time_to_first_byte


def docker_run_floor(runs: int) -> list[float]:
    """``docker run`` (SDK) of the same image + polling /health until 200."""
    client = docker.from_env()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        container = client.containers.run(
            FAKE_IMAGE, ["--port", "8080"], detach=True,
            labels={"io.llamaswap.managed": "true", "io.llamaswap.instance": "bench-floor"},
            ports={"8080/tcp": ("127.0.0.1", None)},
        )
        try:
            container.reload()
            port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
            times.append(time.perf_counter() - started)
        finally:
            container.remove(force=True)
    client.close()
    return times


def cold_starts(url: str, runs: int) -> list[float]:
    times = []
    with httpx.Client(timeout=120) as client:
        for _ in range(runs):
            client.post(f"{url}/api/models/unload").raise_for_status()
            times.append(time_to_first_byte(client, f"{url}/v1/chat/completions", chat_body("a")))
    return times


def swaps(url: str, runs: int) -> list[float]:
    times = []
    with httpx.Client(timeout=120) as client:
        time_to_first_byte(client, f"{url}/v1/chat/completions", chat_body("a"))
        for index in range(runs):
            model = "b" if index % 2 == 0 else "a"
            times.append(time_to_first_byte(client, f"{url}/v1/chat/completions", chat_body(model)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs

    floor = docker_run_floor(runs)
    with proxy_process({"a": fake_model(), "b": fake_model()}) as url:
        cold = cold_starts(url, runs)
        swap = swaps(url, runs)

    p50 = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(f"docker run + first /health 200 (floor): {summary(floor)}")
    print(f"cold start, request → first byte:       {summary(cold)}")
    print(f"swap a↔b, request → first byte:         {summary(swap)}")
    print(f"cold start / floor (p50): {p50(cold) / p50(floor):.2f}x")
    print(f"swap / floor (p50):       {p50(swap) / p50(floor):.2f}x")


if __name__ == "__main__":
    main()
