"""The relay against the strongest baseline: direct calls and nginx, on the same upstream.

One upstream container (Debian's nginx answering a fixed chat completion, image
``llamaswap/nginx-upstream:local``) is started by llamaswap-docker as a model. Three targets
get the same keep-alive POSTs from ``wrk``, in alternating rounds so all see the same machine
load: the container's published port (direct), nginx on the host reverse-proxying to that port
(keep-alive upstream, buffering off, one worker like our one process), and llamaswap-docker
(and the same proxy with recording off, to show what recording costs). Recording's cost is
also measured in pinned pairs: both proxies on core 0, wrk and the models on core 1, on/off
runs back to back, the median of the per-pair ratios (unpinned runs on a 2-core machine
scatter too much to show a 10% difference).
Then SSE: 64-chunk streams from the fake upstream with no token delay, direct vs through the
proxy, first chunk and whole stream. Then the upstream-client candidates alone against the
same upstream (why the data plane uses its own client on httptools).

Needs ``wrk`` and ``nginx`` on the host (``apt-get install -y wrk nginx-light``), aiohttp
(``pip install -e '.[bench]'``) and the local images (built when missing). Prints tables;
asserts nothing.

    python3 benchmarks/bench_relay.py [--duration 5] [--rounds 3] [--streams 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from common import PIDS, fake_model, free_port, percentile, proxy_process

REPO = Path(__file__).resolve().parent.parent
NGINX_IMAGE = "llamaswap/nginx-upstream:local"
#: The upstream as a model: nginx answering a fixed chat completion.
NGINX_MODEL = {"image": NGINX_IMAGE, "port": 8080, "checkEndpoint": "/health"}
CONCURRENCY = (1, 16, 64)
TARGETS = ("direct", "nginx", "llamaswap")
#: Upstream-client candidates, measured alone against the same upstream.
CLIENTS = ("httpx (wave 1)", "httpx (tuned)", "aiohttp", "ours (httptools)")
BODY = ('{"model":"bench","messages":[{"role":"user","content":"Hello, who are you?"}],'
        '"max_tokens":16}')


def ensure_images() -> None:
    spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
    assert spec and spec.loader
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder
    spec.loader.exec_module(builder)
    builder.ensure_images((builder.FAKE_UPSTREAM, builder.NGINX_UPSTREAM))


@contextlib.contextmanager
def host_nginx(upstream: str) -> Iterator[str]:
    """nginx on the host as a keep-alive reverse proxy to ``upstream`` (host:port)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}; proxy_temp_path {tmp};
    fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    keepalive_requests 1000000;
    upstream model {{ server {upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
        process = subprocess.Popen(["nginx", "-p", tmp, "-c", str(conf), "-g", "daemon off;"],
                                   stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(httpx.TransportError):
                    httpx.get(f"{url}/health", timeout=1)
                    break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("nginx did not start")
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(url: str, connections: int, duration: float, script: Path,
            prefix: tuple[str, ...] = ()) -> dict[str, float]:
    """One ``wrk`` run: req/s, p50 and p99 in ms, requests done (failed ones are printed)."""
    out = subprocess.run(
        [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s",
         str(script), f"{url}/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if bad or errors:
        print(f"  ! {url} c={connections}: {bad.group(0) if bad else ''} "
              f"{errors.group(0) if errors else ''}")
    done = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": p50, "p99": p99, "requests": done}


@contextlib.contextmanager
def wrk_script() -> Iterator[Path]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = \"POST\"\nwrk.body = '{BODY}'\n"
                     "wrk.headers[\"Content-Type\"] = \"application/json\"\n")
    try:
        yield Path(script.name)
    finally:
        os.unlink(script.name)


def relay_table(urls: dict[str, str], duration: float, rounds: int) -> dict[tuple[str, int], dict]:
    targets = tuple(urls)
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with wrk_script() as script:
        for target in targets:  # warm every connection path once
            run_wrk(urls[target], 64, 1, script)
        for round_index in range(rounds):
            shift = round_index % len(targets)
            order = targets[shift:] + targets[:shift]
            for connections in CONCURRENCY:
                for target in order:
                    runs.setdefault((target, connections), []).append(
                        run_wrk(urls[target], connections, duration, script))
            print(f"  round {round_index + 1}/{rounds} done")
    return {key: {metric: statistics.median(run[metric] for run in values)
                  for metric in ("rps", "p50", "p99")} for key, values in runs.items()}


@contextlib.contextmanager
def pinned(pids: list[int]) -> Iterator[tuple[str, ...]]:
    """The proxies (every thread) on core 0, the model containers and wrk on core 1: what one
    proxy costs stops depending on where the scheduler puts whom (run-to-run noise on a
    2-core machine: ±15% unpinned). Yields the prefix that pins wrk."""
    every = f"0-{(os.cpu_count() or 2) - 1}"
    containers = subprocess.run(["docker", "ps", "-q", "--filter", "label=io.llamaswap.managed"],
                                capture_output=True, text=True, check=True).stdout.split()

    def place(proxies: str, models: str) -> None:
        for pid in pids:
            subprocess.run(["taskset", "-a", "-p", "-c", proxies, str(pid)],
                           capture_output=True, check=True)
        if containers:
            subprocess.run(["docker", "update", f"--cpuset-cpus={models}", *containers],
                           capture_output=True, check=True)

    place("0", "1")
    try:
        yield ("taskset", "-c", "1")
    finally:
        place(every, every)


def paired_ratios(on: str, off: str, duration: float, rounds: int) -> dict[int, list[float]]:
    """req/s of ``on`` ÷ req/s of ``off`` in each of ``rounds`` back-to-back pairs (the order
    alternating), per concurrency, both proxies pinned."""
    ratios: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
    with wrk_script() as script, pinned([PIDS[on], PIDS[off]]) as prefix:
        for connections in CONCURRENCY:
            run_wrk(on, connections, 1, script, prefix)
            run_wrk(off, connections, 1, script, prefix)
            for round_index in range(rounds):
                pair = (on, off) if round_index % 2 == 0 else (off, on)
                rps = {url: run_wrk(url, connections, duration, script, prefix)["rps"]
                       for url in pair}
                ratios[connections].append(rps[on] / rps[off])
    return ratios


def quartiles(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 25), percentile(values, 50), percentile(values, 75)


async def stream_times(urls: dict[str, str], streams: int) -> dict[str, dict[str, list[float]]]:
    """First chunk and whole stream, seconds; direct and proxy requests alternate."""
    body = {"model": "sse", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64,
            "stream": True}
    times: dict[str, dict[str, list[float]]] = {t: {"first": [], "whole": []} for t in urls}
    async with aiohttp.ClientSession() as session:
        for index in range(streams + 20):
            for target, url in urls.items():
                started = time.perf_counter()
                async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                    assert response.status == 200, await response.text()
                    data = await response.content.readany()
                    first = time.perf_counter() - started
                    data += await response.content.read()
                    whole = time.perf_counter() - started
                assert data.count(b"data: ") >= 64 and b"[DONE]" in data, data[-200:]
                if index >= 20:  # the first 20 warm up
                    times[target]["first"].append(first)
                    times[target]["whole"].append(whole)
    return times


async def client_alone(kind: str, url: str, connections: int, requests: int) -> float:
    """Requests/s of one upstream-client candidate driving ``url`` with ``connections``
    concurrent keep-alive POSTs."""
    payload = BODY.encode()
    headers = {"content-type": "application/json"}
    if kind == "ours (httptools)":
        sys.path.insert(0, str(REPO))
        from llamaswap_docker.proxy.upstream import UpstreamClient

        client = UpstreamClient()
        raw_headers = [(b"content-type", b"application/json")]

        async def one() -> None:
            response = await client.send("POST", url, "/v1/chat/completions", raw_headers,
                                         payload)
            await response.read()
            response.close()
        close = client.close
    elif kind == "aiohttp":  # tuned as a relay would: no cookies, no decompression, 3 s expiry
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3.0)
        aio = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                    cookie_jar=aiohttp.DummyCookieJar())

        async def one() -> None:
            async with aio.post(f"{url}/v1/chat/completions", data=payload,
                                headers=headers) as response:
                await response.read()
        close = aio.close
    else:
        if kind == "httpx (wave 1)":
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64,
                                  keepalive_expiry=30.0)
        else:  # tuned: a pool sized to the concurrency, short expiry
            limits = httpx.Limits(max_connections=connections,
                                  max_keepalive_connections=connections, keepalive_expiry=3.0)
        session = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0), trust_env=False)

        async def one() -> None:
            response = await session.post(f"{url}/v1/chat/completions", content=payload,
                                          headers=headers)
            response.read()
        close = session.aclose
    per_worker = requests // connections

    async def worker() -> None:
        for _ in range(per_worker):
            await one()

    await asyncio.gather(*(worker() for _ in range(connections)))  # warm up
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    await close()
    return per_worker * connections / elapsed


