"""Prometheus metrics for ``GET /metrics``, counted in plain dicts and exposed at scrape time.

A request adds to a few dict entries (no locks, no label lookups: the proxy is one event
loop); ``prometheus_client`` only formats them when Prometheus asks. Gauges (model state,
in flight, queue depth) are read from the live state at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["Metrics", "StateReading", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds: requests and waits (sub-second to minutes), loads (seconds to many minutes).
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

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
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.durations: dict[str, _Histogram] = {}
        self.waits: dict[str, _Histogram] = {}
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.loads: dict[str, _Histogram] = {}
        self.swaps = 0
        self.load_failures: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._per_model: dict[str, tuple[_Histogram, _Histogram, tuple[str, str],
                                         tuple[str, str], tuple[str, str]]] = {}
        self._read_state = read_state
        self._state_names = tuple(model_states)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))

    def request(self, model: str, path: str, status: int, duration_s: float, wait_s: float,
                input_tokens: int, output_tokens: int, cached_tokens: int) -> None:
        # Runs for every request (in the recorder's batches): one lookup per model for its
        # histograms and token keys, the status kept as an int until a scrape.
        self.requests[(model, path, status)] += 1
        per_model = self._per_model.get(model)
        if per_model is None:
            per_model = self._per_model[model] = (
                _histogram(self.durations, model, REQUEST_BUCKETS),
                _histogram(self.waits, model, REQUEST_BUCKETS),
                (model, "input"), (model, "output"), (model, "cached"))
        durations, waits, input_key, output_key, cached_key = per_model
        durations.observe(duration_s)
        waits.observe(wait_s)
        tokens = self.tokens
        if input_tokens > 0:
            tokens[input_key] += input_tokens
        if output_tokens > 0:
            tokens[output_key] += output_tokens
        if cached_tokens > 0:
            tokens[cached_key] += cached_tokens

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
