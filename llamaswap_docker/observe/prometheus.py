"""Prometheus metrics for ``GET /metrics``, counted in plain dicts and exposed at scrape time.

Finished requests are counted a batch at a time (no locks: the proxy is one event loop);
``prometheus_client`` only formats the counts when Prometheus asks. Gauges (model state,
in flight, queue depth) are read from the live state at scrape time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Ended", "Metrics", "StateReading"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds: requests and waits (sub-second to minutes), loads (seconds to many minutes).
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
#: A finished request as the counters take it: model, path, status, duration and wait
#: (seconds), input, output and cached tokens (-1: not reported).
Ended = tuple[str, str, int, float, float, int, int, int]
_MODEL = itemgetter(0)
_POSITIVE = (0).__lt__  # filter() calls it in C: no Python per request


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.observe_all((value,))

    def observe_all(self, values: Iterable[float]) -> None:
        """Count many values: sorted once, each bucket is one bisect (not one per value)."""
        ordered = sorted(values)
        counts, below, size = self.counts, 0, len(ordered)
        for index, bound in enumerate(self.bounds):
            upto = bisect_right(ordered, bound)  # values ≤ bound: Prometheus' "le"
            counts[index] += upto - below
            below = upto
            if below == size:  # the rest are empty (fast requests: the first few buckets)
                break
        else:
            counts[-1] += size - below
        self.total += sum(ordered)

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


@dataclass(frozen=True)
class StateReading:
    """What the gauges read at scrape time."""

    states: dict[str, str]  # model → current state
    in_flight: dict[str, int]
    waiting: dict[str, int]


class Metrics:
    """The counters and histograms; ``render()`` is the ``/metrics`` body."""

    def __init__(self, read_state: Callable[[], StateReading], model_states: Iterable[str]) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.durations: dict[str, _Histogram] = {}
        self.waits: dict[str, _Histogram] = {}
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.loads: dict[str, _Histogram] = {}
        self.swaps = 0
        self.load_failures: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._read_state = read_state
        self._state_names = tuple(model_states)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))

    def requests_ended(self, ended: list[Ended]) -> None:
        """Count a batch of finished requests (``ended`` is sorted in place).

        Runs for every request, so per request only C code runs here: the batch is grouped by
        model (a sort), turned into columns (``zip``), and each column is counted at once.
        """
        ended.sort(key=_MODEL)
        requests, tokens = self.requests, self.tokens
        for model, group in groupby(ended, _MODEL):
            _, paths, statuses, durations, waits, inputs, outputs, cached = zip(*group)
            for (path, status), count in Counter(zip(paths, statuses)).items():
                # /upstream/<model>/<any path>: one series, not one per path a client makes up.
                label = "/upstream" if path.startswith("/upstream/") else path
                requests[(model, label, status)] += count
            _histogram(self.durations, model, REQUEST_BUCKETS).observe_all(durations)
            _histogram(self.waits, model, REQUEST_BUCKETS).observe_all(waits)
            for kind, counts in (("input", inputs), ("output", outputs), ("cached", cached)):
                # Only counts above 0: -1 says "not reported", and a counter never goes down.
                total = sum(filter(_POSITIVE, counts))
                if total:
                    tokens[(model, kind)] += total

    def load(self, model: str, seconds: float) -> None:
        self.swaps += 1
        _histogram(self.loads, model, LOAD_BUCKETS).observe(seconds)

    def load_failed(self, model: str, reason: str) -> None:
        self.load_failures[(model, reason)] += 1

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("llamaswap_requests", "Inference requests, by model, "
                                       "path and status (499: the client left)",
                                       labels=["model", "path", "status"])
        for (model, path, status), value in sorted(self.requests.items()):
            requests.add_metric([model, path, str(status)], value)
        yield requests
        yield _histograms("llamaswap_request_duration_seconds",
                          "Inference request duration, first byte in to last byte out",
                          self.durations)
        yield _histograms("llamaswap_wait_seconds",
                          "Time a request waited for its model (load, wake or swap)", self.waits)
        tokens = CounterMetricFamily("llamaswap_tokens", "Tokens the model servers reported",
                                     labels=["model", "kind"])
        for labels, value in sorted(self.tokens.items()):
            tokens.add_metric(list(labels), value)
        yield tokens
        yield _histograms("llamaswap_model_load_seconds",
                          "Time from a model's start (or wake) to ready", self.loads)
        yield CounterMetricFamily("llamaswap_swaps", "Models brought up (cold starts and wakes)",
                                  value=self.swaps)
        failures = CounterMetricFamily("llamaswap_load_failures", "Model starts that failed",
                                       labels=["model", "reason"])
        for labels, value in sorted(self.load_failures.items()):
            failures.add_metric(list(labels), value)
        yield failures
        reading = self._read_state()
        state = GaugeMetricFamily("llamaswap_model_state", "1 for the model's current state",
                                  labels=["model", "state"])
        for model, current in sorted(reading.states.items()):
            for name in self._state_names:
                state.add_metric([model, name], 1.0 if name == current else 0.0)
        yield state
        for name, doc, values in (
            ("llamaswap_in_flight", "Requests being served, by model", reading.in_flight),
            ("llamaswap_queue_depth", "Requests waiting for their model", reading.waiting),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model"])
            for model, value in sorted(values.items()):
                gauge.add_metric([model], value)
            yield gauge


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


def _histogram(table: dict[str, _Histogram], model: str, bounds: tuple[float, ...]) -> _Histogram:
    found = table.get(model)
    if found is None:
        found = table[model] = _Histogram(bounds)
    return found


def _histograms(name: str, doc: str, table: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model"])
    for model, histogram in sorted(table.items()):
        family.add_metric([model], histogram.buckets(), sum_value=histogram.total)
    return family
