"""Readings the UI charts, worked out of raw numbers: pure functions, no I/O.

- ``container_reading``: one sample of the engine's stats stream (``docker stats``) as CPU %,
  memory and network/disk totals, by the formulas the docker CLI uses.
- ``histogram``: llama-swap's tok/s histogram (``calculateHistogramData`` in its
  ``internal/store/store.go``), and ``activity_stats`` its ``/api/metrics/stats`` fields.
- ``cpu_times`` / ``cpu_percents`` / ``memory_info`` / ``load_average`` / ``net_io``: the
  host's ``/proc`` files as llama-swap's ``sys_stats`` samples have them.
"""

from __future__ import annotations

import math
from datetime import datetime
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "activity_stats",
    "container_reading",
    "cpu_percents",
    "cpu_times",
    "histogram",
    "histograms_by_model",
    "load_average",
    "memory_info",
    "net_io",
    "rfc3339_seconds",
    "status_range",
]

#: llama-swap's bounds on the number of histogram bins (Sturges' rule in between).
MIN_BINS, MAX_BINS = 5, 20


# -- container stats -------------------------------------------------------------------------


def container_reading(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One Engine API stats sample as the UI charts it.

    CPU % is the docker CLI's: the container's share of the host's CPU time since the previous
    sample (``precpu_stats``), times the CPUs online (100 % = one whole CPU). Memory leaves out
    the page cache the kernel can drop (``inactive_file``), as ``docker stats`` does. Network
    and block I/O are totals since the container started (the UI turns them into rates).
    """
    cpu, before = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
    usage = (cpu.get("cpu_usage") or {}).get("total_usage") or 0
    usage_before = (before.get("cpu_usage") or {}).get("total_usage") or 0
    system = cpu.get("system_cpu_usage") or 0
    system_before = before.get("system_cpu_usage") or 0
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()) or 1
    cpu_percent = 0.0
    if system > system_before and usage >= usage_before and usage_before:
        cpu_percent = (usage - usage_before) / (system - system_before) * cpus * 100

    memory = raw.get("memory_stats") or {}
    used = memory.get("usage") or 0
    details = memory.get("stats") or {}
    # cgroup v1 names it total_inactive_file, v2 inactive_file (docker CLI: calculateMemUsage).
    cache = details.get("total_inactive_file", details.get("inactive_file", 0)) or 0
    if cache < used:
        used -= cache
    limit = memory.get("limit") or 0

    rx = tx = 0
    for interface in (raw.get("networks") or {}).values():
        rx += interface.get("rx_bytes") or 0
        tx += interface.get("tx_bytes") or 0
    read = written = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or ():
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += entry.get("value") or 0
        elif op == "write":
            written += entry.get("value") or 0
    return {
        "read": raw.get("read"),
        "cpu_percent": round(cpu_percent, 2),
        "online_cpus": cpus,
        "memory_bytes": used,
        "memory_limit_bytes": limit,
        "memory_percent": round(used / limit * 100, 2) if limit else None,
        "net_rx_bytes": rx,
        "net_tx_bytes": tx,
        "block_read_bytes": read,
        "block_write_bytes": written,
        "pids": (raw.get("pids_stats") or {}).get("current"),
    }


# -- llama-swap's activity stats ---------------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (llama-swap's ``percentile``)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = q / 100 * (len(ordered) - 1)
    lower, upper = math.floor(rank), math.ceil(rank)
    return ordered[lower] + (rank - lower) * (ordered[upper] - ordered[lower])


def histogram(values: Iterable[float]) -> dict[str, Any] | None:
    """llama-swap's histogram of tok/s values: ``bins`` (counts), ``min``, ``max``,
    ``binSize`` and the ``p50``/``p95``/``p99`` percentiles; None without values.

    The bin count follows Sturges' rule, kept between 5 and 20; equal values make one bin.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    low, high = ordered[0], ordered[-1]
    spread = {"p50": _percentile(ordered, 50), "p95": _percentile(ordered, 95),
              "p99": _percentile(ordered, 99)}
    if low == high:
        return {"bins": [len(ordered)], "min": low, "max": high, "binSize": 0, **spread}
    count = min(MAX_BINS, max(MIN_BINS, math.ceil(math.log2(len(ordered))) + 1))
    size = (high - low) / count
    bins = [0] * count
    for value in ordered:
        bins[min(int((value - low) // size), count - 1)] += 1
    return {"bins": bins, "min": low, "max": high, "binSize": size, **spread}


def activity_stats(rows: Iterable[Any]) -> dict[str, Any]:
    """llama-swap's ``/api/metrics/stats`` fields over activity rows (``ActivityRow``):
    request and token totals, and histograms of prompt and generation tok/s (speeds of 0 or
    less mean "not reported" and are left out, as llama-swap does)."""
    requests = input_tokens = output_tokens = cached_tokens = 0
    prompt: list[float] = []
    generation: list[float] = []
    for row in rows:
        requests += 1
        input_tokens += max(row.input_tokens, 0)
        output_tokens += max(row.output_tokens, 0)
        cached_tokens += max(row.cached_tokens, 0)
        if row.prompt_per_second > 0:
            prompt.append(row.prompt_per_second)
        if row.tokens_per_second > 0:
            generation.append(row.tokens_per_second)
    return {
        "total_requests": requests,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "total_cache_tokens": cached_tokens,
        "prompt_histogram": histogram(prompt),
        "gen_histogram": histogram(generation),
    }


def histograms_by_model(rows: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per model, its ``prompt_histogram`` and ``gen_histogram``."""
    speeds: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        prompt, generation = speeds.setdefault(row.model, ([], []))
        if row.prompt_per_second > 0:
            prompt.append(row.prompt_per_second)
        if row.tokens_per_second > 0:
            generation.append(row.tokens_per_second)
    return {model: {"prompt_histogram": histogram(prompt), "gen_histogram": histogram(generation)}
            for model, (prompt, generation) in speeds.items()}


def rfc3339_seconds(text: str) -> float | None:
    """Epoch seconds of a time with its offset (``2025-01-31T12:00:00Z``), as ``?start=``,
    ``?end=`` and ``?after=`` take it; None: not one."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def status_range(text: str | None) -> tuple[int, int] | None:
    """The response statuses ``?status=`` keeps, as ``[low, high)``: ``ok`` (below 400),
    ``error`` (400 and above), a class (``2xx``, ``4xx``, ``5xx``) or one code; None: every
    status.

    Raises:
        ValueError: none of those.
    """
    if text is None or not text.strip():
        return None
    value = text.strip().lower()
    if value == "ok":
        return 0, 400
    if value in ("error", "errors"):
        return 400, 1000
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        low = int(value[0]) * 100
        return low, low + 100
    if value.isdigit() and 100 <= int(value) <= 599:
        return int(value), int(value) + 1
    raise ValueError(f"invalid status {text!r}: use ok, error, 2xx, 4xx, 5xx or a code "
                     "such as 503")


# -- the host, from /proc ------------------------------------------------------------------------


def cpu_times(proc_stat: str) -> list[tuple[int, int]]:
    """Per CPU, ``(busy, total)`` jiffies from ``/proc/stat``'s ``cpuN`` lines."""
    times = []
    for line in proc_stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        fields = [int(value) for value in rest.split()]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        # guest time is already counted in user and nice: leave it out of the total.
        total = sum(fields[:8])
        times.append((total - idle, total))
    return times


def cpu_percents(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    """Per CPU, the % busy between two ``cpu_times`` readings."""
    percents = []
    for (busy0, total0), (busy1, total1) in zip(before, after):
        elapsed = total1 - total0
        percents.append(round(max(0, busy1 - busy0) / elapsed * 100, 1) if elapsed > 0 else 0.0)
    return percents


def memory_info(meminfo: str) -> dict[str, int]:
    """llama-swap's memory fields (MB) from ``/proc/meminfo``."""
    kib: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            kib[name] = int(value[0])
    total = kib.get("MemTotal", 0)
    available = kib.get("MemAvailable", kib.get("MemFree", 0))
    swap_total = kib.get("SwapTotal", 0)
    return {
        "mem_total_mb": total // 1024,
        "mem_used_mb": (total - available) // 1024,
        "mem_free_mb": kib.get("MemFree", 0) // 1024,
        "swap_total_mb": swap_total // 1024,
        "swap_used_mb": (swap_total - kib.get("SwapFree", 0)) // 1024,
    }


def load_average(loadavg: str) -> dict[str, float]:
    """``load_avg_1``/``5``/``15`` from ``/proc/loadavg``."""
    parts = loadavg.split()
    values = [float(part) for part in parts[:3]] if len(parts) >= 3 else [0.0, 0.0, 0.0]
    return {"load_avg_1": values[0], "load_avg_5": values[1], "load_avg_15": values[2]}


def net_io(net_dev: str) -> list[dict[str, Any]]:
    """Per interface (loopback left out), bytes received and sent, from ``/proc/net/dev``."""
    interfaces = []
    for line in net_dev.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        name = name.strip()
        if len(fields) < 9 or name == "lo":
            continue
        interfaces.append({"name": name, "bytes_recv": int(fields[0]), "bytes_sent": int(fields[8])})
    return interfaces
