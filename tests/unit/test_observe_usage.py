"""Token usage read from relayed bytes, and the trace/recorder bookkeeping around it."""

from __future__ import annotations

import asyncio
import json

import pytest

from llamaswap_docker.observe import (
    ActivityLog,
    Capture,
    CaptureBuffer,
    EventBus,
    Metrics,
    Recorder,
    StateReading,
    UsageScanner,
)
from llamaswap_docker.observe.usage import Usage, body_usage


def sse(*events: dict) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def test_llama_server_timings_win_over_usage() -> None:
    tokens = body_usage(json.dumps({
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
        "timings": {"prompt_n": 11, "predicted_n": 22, "cache_n": 3, "prompt_per_second": 100.5,
                    "predicted_per_second": 40.25, "prompt_ms": 110, "predicted_ms": 546},
    }).encode())
    # input, output, cached; prompt and generation tokens per second, ms; from timings
    assert tokens == (11, 22, 3, 100.5, 40.25, 656, True)


@pytest.mark.parametrize("timings_first", [True, False])
def test_timings_win_whether_llama_server_writes_them_before_or_after_usage(
        timings_first: bool) -> None:
    # Older llama-server sorts keys (timings before usage), newer keeps insertion order.
    usage = {"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    timings = {"timings": {"prompt_n": 5, "predicted_n": 6, "predicted_per_second": 7.5}}
    body = {"choices": [{"message": {"content": "x" * 9000}}],
            **({**timings, **usage} if timings_first else {**usage, "id": "c", **timings})}
    found = body_usage(json.dumps(body).encode())
    assert found is not None and found[-1]  # from the timings
    assert (found[0], found[1], found[4]) == (5, 6, 7.5)


def test_a_flat_usage_is_read_and_a_nested_one_falls_back_to_the_whole_body() -> None:
    flat = body_usage(b'{"choices":[{"text":"\\"usage\\": {"}],"usage":{"input_tokens":4,'
                      b'"output_tokens":5,"cache_read_input_tokens":2},"id":"m"}')
    assert flat is not None and flat[:3] == (4, 5, 2)
    nested = body_usage(json.dumps({"usage": {
        "input_tokens": 4, "cache_creation": {"ephemeral_5m_input_tokens": 0},
        "output_tokens": 5, "cache_read_input_tokens": 3}}).encode())
    assert nested is not None and nested[:3] == (4, 5, 3)


def test_openai_usage_with_cached_tokens() -> None:
    tokens = body_usage(json.dumps({"choices": [], "usage": {
        "prompt_tokens": 30, "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 16}}}).encode())
    assert tokens is not None and tokens[:3] == (30, 7, 16)


USAGE_SHAPES = {
    "openai": {"usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
    "openai cached": {"usage": {"prompt_tokens": 9, "completion_tokens": 4,
                                "prompt_tokens_details": {"cached_tokens": 6}}},
    "responses": {"usage": {"input_tokens": 9, "output_tokens": 4,
                            "input_tokens_details": {"cached_tokens": 5}}},
    "anthropic": {"usage": {"input_tokens": 9, "cache_read_input_tokens": 2,
                            "output_tokens": 4}},
    "vllm order": {"usage": {"prompt_tokens": 9, "completion_tokens": 4,
                             "prompt_tokens_details": None}, "prompt_logprobs": None},
    "timings before": {"timings": {"prompt_n": 7, "predicted_n": 3, "cache_n": 1},
                       "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    "timings after": {"usage": {"prompt_tokens": 9, "completion_tokens": 4}, "id": "x",
                      "timings": {"prompt_n": 7, "predicted_n": 3}},
    "timings, a key, usage": {"timings": {"prompt_n": 7, "predicted_n": 3, "prompt_ms": 5},
                              "id": "x", "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    "usage null": {"usage": None},
    "float counts": {"usage": {"prompt_tokens": 9.0, "completion_tokens": 4}},
}


@pytest.mark.parametrize("spacing", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
@pytest.mark.parametrize("ending", [b"", b"\n"], ids=["", "newline"])
@pytest.mark.parametrize("shape", USAGE_SHAPES)
def test_the_quick_reads_of_a_body_agree_with_parsing_it_whole(
        shape: str, spacing: tuple[str, str], ending: bytes) -> None:
    # Each shape a server sends, behind the answer's own fields, in the servers' spellings.
    document = {"id": "c", "choices": [{"message": {"content": "a \"usage\": {"}}],
                **USAGE_SHAPES[shape]}
    body = json.dumps(document, separators=spacing).encode() + ending
    whole = Usage()
    whole.absorb(document)
    assert body_usage(body) == whole.tokens


@pytest.mark.parametrize("cut", [1, 7, 20, 33, 60, 97])
def test_a_streamed_usage_split_anywhere_across_chunks_is_found(cut: int) -> None:
    body = sse({"choices": [{"delta": {"content": "hi"}}]},
               {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
    scanner = UsageScanner()
    for start in range(0, len(body), cut):
        scanner.chunk(body[start:start + cut])
    assert scanner.usage is not None
    assert (scanner.usage.input_tokens, scanner.usage.output_tokens) == (5, 9)


def test_anthropic_stream_input_at_start_output_at_end() -> None:
    scanner = UsageScanner()
    scanner.chunk(b"event: message_start\n" + sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}))
    scanner.chunk(b"event: message_delta\n" + sse(
        {"type": "message_delta", "usage": {"output_tokens": 40}}))
    assert scanner.usage is not None
    assert (scanner.usage.input_tokens, scanner.usage.output_tokens) == (12, 40)


def test_responses_api_usage_and_infill_lists() -> None:
    scanner = UsageScanner()
    scanner.chunk(sse({"type": "response.completed",
                       "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}}))
    assert scanner.usage is not None and scanner.usage.output_tokens == 4
    infill = body_usage(
        json.dumps([{"content": "a"}, {"timings": {"prompt_n": 2, "predicted_n": 6}}]).encode())
    assert infill is not None and infill[1] == 6


def test_no_usage_and_broken_json_say_nothing() -> None:
    for body in (b'{"choices": []}', b'{"usage": {"prompt_tokens": ', b"not json"):
        tokens = body_usage(body)
        assert tokens is None or tokens[:2] == (-1, -1)


def test_the_capture_buffer_keeps_the_newest_within_its_size() -> None:
    buffer = CaptureBuffer(100)
    for capture_id in range(5):
        assert buffer.add(Capture(capture_id, "/p", {}, b"x" * 20, {}, b"y" * 20))
    assert [i for i in range(5) if buffer.get(i) is not None] == [3, 4] and buffer.used == 80
    assert not buffer.add(Capture(9, "/p", {}, b"x" * 101, {}, b""))  # larger than the buffer


def recorder(captures: int = 0) -> Recorder:
    metrics = Metrics(lambda: StateReading({}, {}, {}), ["ready"])
    return Recorder(ActivityLog(10), metrics, EventBus(), CaptureBuffer(captures))


def test_a_large_json_answer_relayed_in_chunks_still_gives_its_usage() -> None:
    async def run() -> Recorder:
        rec = recorder()
        trace = rec.trace("/v1/embeddings")
        trace.status, trace.headers = 200, [(b"content-type", b"application/json")]
        body = json.dumps({"data": [{"embedding": [0.1] * 200_000}],
                           "usage": {"prompt_tokens": 8, "total_tokens": 8}}).encode()
        for start in range(0, len(body), 65536):
            trace.chunk(body[start:start + 65536])
        rec.finish(trace, "embed")
        rec.flush()
        return rec

    rec = asyncio.run(run())
    [row] = rec.activity.rows
    assert row.input_tokens == 8 and row.content_type == "application/json"


def test_upstream_paths_count_as_one_series() -> None:
    async def run() -> Recorder:
        rec = recorder()
        for path in ("/upstream/m/a", "/upstream/m/b", "/v1/chat/completions"):
            trace = rec.trace(path)
            trace.status = 200
            rec.finish(trace, "m")
        rec.flush()
        return rec

    rec = asyncio.run(run())
    assert dict(rec.metrics.requests) == {("m", "/upstream", 200): 2,
                                          ("m", "/v1/chat/completions", 200): 1}
    assert [row.path for row in rec.activity.rows][:2] == ["/upstream/m/a", "/upstream/m/b"]


def test_a_batch_is_counted_as_one_request_at_a_time_would_be() -> None:
    from bisect import bisect_left

    from llamaswap_docker.observe.prometheus import REQUEST_BUCKETS

    # Two models interleaved; durations on, between and above the bucket bounds; unreported
    # (-1), zero and nonsense (-5) token counts.
    durations = [0.0, 0.01, 0.0100001, 0.3, 600.0, 601.5, 2.5, 0.024]
    ended = [(model, "/v1/chat/completions" if i % 3 else "/upstream/x/y", 200 if i % 2 else 499,
              d, d / 2, i - 1, 2 * i - 1, -5 if i == 3 else -1) for model in ("a", "b")
             for i, d in enumerate(durations)]
    metrics = Metrics(lambda: StateReading({}, {}, {}), ["ready"])
    metrics.requests_ended(list(ended[:5]))
    metrics.requests_ended(list(ended[5:]))
    for model in ("a", "b"):
        mine = [e for e in ended if e[0] == model]
        for table, column in ((metrics.durations, 3), (metrics.waits, 4)):
            counts = [0] * (len(REQUEST_BUCKETS) + 1)
            for e in mine:
                counts[bisect_left(REQUEST_BUCKETS, e[column])] += 1
            assert table[model].counts == counts
            assert table[model].total == pytest.approx(sum(e[column] for e in mine))
        for kind, column in (("input", 5), ("output", 6)):
            assert metrics.tokens[(model, kind)] == sum(e[column] for e in mine if e[column] > 0)
        assert (model, "cached") not in metrics.tokens
        for path in ("/v1/chat/completions", "/upstream"):
            for status in (200, 499):
                assert metrics.requests[(model, path, status)] == sum(
                    1 for e in mine if e[2] == status and e[1].startswith(path))


def test_recording_off_keeps_nothing_of_any_request(monkeypatch) -> None:
    from llamaswap_docker.config import load_settings
    from llamaswap_docker.observe import RecordingOff

    monkeypatch.setenv("LLAMASWAP_RECORDING", "false")
    assert load_settings().recording is False

    async def run() -> Recorder:
        metrics = Metrics(lambda: StateReading({}, {}, {}), ["ready"])
        rec = RecordingOff(ActivityLog(10), metrics, EventBus(), CaptureBuffer(1 << 20))
        for path in ("/v1/chat/completions", "/v1/embeddings"):
            trace = rec.trace(path)
            trace.request([(b"authorization", b"Bearer secret")], b'{"model": "m"}')
            trace.status, trace.headers = 200, [(b"content-type", b"text/event-stream")]
            trace.chunk(b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n')
            trace.body(b'{"usage": {"prompt_tokens": 3}}')
            rec.finish(trace, "m")
        rec.flush()
        return rec

    rec = asyncio.run(run())
    assert rec.activity.rows == [] and not rec.metrics.requests and not rec.metrics.tokens
    assert rec.captures.get(1) is None


def test_a_full_event_queue_drops_and_counts_for_that_reader_only() -> None:
    bus = EventBus(limit=3)
    stalled, reading = bus.subscribe(), bus.subscribe()
    for n in range(10):
        bus.publish("activity", {"n": n})  # returns at once: nothing waits for a reader
        reading.queue.get_nowait()
    assert stalled.queue.qsize() == 3 and stalled.dropped == 7
    assert [stalled.queue.get_nowait()[1]["n"] for _ in range(3)] == [0, 1, 2]
    assert reading.dropped == 0 and reading.queue.empty()
    bus.publish("activity", {"n": 10})  # room again: the reader gets what comes next
    assert stalled.queue.get_nowait()[1]["n"] == 10
    stalled.close()
    assert bus.subscribers == {reading}
