"""Activity, stats, captures, live events and Prometheus metrics, against real model servers."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest

from llamaswap_docker.logs import logger
from tests.conftest import chat, fake_model, llama_model

NO_EOS = {"ignore_eos": True}


def activity(url: str, **params) -> dict:
    response = httpx.get(f"{url}/api/metrics/activity", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def prometheus(url: str) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_for(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_activity_rows_and_metrics_match_what_llama_server_reported(start_proxy, tiny_model_dir) -> None:
    proxy = start_proxy({"tiny": llama_model(tiny_model_dir)})
    plain = chat(proxy.url, "tiny", max_tokens=8, **NO_EOS)
    assert plain.status_code == 200
    timings = plain.json()["timings"]

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
            "stream": True, "stream_options": {"include_usage": True}, **NO_EOS}
    streamed_timings = None
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {") and '"timings"' in line:
                streamed_timings = json.loads(line[6:])["timings"]
    assert streamed_timings is not None

    rows = activity(proxy.url)["data"]
    assert [row["req_path"] for row in rows] == ["/v1/chat/completions"] * 2
    newest, oldest = rows
    for row, reported in ((oldest, timings), (newest, streamed_timings)):
        assert row["model"] == "tiny" and row["resp_status_code"] == 200
        tokens = row["tokens"]
        assert tokens["input_tokens"] == reported["prompt_n"]
        assert tokens["output_tokens"] == reported["predicted_n"]
        assert tokens["tokens_per_second"] == round(reported["predicted_per_second"], 2)
        assert tokens["prompt_per_second"] == round(reported["prompt_per_second"], 2)
        assert row["duration_ms"] > 0 and row["wait_ms"] >= 0
    assert oldest["wait_ms"] > newest["wait_ms"], "the first request waited for the cold start"
    assert newest["resp_content_type"].startswith("text/event-stream")

    metrics = prometheus(proxy.url)
    labels = 'model="tiny",path="/v1/chat/completions",status="200"'
    assert metrics[f"llamaswap_requests_total{{{labels}}}"] == 2
    output = timings["predicted_n"] + streamed_timings["predicted_n"]
    assert metrics['llamaswap_tokens_total{kind="output",model="tiny"}'] == output
    assert metrics['llamaswap_request_duration_seconds_count{model="tiny"}'] == 2
    assert metrics['llamaswap_model_load_seconds_count{model="tiny"}'] == 1
    assert metrics['llamaswap_model_state{model="tiny",state="ready"}'] == 1
    assert metrics['llamaswap_model_state{model="tiny",state="stopped"}'] == 0
    assert metrics['llamaswap_swaps_total'] == 1

    stats = httpx.get(f"{proxy.url}/api/metrics/stats", timeout=10).json()
    assert stats["totals"]["requests"] == 2 and stats["totals"]["output_tokens"] == output
    assert stats["models"]["tiny"]["requests"] == 2
    assert stats["models"]["tiny"]["tokens_per_second"]["p50"] > 0
    # llama-swap's list, oldest first.
    assert [r["id"] for r in httpx.get(f"{proxy.url}/api/metrics").json()] == [oldest["id"], newest["id"]]


def test_openai_usage_is_recorded_when_there_are_no_timings(start_proxy) -> None:
    proxy = start_proxy({"vllm": fake_model("--mode", "vllm", "--tokens", "5")})
    response = chat(proxy.url, "vllm")
    usage = response.json()["usage"]
    [row] = activity(proxy.url)["data"]
    assert row["tokens"]["input_tokens"] == usage["prompt_tokens"]
    assert row["tokens"]["output_tokens"] == usage["completion_tokens"] > 0


def test_activity_filters_and_pages(start_proxy) -> None:
    proxy = start_proxy({"a": fake_model(), "b": fake_model()},
                        groups={"both": {"swap": False, "exclusive": False, "members": ["a", "b"]}})
    for model in "abab":
        assert chat(proxy.url, model).status_code == 200
    everything = activity(proxy.url)
    assert everything["total"] == 4
    only_a = activity(proxy.url, model="a")
    assert only_a["total"] == 2 and {r["model"] for r in only_a["data"]} == {"a"}
    page = activity(proxy.url, limit=1, offset=1)
    assert page["total"] == 4 and [r["id"] for r in page["data"]] == [everything["data"][1]["id"]]
    later = activity(proxy.url, since=time.time() + 60)
    assert later["total"] == 0
    assert httpx.get(f"{proxy.url}/api/metrics/activity", params={"limit": 0}).status_code == 400


def test_a_client_that_leaves_is_recorded_as_499(start_proxy) -> None:
    proxy = start_proxy({"slow": fake_model("--tokens", "100", "--token-rate", "20")})
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=60) as stream:
        next(stream.iter_lines())
    rows = wait_for(lambda: activity(proxy.url)["data"])
    assert rows[0]["resp_status_code"] == 499
    assert prometheus(proxy.url)[
        'llamaswap_requests_total{model="slow",path="/v1/chat/completions",status="499"}'] == 1


def test_captures_keep_bodies_with_credentials_redacted(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model("--model-name", "fake")}, captureBuffer=1)
    response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": "Bearer secret-token", "X-Trace": "t1"},
                          json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    [row] = activity(proxy.url)["data"]
    assert row["has_capture"] is True
    captured = httpx.get(f"{proxy.url}/api/captures/{row['id']}", timeout=10).json()
    assert json.loads(captured["req_body"])["messages"][0]["content"] == "hi"
    assert json.loads(captured["resp_body"]) == response.json()
    assert captured["req_headers"]["authorization"] == "[redacted]"
    assert captured["req_headers"]["x-trace"] == "t1"
    assert "secret-token" not in json.dumps(captured)
    missing = httpx.get(f"{proxy.url}/api/captures/999", timeout=10)
    assert missing.status_code == 404 and "no capture 999" in missing.text


def test_captures_are_off_by_default(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert chat(proxy.url, "fake").status_code == 200
    [row] = activity(proxy.url)["data"]
    assert row["has_capture"] is False
    response = httpx.get(f"{proxy.url}/api/captures/{row['id']}", timeout=10)
    assert response.status_code == 404 and "captureBuffer" in response.text


class EventReader:
    """``GET /api/events`` read in a thread, every event kept in order."""

    def __init__(self, url: str) -> None:
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        assert self._connected.wait(30)

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", f"{url}/api/events", timeout=None) as response:
                self.headers = response.headers
                for line in response.iter_lines():
                    self._connected.set()
                    if self._stop.is_set():
                        return
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass  # the proxy shut down under the reader at the end of the test

    def of(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == kind]

    def close(self) -> None:
        self._stop.set()


def test_events_across_a_swap_arrive_in_order(start_proxy) -> None:
    proxy = start_proxy({"a": fake_model("--model-name", "a"), "b": fake_model("--model-name", "b")})
    assert chat(proxy.url, "a").status_code == 200
    reader = EventReader(proxy.url)
    try:
        first = wait_for(lambda: reader.of("modelStatus"))
        assert {m["id"]: m["state"] for m in first[0]["models"]} == {"a": "ready", "b": "stopped"}
        assert reader.headers["x-accel-buffering"] == "no"
        snapshot = reader.of("inflight")[0]
        assert (snapshot["op"], snapshot["requests"], snapshot["total"]) == ("snapshot", [], 0)
        assert chat(proxy.url, "b").status_code == 200
        assert wait_for(lambda: reader.of("activity"))
    finally:
        reader.close()

    def states(model: str) -> list[str]:
        seen = [next(m["state"] for m in e["models"] if m["id"] == model)
                for e in reader.of("modelStatus")]
        return [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]

    assert states("a") == ["ready", "stopping", "stopped"]
    assert states("b") == ["stopped", "starting", "ready"]
    order = [(e["type"], e["data"].get("phase") or e["data"].get("op")) for e in reader.events
             if e["type"] in ("swap", "inflight", "activity")]
    assert order == [("inflight", "snapshot"), ("swap", "start"), ("swap", "end"),
                     ("inflight", "upsert"), ("inflight", "remove"), ("activity", None)]
    start, end = reader.of("swap")
    assert start["model"] == "b" and start["evicted"] == ["a"] and start["wake"] is False
    assert end["model"] == "b" and end["ok"] is True and end["seconds"] > 0
    [row] = reader.of("activity")
    assert row["model"] == "b" and row["resp_status_code"] == 200 and row["wait_ms"] > 0
    assert any("model ready" in e["data"] for e in reader.of("logData"))


def test_a_new_event_reader_gets_every_status_and_the_others_no_repeat(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model()})
    first = EventReader(proxy.url)
    try:
        assert wait_for(lambda: first.of("modelStatus"))
        second = EventReader(proxy.url)
        try:
            [status] = wait_for(lambda: second.of("modelStatus"))
            assert [m["state"] for m in status["models"]] == ["stopped"]
        finally:
            second.close()
        # Events reach a reader in the order they were published: once a line logged after the
        # second connected has reached the first, so has anything that connect sent it.
        marker = f"after-second-connect-{time.monotonic_ns()}"
        logger.info(marker)
        assert wait_for(lambda: any(marker in e["data"] for e in first.of("logData")))
        assert len(first.of("modelStatus")) == 1
    finally:
        first.close()


def test_a_slow_event_reader_is_dropped_from_not_waited_for(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model()})
    with httpx.stream("GET", f"{proxy.url}/api/events", timeout=30) as response:
        next(response.iter_lines())
        # This reader stops reading while the proxy serves on; nothing waits for it.
        started = time.monotonic()
        for _ in range(30):
            assert chat(proxy.url, "fake").status_code == 200
        assert time.monotonic() - started < 30


def test_metrics_and_activity_need_the_api_key_like_the_rest(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model()}, apiKeys=["k1"])
    for path in ("/metrics", "/api/metrics/activity", "/api/metrics/stats", "/api/events"):
        assert httpx.get(f"{proxy.url}{path}", timeout=10).status_code == 401, path
    ok = httpx.get(f"{proxy.url}/metrics", headers={"Authorization": "Bearer k1"}, timeout=10)
    assert ok.status_code == 200 and "llamaswap_requests_total" in ok.text
    assert re.search(r"^# TYPE llamaswap_model_state gauge$", ok.text, re.M)


def test_activity_survives_a_restart_in_the_sqlite_store(proxy_processes, tmp_path) -> None:
    store = tmp_path / "activity.db"
    first = proxy_processes({"fake": fake_model()}, store={"path": str(store)})
    for _ in range(3):
        assert chat(first.url, "fake").status_code == 200
    before = activity(first.url)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    second = proxy_processes()
    assert activity(second.url) == before, "the rows come back from the store"
    assert chat(second.url, "fake").status_code == 200
    after = activity(second.url)
    assert after["total"] == 4 and after["data"][0]["id"] == before["data"][0]["id"] + 1


@pytest.mark.parametrize("limit", [2])
def test_metrics_max_in_memory_bounds_the_rows_kept(start_proxy, limit: int) -> None:
    proxy = start_proxy({"fake": fake_model()}, metricsMaxInMemory=limit)
    for _ in range(limit + 3):
        assert chat(proxy.url, "fake").status_code == 200
    rows = activity(proxy.url)
    assert rows["total"] == limit and rows["data"][0]["id"] == limit + 3
