"""Added latency of the proxy over a direct call to the same upstream container.

One warm fake-upstream model; the same requests go straight to its published port (baseline)
and through the proxy, interleaved in rounds so both see the same machine load.

    python3 benchmarks/bench_proxy.py [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from common import chat_body, fake_model, percentile, proxy_process, summary


async def latencies(base: str, requests: int, concurrency: int, *, model: str) -> list[float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)
        body = chat_body(model)

        async def one() -> float:
            async with semaphore:
                started = time.perf_counter()
                response = await client.post(f"{base}/v1/chat/completions", json=body)
                response.raise_for_status()
                return time.perf_counter() - started

        await asyncio.gather(*(one() for _ in range(min(20, requests))))  # warm connections
        return list(await asyncio.gather(*(one() for _ in range(requests))))


async def first_chunk(base: str, streams: int, *, model: str) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        body = chat_body(model, stream=True, max_tokens=8)
        for _ in range(streams):
            started = time.perf_counter()
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                async for _chunk in response.aiter_raw():
                    times.append(time.perf_counter() - started)
                    break
    return times


def report(label: str, direct: list[float], proxied: list[float]) -> None:
    print(f"{label}")
    print(f"  direct : {summary(direct)}")
    print(f"  proxied: {summary(proxied)}")
    for q in (50, 99):
        added = (percentile(proxied, q) - percentile(direct, q)) * 1000
        ratio = percentile(proxied, q) / percentile(direct, q)
        print(f"  added p{q}: {added:+.2f} ms  ({ratio:.2f}x)")


async def run(requests: int) -> None:
    with proxy_process({"m": fake_model("--model-name", "m")}) as url:
        async with httpx.AsyncClient(timeout=60) as client:
            (await client.post(f"{url}/api/models/load/m")).raise_for_status()
            running = (await client.get(f"{url}/running")).json()["running"]
        direct_url = running[0]["base_url"]
        for concurrency in (1, 16):
            direct: list[float] = []
            proxied: list[float] = []
            for _ in range(2):  # interleave rounds
                direct += await latencies(direct_url, requests // 2, concurrency, model="m")
                proxied += await latencies(url, requests // 2, concurrency, model="m")
            report(f"{requests} non-stream chat requests, concurrency {concurrency}", direct, proxied)
        direct_ttfc = await first_chunk(direct_url, 50, model="m")
        proxied_ttfc = await first_chunk(url, 50, model="m")
        report("time to first chunk, 50 streams", direct_ttfc, proxied_ttfc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    asyncio.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
