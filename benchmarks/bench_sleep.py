"""Swap time with vLLM's sleep mode against stop + cold start, in one run.

Two vLLM-style fake models in one swap group, each with a 10 s load delay (a stand-in for a
vLLM start: weights, CUDA graphs, torch.compile); requests alternate A, B, A, B… Without
sleep every swap stops one container and cold-starts the other; with ``sleepMode: 1`` the
evicted model is put to sleep and the next swap wakes it in its container. The first two
requests are cold starts either way; the figure is the time of each request after them.

    python3 benchmarks/bench_sleep.py [--swaps 6] [--load-delay 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from common import chat_body, fake_model, proxy_process


def model(name: str, load_delay: float, sleep: bool) -> dict:
    args = ["--mode", "vllm", "--model-name", name, "--load-delay", str(load_delay)]
    if not sleep:
        return fake_model(*args)
    return fake_model(*args, "--enable-sleep-mode", env={"VLLM_SERVER_DEV_MODE": "1"},
                      sleepMode=1)


def alternate(swaps: int, load_delay: float, sleep: bool) -> list[float]:
    """Seconds of each request after the first two cold starts."""
    models = {m: model(m, load_delay, sleep) for m in ("a", "b")}
    groups = {"pair": {"swap": True, "exclusive": True, "members": ["a", "b"]}}
    times = []
    with proxy_process(models, groups=groups) as url, httpx.Client(timeout=120) as client:
        for turn in range(swaps + 2):
            started = time.perf_counter()
            client.post(f"{url}/v1/chat/completions", json=chat_body("ab"[turn % 2])
                        ).raise_for_status()
            if turn >= 2:
                times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--load-delay", type=float, default=10.0)
    args = parser.parse_args()
    cold = alternate(args.swaps, args.load_delay, sleep=False)
    asleep = alternate(args.swaps, args.load_delay, sleep=True)
    for name, values in (("stop + cold start", cold), ("sleepMode: 1", asleep)):
        print(f"{name:>18}: swap → answer  mean {statistics.fmean(values):6.2f} s  "
              f"min {min(values):6.2f} s  max {max(values):6.2f} s  (n={len(values)})")
    print(f"sleep mode swaps {statistics.fmean(cold) / statistics.fmean(asleep):.1f}× faster "
          f"(load delay {args.load_delay:g} s)")


if __name__ == "__main__":
    main()
