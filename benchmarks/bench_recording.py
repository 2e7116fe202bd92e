"""Instructions that recording costs per request, counted by callgrind (repeatable, unlike
wall-clock runs on a shared machine).

Each figure runs a recorder in a child process for N and 3N requests shaped like
bench_relay's (a 262-byte chat completion with a flat usage object) and divides the
difference by 2N, so start-up and import costs cancel: the request path alone (trace ... finish)
and the request path with its batch (flush every 64). The request path makes the calls that
this tree's hop makes (``--baseline-src`` runs the same calls against the baseline's recorder).
Needs ``valgrind``.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3200)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
