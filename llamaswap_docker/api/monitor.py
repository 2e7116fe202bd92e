"""What the UI's Overview and model pages chart over time, sampled by one small task.

Every ``TICK_S`` the task wakes up and measures how late it woke (the event loop's lag: a
long synchronous step anywhere in the proxy shows here), and looks at every model's state to
keep a timeline of which model ran when. Every ``SAMPLE_S`` it keeps a sample of the proxy
process (CPU, resident memory, lag, requests per second, requests in flight) and of the host
(llama-swap's ``sys_stats``: CPU per core, memory, load, network), in rings of ``KEEP``
samples.

Nothing here runs on the request path: it reads counters the proxy keeps anyway (the model
runtimes, the Prometheus counters), so an idle proxy costs four wake-ups a second. Model loads
come from the load histogram's count and sum (each new load adds exactly its duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loguru import logger

from llamaswap_docker.api import readings
from llamaswap_docker.lifecycle import ModelManager, ModelState
from llamaswap_docker.observe import Metrics

__all__ = ["KEEP", "SAMPLE_S", "TICK_S", "Monitor", "Segment"]

#: Seconds between wake-ups (lag measurements and state checks).
TICK_S = 0.25
#: Seconds between kept samples.
SAMPLE_S = 1.0
#: Samples kept: 15 minutes.
KEEP = 900
#: Timeline segments and loads kept (the open segments are kept besides).
KEEP_EVENTS = 2000
_PROC = Path("/proc")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


@dataclass
class Segment:
    """A stretch of time a model spent in one state (``end`` None: it still is)."""

    model: str
    state: str
    start: float  # epoch seconds
    end: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "state": self.state, "start": self.start, "end": self.end}


class Monitor:
    """The sampler: ``start()`` in the app's lifespan, ``stop()`` on the way out."""

    def __init__(self, manager: ModelManager, metrics: Metrics | None) -> None:
        self.manager = manager
        self.metrics = metrics
        self.started_at = time.time()
        self.proxy_samples: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.sys_samples: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.segments: deque[Segment] = deque(maxlen=KEEP_EVENTS)
        self.loads: deque[dict[str, Any]] = deque(maxlen=KEEP_EVENTS)
        #: Container stats streams open now (the model pages being looked at).
        self.stats_streams = 0
        #: The event loop the task runs on (set by ``start``).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[str, Segment] = {}
        #: How many of each runtime's state changes are in the timeline already.
        self._seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._lag_max = self._lag_sum = 0.0
        self._lag_count = 0
        self._last_sample: tuple[float, float] | None = None  # (monotonic, process CPU s)
        self._requests = self._count_requests()
        self._load_marks = self._load_counts()
        self._cpu_times: list[tuple[int, int]] | None = None
        self.observe_states(time.time(), time.monotonic())

    # -- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._run(), name="ui-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ticks_per_sample = max(1, round(SAMPLE_S / TICK_S))
        tick = 0
        expected = loop.time() + TICK_S
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            self.observe_lag(max(0.0, now - expected))
            expected = now + TICK_S
            tick += 1
            try:
                self.observe_states(time.time(), time.monotonic())
                if tick % ticks_per_sample == 0:
                    self.sample(time.time(), time.monotonic(), time.process_time())
            except Exception as exc:  # noqa: BLE001 - a chart is not worth the proxy
                logger.bind(error=f"{type(exc).__name__}: {exc}").warning("ui monitor sample failed")

    # -- one step each (called by the task; tests call them directly) ---------------------------

    def observe_lag(self, seconds: float) -> None:
        self._lag_max = max(self._lag_max, seconds)
        self._lag_sum += seconds
        self._lag_count += 1

    def observe_states(self, wall: float, mono: float) -> None:
        """Close and open timeline segments at each state change the runtimes remember
        since the last look (each with its own time: a ready spell between two looks counts)."""
        for model_id, runtime in list(self.manager.models.items()):
            seen = self._seen.get(model_id, 0)
            fresh = runtime.transitions_total - seen
            if not fresh:
                continue
            self._seen[model_id] = runtime.transitions_total
            for at, state in list(runtime.transitions)[-fresh:]:
                self._change(model_id, state.value, min(wall, wall - (mono - at)))
        for model_id in [m for m in self._open if m not in self.manager.models]:  # reloaded away
            segment = self._open.pop(model_id)
            segment.end = wall
            self.segments.append(segment)

    def _change(self, model_id: str, state: str, since: float) -> None:
        current = self._open.pop(model_id, None)
        if current is not None:
            current.end = max(current.start, since)
            self.segments.append(current)
        if state != ModelState.STOPPED.value:
            self._open[model_id] = Segment(model_id, state, since)

    def sample(self, wall: float, mono: float, cpu_s: float) -> None:
        """Keep one sample of the proxy process and the host; note new model loads."""
        requests = self._count_requests()
        previous, self._last_sample = self._last_sample, (mono, cpu_s)
        elapsed = mono - previous[0] if previous else 0.0
        cpu = (cpu_s - previous[1]) / elapsed * 100 if previous and elapsed > 0 else 0.0
        rate = (requests - self._requests) / elapsed if elapsed > 0 else 0.0
        self._requests = requests
        lag_mean = self._lag_sum / self._lag_count if self._lag_count else 0.0
        runtimes = list(self.manager.models.values())
        self.proxy_samples.append({
            "timestamp": _iso(wall),
            "cpu_percent": round(cpu, 1),
            "rss_bytes": _rss_bytes(),
            "loop_lag_ms": round(self._lag_max * 1000, 2),
            "loop_lag_mean_ms": round(lag_mean * 1000, 2),
            "requests_per_second": round(rate, 2),
            "in_flight": sum(r.in_flight for r in runtimes),
            "threads": _thread_count(),
            "stats_streams": self.stats_streams,
        })
        self._lag_max = self._lag_sum = 0.0
        self._lag_count = 0
        system = self._host_sample(wall)
        if system is not None:
            self.sys_samples.append(system)
        self._note_loads(wall)

    def _note_loads(self, wall: float) -> None:
        marks = self._load_counts()
        for key, (count, total) in marks.items():
            seen, seen_total = self._load_marks.get(key, (0, 0.0))
            if count <= seen:
                continue
            model, ok = key
            # One load between two samples (the usual case): its duration exactly; several:
            # their mean each.
            each = (total - seen_total) / (count - seen) if ok else None
            for _ in range(min(count - seen, 10)):
                self.loads.append({"model": model, "time": wall, "ok": ok,
                                   "seconds": None if each is None else round(each, 3)})
        self._load_marks = marks

    # -- reading the counters ----------------------------------------------------------------------

    def _count_requests(self) -> int:
        return sum(self.metrics.requests.values()) if self.metrics is not None else 0

    def _load_counts(self) -> dict[tuple[str, bool], tuple[int, float]]:
        """(model, ok) → (loads so far, their seconds in all; failures have no seconds)."""
        if self.metrics is None:
            return {}
        marks: dict[tuple[str, bool], tuple[int, float]] = {
            (model, True): (sum(histogram.counts), histogram.total)
            for model, histogram in self.metrics.loads.items()}
        for (model, _), count in self.metrics.load_failures.items():
            done, _ = marks.get((model, False), (0, 0.0))
            marks[(model, False)] = (done + count, 0.0)
        return marks

    def _host_sample(self, wall: float) -> dict[str, Any] | None:
        """llama-swap's ``sys_stats`` sample, where ``/proc`` has it (Linux)."""
        try:
            times = readings.cpu_times((_PROC / "stat").read_text())
            memory = readings.memory_info((_PROC / "meminfo").read_text())
            load = readings.load_average((_PROC / "loadavg").read_text())
            net = readings.net_io((_PROC / "net" / "dev").read_text())
        except OSError:
            return None
        before, self._cpu_times = self._cpu_times, times
        return {"timestamp": _iso(wall),
                "cpu_util_per_core": readings.cpu_percents(before, times) if before else
                [0.0] * len(times),
                **memory, **load, "net_io": net}

    # -- views -----------------------------------------------------------------------------------

    def timeline(self, after: float | None = None) -> list[dict[str, Any]]:
        """Segments that ended after ``after`` (all when None), then the open ones."""
        closed = [s.to_json() for s in self.segments
                  if after is None or (s.end is not None and s.end > after)]
        return closed + [s.to_json() for s in self._open.values()]

    def loads_of(self, model: str | None = None) -> list[dict[str, Any]]:
        return [load for load in self.loads if model is None or load["model"] == model]


def _rss_bytes() -> int:
    """Resident memory now (``/proc/self/statm``); elsewhere, the peak the OS reports."""
    try:
        pages = int((_PROC / "self" / "statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB else


def _thread_count() -> int:
    try:
        return len(os.listdir(_PROC / "self" / "task"))
    except OSError:
        import threading
        return threading.active_count()
