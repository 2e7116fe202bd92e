"""Instructions that recording costs per request, counted by callgrind (repeatable, unlike
wall-clock runs on a shared machine).

First the recorder alone: a child process runs it for N and 3N requests shaped like
bench_relay's (a 262-byte chat completion with a flat usage object) and the difference is
divided by 2N, so start-up and import costs cancel: the request path alone (trace ... finish)
and the request path with its batch (flush every 64). The request path makes the calls that
this tree's hop makes (``--baseline-src`` runs the same calls against the baseline's recorder).

Then the whole proxy: ``llamaswap-docker serve`` under callgrind relays bench_relay's requests
from ``wrk`` on one keep-alive connection (the same work per request in every run), recording
on and then off; its counters are zeroed after a warm-up that fills the activity log, and
dumped after a timed run. Instructions per relayed request, on ÷ off, is what recording leaves
of a CPU-bound proxy's throughput, without the wall clock's noise. Needs ``valgrind``, and for
the proxy part Docker, ``wrk`` and bench_relay's images (built when missing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench_relay import NGINX_MODEL, ensure_images, run_wrk, wrk_script
from common import PIDS, proxy_process

REPO = Path(__file__).resolve().parents[1]
CHILD = '''
import asyncio, sys, time
from llamaswap_docker.observe import (ActivityLog, CaptureBuffer, EventBus, Metrics, Recorder,
                                      StateReading)
BODY = (b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help '
        b'you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,'
        b'"total_tokens":18}}')
HEADERS = [(b"server", b"nginx"), (b"content-type", b"application/json"),
           (b"content-length", b"262"), (b"connection", b"keep-alive")]
async def main(phase, n):
    rec = Recorder(ActivityLog(1000), Metrics(lambda: StateReading({}, {}, {}), []), EventBus(),
                   CaptureBuffer(0))
    for batch in range(n // 64 + 20):  # 20 batches to warm up
        for _ in range(64):
            trace = rec.trace("/v1/chat/completions")
            trace.routed = trace.admitted = time.monotonic()
            trace.status, trace.headers = 200, HEADERS
            trace.body(BODY)
            rec.finish(trace, "bench")
        if phase == "batch":
            rec.flush()
        else:
            rec._queue.clear()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


def instructions(src: Path, phase: str, requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
             sys.executable, "-c", CHILD, phase, str(requests)],
            env={**os.environ, "PYTHONPATH": str(src)}, cwd=src, capture_output=True, text=True,
            check=True).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))  # type: ignore[union-attr]


def per_request(src: Path, phase: str, requests: int) -> float:
    return (instructions(src, phase, 3 * requests) - instructions(src, phase, requests)) / (
        2 * requests)


def proxy_per_request(src: Path, recording: bool, seconds: float) -> tuple[float, float]:
    """Instructions per request relayed by the whole proxy, and the requests it relayed."""
    with tempfile.TemporaryDirectory() as tmp, wrk_script() as script, proxy_process(
            {"bench": NGINX_MODEL},
            src=None if src == REPO else src, env={"LLAMASWAP_RECORDING": str(recording).lower()},
            wrap=("valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out"),
            start_timeout=600) as url:
        httpx.post(f"{url}/api/models/load/bench", timeout=600).raise_for_status()
        # Past the activity log's 1000 rows: each new row then pushes out the oldest.
        run_wrk(url, 1, max(10.0, seconds / 2), script)
        pid = str(PIDS[url])
        subprocess.run(["callgrind_control", "--zero", pid], capture_output=True, check=True)
        relayed = run_wrk(url, 1, seconds, script)["requests"]
        subprocess.run(["callgrind_control", "--dump", pid], capture_output=True, check=True)
        [dump] = Path(tmp).glob("out.*")
        summary = re.search(r"^summary: (\d+)", dump.read_text(), re.M)
        assert summary, f"no summary in {dump}"
        total = int(summary.group(1))
    return total / relayed, relayed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--proxy-seconds", type=float, default=15,
                        help="seconds of relaying per whole-proxy run (0: skip that part)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also count the package in this source tree (a `git worktree`)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install -y valgrind")
    trees = {"this tree": REPO, **({"baseline": args.baseline_src} if args.baseline_src else {})}
    print(f"instructions per request, {args.requests} and {3 * args.requests} requests:")
    for name, src in trees.items():
        hot = per_request(src, "hot", args.requests)
        both = per_request(src, "batch", args.requests)
        print(f"  {name:>10}: request path {hot:8,.0f}   batch {both - hot:8,.0f}   "
              f"total {both:8,.0f}")
    if args.proxy_seconds <= 0:
        return 0
    ensure_images()
    print(f"\nthe whole proxy, instructions per relayed request (c=1, {args.proxy_seconds:g} s):")
    for name, src in trees.items():
        on, done_on = proxy_per_request(src, True, args.proxy_seconds)
        off, done_off = proxy_per_request(src, False, args.proxy_seconds)
        print(f"  {name:>10}: recording on {on:9,.0f} ({done_on:,.0f} requests)   off {off:9,.0f} "
              f"({done_off:,.0f})   recording costs {on - off:7,.0f}   off ÷ on = {off / on:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
