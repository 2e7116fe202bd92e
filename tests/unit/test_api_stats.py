"""What the UI charts: container readings, llama-swap's histograms and stats fields, the
status filter of the activity list, /proc readings, and the monitor's timeline and samples."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from llamaswap_docker.api import readings
from llamaswap_docker.api.monitor import Monitor
from llamaswap_docker.lifecycle import ModelRuntime, ModelState
from llamaswap_docker.observe import Metrics
from llamaswap_docker.observe.activity import ActivityRow

# -- container readings ------------------------------------------------------------------------

#: A sample of the Engine API's stats stream on cgroup v1 (read on this project's engine).
CGROUP_V1 = {
    "read": "2026-12-07T02:08:21.737306369Z",
    "pids_stats": {"current": 2},
    "blkio_stats": {"io_service_bytes_recursive": [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Write", "value": 8192},
        {"major": 8, "minor": 0, "op": "Total", "value": 12288}]},
    "cpu_stats": {"cpu_usage": {"total_usage": 5487825468, "percpu_usage": [3521420222, 1966405246]},
                  "system_cpu_usage": 3959370000000, "online_cpus": 2},
    "precpu_stats": {"cpu_usage": {"total_usage": 4948510806, "percpu_usage": [2982105560, 1966405246]},
                     "system_cpu_usage": 3957360000000, "online_cpus": 2},
    "memory_stats": {"usage": 152207360, "stats": {"total_inactive_file": 75853824, "cache": 95444992},
                     "limit": 25276182528},
    "networks": {"eth0": {"rx_bytes": 586, "tx_bytes": 10}, "eth1": {"rx_bytes": 14, "tx_bytes": 5}},
}


def test_a_cgroup_v1_reading_gives_docker_stats_cpu_and_memory() -> None:
    reading = readings.container_reading(CGROUP_V1)
    # (5487825468 - 4948510806) / (3959370000000 - 3957360000000) * 2 CPUs * 100
    assert reading["cpu_percent"] == pytest.approx(53.66, abs=0.01)
    assert reading["memory_bytes"] == 152207360 - 75853824  # the droppable page cache left out
    assert reading["memory_limit_bytes"] == 25276182528
    assert reading["memory_percent"] == pytest.approx(0.3, abs=0.01)
    assert (reading["net_rx_bytes"], reading["net_tx_bytes"]) == (600, 15)
    assert (reading["block_read_bytes"], reading["block_write_bytes"]) == (4096, 8192)
    assert reading["pids"] == 2 and reading["online_cpus"] == 2
    assert reading["read"] == CGROUP_V1["read"]


def test_a_cgroup_v2_reading_leaves_out_inactive_file_and_counts_cpus_without_online_cpus() -> None:
    raw = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000, "percpu_usage": [1, 2, 3, 4]},
                         "system_cpu_usage": 20_000},
           "precpu_stats": {"cpu_usage": {"total_usage": 2_000}, "system_cpu_usage": 10_000},
           "memory_stats": {"usage": 1000, "stats": {"inactive_file": 400}, "limit": 4000},
           "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 7}, {"op": "write", "value": 9}]}}
    reading = readings.container_reading(raw)
    assert reading["cpu_percent"] == pytest.approx(1000 / 10_000 * 4 * 100)
    assert reading["memory_bytes"] == 600 and reading["memory_percent"] == 15.0
    assert (reading["block_read_bytes"], reading["block_write_bytes"]) == (7, 9)
    assert (reading["net_rx_bytes"], reading["net_tx_bytes"]) == (0, 0)


def test_the_first_reading_of_a_stream_has_no_cpu_share_yet() -> None:
    # The engine's first sample has an empty precpu_stats: no interval to measure over.
    raw = {**CGROUP_V1, "precpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0}}
    assert readings.container_reading(raw)["cpu_percent"] == 0.0
    assert readings.container_reading({})["memory_percent"] is None  # a paused engine's blank


# -- llama-swap's histogram and stats fields ------------------------------------------------------


def test_the_histogram_is_llama_swaps_sturges_bins_and_interpolated_percentiles() -> None:
    histogram = readings.histogram(float(v) for v in range(1, 11))
    # ceil(log2(10)) + 1 = 5 bins of (10 - 1) / 5 each; the maximum falls in the last.
    assert histogram == {"bins": [2, 2, 2, 2, 2], "min": 1.0, "max": 10.0, "binSize": 1.8,
                         "p50": 5.5, "p95": pytest.approx(9.55), "p99": pytest.approx(9.91)}


@pytest.mark.parametrize(("count", "bins"), [(2, 5), (100, 8), (1000, 11), (300_000, 20)])
def test_the_histogram_keeps_between_5_and_20_bins(count: int, bins: int) -> None:
    histogram = readings.histogram(float(v % 997) for v in range(count))
    assert len(histogram["bins"]) == bins and sum(histogram["bins"]) == count


def test_equal_values_make_one_bin_and_no_values_no_histogram() -> None:
    assert readings.histogram([3.0, 3.0, 3.0]) == {"bins": [3], "min": 3.0, "max": 3.0, "binSize": 0,
                                                   "p50": 3.0, "p95": 3.0, "p99": 3.0}
    assert readings.histogram([]) is None


def _row(row_id: int, model: str, prompt: float, generation: float, tokens: int = 10,
         status: int = 200) -> ActivityRow:
    return ActivityRow(row_id, time.time(), model, "/v1/chat/completions", status, "application/json",
                       0, 100, tokens, tokens, -1, prompt, generation)


def test_stats_fields_leave_out_unreported_speeds_and_tokens_as_llama_swap_does() -> None:
    rows = [_row(1, "a", 100.0, 20.0), _row(2, "a", -1.0, 0.0, tokens=-1), _row(3, "b", 50.0, 10.0)]
    stats = readings.activity_stats(rows)
    assert stats["total_requests"] == 3
    assert (stats["total_input_tokens"], stats["total_output_tokens"], stats["total_cache_tokens"]) == (20, 20, 0)
    assert sum(stats["prompt_histogram"]["bins"]) == 2 and sum(stats["gen_histogram"]["bins"]) == 2
    by_model = readings.histograms_by_model(rows)
    assert by_model["a"]["gen_histogram"]["bins"] == [1] and by_model["b"]["prompt_histogram"]["p50"] == 50.0
    assert readings.activity_stats([])["gen_histogram"] is None


@pytest.mark.parametrize(("text", "kept", "left_out"), [
    ("ok", [200, 299, 399], [400, 499, 500]), ("error", [400, 499, 503], [200, 302]),
    ("4xx", [400, 404, 499], [399, 500]), ("5xx", [500, 503], [499, 200]), ("503", [503], [500, 502]),
    (" ERROR ", [500], [200]),
])
def test_the_status_filter_keeps_what_it_names(text: str, kept: list[int], left_out: list[int]) -> None:
    low, high = readings.status_range(text)
    assert all(low <= s < high for s in kept) and not any(low <= s < high for s in left_out)


@pytest.mark.parametrize("text", ["bad", "6xx", "42", "99", "2x"])
def test_an_unknown_status_filter_is_refused_with_the_choices(text: str) -> None:
    with pytest.raises(ValueError, match="use ok, error, 2xx, 4xx, 5xx"):
        readings.status_range(text)
    assert readings.status_range("") is None and readings.status_range(None) is None


# -- /proc ---------------------------------------------------------------------------------------


def test_host_readings_from_proc_files() -> None:
    before = readings.cpu_times("cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 10 0 10 80 0 0 0 0 0 0\n"
                                "cpu1 0 0 0 100 0 0 0 0 0 0\nintr 1 2 3\n")
    after = readings.cpu_times("cpu  60 0 10 130 0 0 0 0 0 0\ncpu0 60 0 10 80 0 0 0 0 0 0\n"
                               "cpu1 0 0 0 150 0 0 0 0 0 0\n")
    assert readings.cpu_percents(before, after) == [100.0, 0.0]
    memory = readings.memory_info("MemTotal:       2097152 kB\nMemFree:         524288 kB\n"
                                  "MemAvailable:   1048576 kB\nSwapTotal: 1024 kB\nSwapFree: 0 kB\n")
    assert memory == {"mem_total_mb": 2048, "mem_used_mb": 1024, "mem_free_mb": 512,
                      "swap_total_mb": 1, "swap_used_mb": 1}
    assert readings.load_average("0.50 1.25 2.00 1/234 5678\n") == {
        "load_avg_1": 0.5, "load_avg_5": 1.25, "load_avg_15": 2.0}
    net = readings.net_io("Inter-|   Receive\n face |bytes    packets\n"
                          "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n"
                          "  eth0: 2000 10 0 0 0 0 0 0 3000 12 0 0 0 0 0 0\n")
    assert net == [{"name": "eth0", "bytes_recv": 2000, "bytes_sent": 3000}]


# -- the monitor ------------------------------------------------------------------------------------


def _monitor(*model_ids: str) -> tuple[Monitor, dict[str, ModelRuntime], Metrics]:
    runtimes = {m: ModelRuntime(m) for m in model_ids}
    metrics = Metrics(lambda: None, [s.value for s in ModelState])  # type: ignore[arg-type, return-value]
    return Monitor(SimpleNamespace(models=runtimes), metrics), runtimes, metrics  # type: ignore[arg-type]


def _change(runtime: ModelRuntime, state: ModelState, at: float) -> None:
    """``runtime.state = state`` as if it happened at monotonic time ``at``."""
    runtime.state = state
    runtime.transitions[-1] = (at, state)


def test_the_timeline_has_a_segment_per_state_starting_when_the_state_began() -> None:
    monitor, runtimes, _ = _monitor("a", "b")
    wall, mono = 1000.0, 50.0
    _change(runtimes["a"], ModelState.STARTING, mono)
    monitor.observe_states(wall, mono)
    _change(runtimes["a"], ModelState.READY, mono + 1.5)
    monitor.observe_states(wall + 2, mono + 2)  # seen half a second after it happened
    _change(runtimes["a"], ModelState.STOPPED, mono + 10)
    _change(runtimes["b"], ModelState.FAILED, mono + 10)
    monitor.observe_states(wall + 10, mono + 10)
    segments = monitor.timeline()
    assert [(s["model"], s["state"], s["start"], s["end"]) for s in segments] == [
        ("a", "starting", 1000.0, 1001.5), ("a", "ready", 1001.5, 1010.0), ("b", "failed", 1010.0, None)]
    assert [s["state"] for s in monitor.timeline(after=1005.0)] == ["ready", "failed"]


def test_states_shorter_than_a_look_are_all_on_the_timeline() -> None:
    monitor, runtimes, _ = _monitor("a")
    _change(runtimes["a"], ModelState.STARTING, 10.0)
    monitor.observe_states(100.0, 10.0)
    # Ready at 10.1, evicted at 10.2, stopped at 10.22: all before the next look at 10.25.
    _change(runtimes["a"], ModelState.READY, 10.1)
    _change(runtimes["a"], ModelState.STOPPING, 10.2)
    _change(runtimes["a"], ModelState.STOPPED, 10.22)
    monitor.observe_states(100.25, 10.25)
    assert [(s["state"], s["start"], s["end"]) for s in monitor.timeline()] == [
        ("starting", 100.0, pytest.approx(100.1)), ("ready", pytest.approx(100.1), pytest.approx(100.2)),
        ("stopping", pytest.approx(100.2), pytest.approx(100.22))]


def test_a_model_reloaded_away_closes_its_segment() -> None:
    monitor, runtimes, _ = _monitor("a")
    _change(runtimes["a"], ModelState.READY, 1.0)
    monitor.observe_states(10.0, 1.0)
    del runtimes["a"]
    monitor.observe_states(20.0, 11.0)
    assert monitor.timeline() == [{"model": "a", "state": "ready", "start": 10.0, "end": 20.0}]


def test_a_sample_has_requests_per_second_the_worst_lag_and_each_new_load() -> None:
    monitor, runtimes, metrics = _monitor("a")
    monitor.sample(100.0, 10.0, 1.0)  # the first: the baseline
    metrics.requests_ended([("a", "/v1/chat/completions", 200, 0.1, 0.0, 1, 1, -1)] * 6)
    metrics.load("a", 2.5)
    metrics.load_failed("a", "health_timeout")
    runtimes["a"].in_flight = 3
    for lag in (0.001, 0.040, 0.004):
        monitor.observe_lag(lag)
    monitor.stats_streams = 1
    monitor.sample(102.0, 12.0, 1.5)
    sample = monitor.proxy_samples[-1]
    assert sample["requests_per_second"] == 3.0
    assert sample["cpu_percent"] == 25.0  # half a CPU second over two seconds
    assert sample["loop_lag_ms"] == 40.0 and sample["loop_lag_mean_ms"] == 15.0
    assert sample["in_flight"] == 3 and sample["stats_streams"] == 1 and sample["rss_bytes"] > 0
    assert monitor.loads_of("a") == [{"model": "a", "time": 102.0, "ok": True, "seconds": 2.5},
                                     {"model": "a", "time": 102.0, "ok": False, "seconds": None}]
    monitor.sample(103.0, 13.0, 1.5)  # nothing new: no load noted twice, the lag starts over
    assert len(monitor.loads) == 2 and monitor.proxy_samples[-1]["loop_lag_ms"] == 0.0