def large_body_costs(repeat: int = 20) -> dict[str, float]:
    """Milliseconds of event-loop time a 4 MB vision request costs to route, by method."""
    import base64
    import json

    sys.path.insert(0, str(REPO))
    from llamaswap_docker.config import load_config_text
    from llamaswap_docker.proxy.routing import parse_model_request, rewrite_body

    image = base64.b64encode(os.urandom(3_000_000)).decode()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
        {"type": "text", "text": "What is in this picture?"}]}]}).encode()
    renamed = load_config_text("models: {m: {image: x, useModelName: served}}",
                               source="bench.yaml").models["m"]

    def ms(work: Any) -> float:
        started = time.perf_counter()
        for _ in range(repeat):
            work()
        return (time.perf_counter() - started) / repeat * 1000

    parsed = parse_model_request(body, "application/json", None)
    return {
        "size_mb": len(body) / 1e6,
        "json.loads (wave 1)": ms(lambda: json.loads(body)),
        "json.dumps (wave 1 rewrite)": ms(lambda: json.dumps(parsed.payload, ensure_ascii=False,
                                                             separators=(",", ":")).encode()),
        "parse_model_request (orjson)": ms(lambda: parse_model_request(body, "application/json",
                                                                       None)),
        "rewrite_body, useModelName (orjson)": ms(lambda: rewrite_body(parsed, renamed)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=300, help="SSE streams per target")
    parser.add_argument("--client-requests", type=int, default=3000)
    parser.add_argument("--paired-rounds", type=int, default=16,
                        help="pinned on/off pairs per concurrency for the recording cost "
                        "(0: skip)")
    parser.add_argument("--paired-duration", type=float, default=2, help="seconds per pair run")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also relay through the package in this source tree (e.g. a "
                        "`git worktree` of an earlier commit) and compare")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nginx-light")
    try:
        import uvloop
        uvloop.install()  # the proxy's loop, for the client-alone figures too
    except ImportError:
        pass
    ensure_images()
    models = {
        "bench": NGINX_MODEL,
        "sse": fake_model("--tokens", "64"),
    }
    groups = {"all": {"swap": False, "exclusive": False, "members": ["bench", "sse"]}}
    print(f"machine: {os.cpu_count()} cores; wrk -t1, keep-alive POST, {args.duration:g} s runs, "
          f"median of {args.rounds} alternating rounds")
    baseline_proxy = (proxy_process(models, src=args.baseline_src, groups=groups)
                      if args.baseline_src else contextlib.nullcontext(None))
    # The same code with recording off: what activity rows and counters cost the relay.
    unrecorded_proxy = proxy_process(models, env={"LLAMASWAP_RECORDING": "false"},
                                     groups=groups)
    with proxy_process(models, groups=groups) as proxy, baseline_proxy as baseline, \
            unrecorded_proxy as unrecorded:
        for url in filter(None, (proxy, baseline)):
            for model in models:
                httpx.post(f"{url}/api/models/load/{model}", timeout=60).raise_for_status()
        # Recording off is compared on the relay only (no SSE run).
        httpx.post(f"{unrecorded}/api/models/load/bench", timeout=60).raise_for_status()
        running = {e["model"]: e["base_url"] for e in
                   httpx.get(f"{proxy}/running", timeout=10).json()["running"]}
        direct = running["bench"]
        with host_nginx(direct.removeprefix("http://")) as nginx:
            urls = {"direct": direct, "nginx": nginx, "llamaswap": proxy,
                    "unrecorded": unrecorded}
            if baseline:
                urls["baseline"] = baseline
            table = relay_table(urls, args.duration, args.rounds)
        paired: dict[int, list[float]] = {}
        if args.paired_rounds and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
            paired = paired_ratios(proxy, unrecorded, args.paired_duration, args.paired_rounds)
        stream_urls = {"direct": running["sse"], "llamaswap": proxy}
        if baseline:
            stream_urls["baseline"] = baseline
        streams = asyncio.run(stream_times(stream_urls, args.streams))
        clients = {}
        for kind in CLIENTS:
            for connections in CONCURRENCY:
                clients[(kind, connections)] = asyncio.run(
                    client_alone(kind, direct, connections, args.client_requests))

    print("\nRelay, req/s (p50 / p99 ms):")
    print(f"{'c':>4} | {'direct':>24} | {'nginx':>24} | {'llamaswap-docker':>24} | "
          f"{'vs nginx':>8} | {'+p50 vs direct':>14}")
    for c in CONCURRENCY:
        cells = [f"{table[(t, c)]['rps']:8.0f} ({table[(t, c)]['p50']:5.2f}/{table[(t, c)]['p99']:6.2f})"
                 for t in TARGETS]
        ratio = table[("llamaswap", c)]["rps"] / table[("nginx", c)]["rps"]
        added = table[("llamaswap", c)]["p50"] - table[("direct", c)]["p50"]
        print(f"{c:>4} | {cells[0]:>24} | {cells[1]:>24} | {cells[2]:>24} | {ratio:7.2f}x | "
              f"{added:+11.2f} ms")

    def against(other: str, title: str) -> None:
        print(f"\n{title}, req/s:")
        for c in CONCURRENCY:
            now, then = table[("llamaswap", c)], table[(other, c)]
            print(f"  c={c:<3} {now['rps']:8.0f} vs {then['rps']:8.0f}  = "
                  f"{now['rps'] / then['rps']:5.2f}x   p50 {now['p50']:5.2f} vs "
                  f"{then['p50']:5.2f} ms")

    against("unrecorded", "Recording on vs off (the same code, LLAMASWAP_RECORDING=false)")
    if paired:
        print(f"\nRecording on vs off, pinned (proxies on core 0, wrk and models on core 1), "
              f"{args.paired_rounds} pairs of {args.paired_duration:g} s, req/s ratio:")
        for c, ratios in paired.items():
            low, middle, high = quartiles(ratios)
            print(f"  c={c:<3} median {middle:5.3f}x   quartiles {low:5.3f}-{high:5.3f}")
    if baseline:
        against("baseline", f"This tree vs the baseline ({args.baseline_src})")

    print(f"\nSSE, 64 chunks, no token delay, {args.streams} streams each (ms):")
    overhead = {}
    for what in ("first", "whole"):
        d = [v * 1000 for v in streams["direct"][what]]
        p = [v * 1000 for v in streams["llamaswap"][what]]
        overhead[what] = (percentile(p, 50) - percentile(d, 50), percentile(p, 99) - percentile(d, 99))
        print(f"  {what + ' chunk' if what == 'first' else 'whole stream':>12}: direct p50 "
              f"{percentile(d, 50):6.2f} p99 {percentile(d, 99):6.2f} | proxy p50 "
              f"{percentile(p, 50):6.2f} p99 {percentile(p, 99):6.2f} | overhead p50 "
              f"{overhead[what][0]:+.2f} p99 {overhead[what][1]:+.2f}")
        if baseline:
            b = [v * 1000 for v in streams["baseline"][what]]
            print(f"  {'':>12}  baseline proxy p50 {percentile(b, 50):6.2f} p99 "
                  f"{percentile(b, 99):6.2f}")

    print(f"\nUpstream clients alone against the same upstream, req/s ({args.client_requests} "
          "requests):")
    print(f"  {'client':<18}" + "".join(f"{'c=' + str(c):>10}" for c in CONCURRENCY))
    for kind in CLIENTS:
        print(f"  {kind:<18}" + "".join(f"{clients[(kind, c)]:10.0f}" for c in CONCURRENCY))

    costs = large_body_costs()
    print(f"\nA {costs.pop('size_mb'):.1f} MB vision request, event-loop ms to route it:")
    for label, value in costs.items():
        print(f"  {label:<38} {value:6.2f}")

    c16, c64 = table[("llamaswap", 16)], table[("llamaswap", 64)]
    checks = [
        ("≥ 0.3x nginx req/s at c=16", c16["rps"] / table[("nginx", 16)]["rps"] >= 0.3),
        ("≥ 0.3x nginx req/s at c=64", c64["rps"] / table[("nginx", 64)]["rps"] >= 0.3),
        ("c=64 ≥ 0.9x c=16 (no collapse)", c64["rps"] >= 0.9 * c16["rps"]),
        ("added p50 ≤ 0.5 ms at c=1",
         table[("llamaswap", 1)]["p50"] - table[("direct", 1)]["p50"] <= 0.5),
        ("SSE first-chunk overhead ≤ 1 ms p50", overhead["first"][0] <= 1.0),
        *((f"recording keeps ≥ 90% of the req/s at c={c}"
           + (" (pinned pairs, median)" if paired else ""),
           quartiles(paired[c])[1] >= 0.9 if paired else
           table[("llamaswap", c)]["rps"] >= 0.9 * table[("unrecorded", c)]["rps"])
          for c in CONCURRENCY),
    ]
    print("\nTargets:")
    for label, met in checks:
        print(f"  [{'met' if met else 'NOT met'}] {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
