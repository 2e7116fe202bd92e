"""Tokens for every stream: a streamed OpenAI-style request that did not ask for usage is sent
with ``stream_options.include_usage``, and the usage chunk that brings is held back from the
client (its stream reads as without the proxy) while the activity row gets the counts. A
client that asked gets the server's bytes unchanged.

The upstream here behaves as vLLM does (and images/fake-upstream in ``--mode vllm``): a usage
chunk only when asked, no llama-server timings.
"""

from __future__ import annotations

import json

import orjson
import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.proxy.routing import parse_model_request, rewrite_body
from llamaswap_docker.proxy.stream_usage import (
    UsageHoldBack,
    filters_name_stream_options,
    usage_options,
)
from tests.unit.hop_fakes import Client, Hop, Upstream, chunk, run

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def vllm_events(with_usage: bool, newline: bytes = b"\n") -> list[bytes]:
    """A vLLM-style chat stream, one SSE event per item."""
    end = newline * 2
    events = [b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk",
                                        "choices": [{"index": 0, "delta": {"content": t}}]}) + end
              for t in ("a", "b", "c")]
    events.append(b"data: " + orjson.dumps({"id": "c1", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop"}]}) + end)
    if with_usage:
        events.append(b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk",
                                                "choices": [], "usage": USAGE}) + end)
    events.append(b"data: [DONE]" + end)
    return events


# -- what is asked ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "payload", "options"), [
    ("/v1/chat/completions", {"stream": True}, {"include_usage": True}),
    ("/v1/completions", {"stream": True}, {"include_usage": True}),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"continuous_usage_stats": True}},
     {"continuous_usage_stats": True, "include_usage": True}),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": False}},
     {"include_usage": True}),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True}}, None),
    ("/v1/chat/completions", {"stream": True, "stream_options": "yes"}, None),
    ("/v1/chat/completions", {"stream": False}, None),
    ("/v1/chat/completions", {}, None),
    ("/v1/messages", {"stream": True}, None),
    ("/v1/responses", {"stream": True}, None),
])
def test_usage_is_asked_for_openai_streams_that_did_not_ask(path, payload, options) -> None:
    assert usage_options(path, payload) == options


@pytest.mark.parametrize("filters", [
    {"stripParams": "stream_options, temperature"},
    {"setParams": {"stream_options": {"include_usage": False}}},
    {"setParams": {"stream_options?": {}}},
    {"setParamsByID": {"alias": {"stream_options": {}}}},
])
def test_filters_that_name_stream_options_keep_the_hop_away(filters) -> None:
    config = load_config_text(json.dumps({"models": {"m": {"image": "x", "filters": filters}}}))
    assert filters_name_stream_options(config.models["m"].filters)


def test_filters_that_do_not_name_it_let_the_hop_ask() -> None:
    config = load_config_text('models: {m: {image: x, filters: {stripParams: "top_k"}}}')
    assert not filters_name_stream_options(config.models["m"].filters)


def test_rewrite_body_sets_extra_keys_after_the_filters() -> None:
    config = load_config_text("models: {m: {image: x, useModelName: served, "
                              "filters: {setParams: {top_k: 5}}}}")
    request = parse_model_request(b'{"model":"m","stream":true}', "application/json", None)
    body = json.loads(rewrite_body(request, config.models["m"],
                                   extra={"stream_options": {"include_usage": True}}))
    assert body == {"model": "served", "stream": True, "top_k": 5,
                    "stream_options": {"include_usage": True}}


# -- what is held back --------------------------------------------------------------------------


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_the_usage_chunk_is_held_back_wherever_the_stream_is_cut(newline: bytes) -> None:
    sent = b"".join(vllm_events(True, newline))
    expected = b"".join(vllm_events(False, newline))
    for cut in range(1, len(sent)):
        for second in (cut, min(cut + 37, len(sent))):
            hold = UsageHoldBack()
            out = hold.chunk(sent[:cut]) + hold.chunk(sent[cut:second]) + hold.chunk(
                sent[second:]) + hold.rest()
            assert out == expected, (cut, second)
            assert hold.held


def test_a_stream_without_a_usage_chunk_passes_unchanged_and_complete_events_at_once() -> None:
    events = vllm_events(False)
    hold = UsageHoldBack()
    assert [hold.chunk(event) for event in events] == events
    assert hold.rest() == b"" and not hold.held


def test_usage_in_chunks_with_choices_is_left_alone() -> None:
    # OpenAI's own stream puts "usage": null on every chunk once asked; vLLM's
    # continuous_usage_stats puts counts on every chunk: only the usage-only chunk goes.
    with_choices = (b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}\n\n'
                    b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}\n\n')
    usage_only = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    hold = UsageHoldBack()
    assert hold.chunk(with_choices + usage_only + b"data: [DONE]\n\n") == (
        with_choices + b"data: [DONE]\n\n")


def test_an_event_cut_across_chunks_waits_for_its_end() -> None:
    hold = UsageHoldBack()
    event = vllm_events(False)[0]
    assert hold.chunk(event + event[:9]) == event
    assert hold.chunk(event[9:]) == event


# -- through the hop ----------------------------------------------------------------------------


def vllm_like(events: list[bytes]):
    """An upstream that answers as vLLM does: the usage chunk only when asked."""
    async def script(request, reader, writer) -> bool:
        body = json.loads(request.partition(b"\r\n\r\n")[2])
        asked = (body.get("stream_options") or {}).get("include_usage")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for event in events:
            if asked or b'"choices":[]' not in event:
                writer.write(chunk(event))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True
    return script


STREAMED = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()


def test_a_stream_that_did_not_ask_is_asked_for_usage_and_the_chunk_is_held_back() -> None:
    async def scenario() -> None:
        upstream = Upstream(vllm_like(vllm_events(True)))
        async with upstream as url:
            hop = Hop(url)
            client = Client(body=STREAMED)
            await hop.request(client)
            [sent] = upstream.bodies
            assert json.loads(sent)["stream_options"] == {"include_usage": True}
            assert client.body == b"".join(vllm_events(False))
            [(_, status, trace)] = hop.recorder.rows
            assert status == 200 and trace.scanner is not None and trace.scanner.usage
            assert trace.scanner.usage.tokens[:2] == (7, 3)
            await hop.close()
    run(scenario)


def test_events_cut_across_the_servers_chunks_reach_the_client_whole_without_usage() -> None:
    stream = b"".join(vllm_events(True))
    pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]

    async def scenario() -> None:
        upstream = Upstream(vllm_like(pieces))
        async with upstream as url:
            hop = Hop(url)
            client = Client(body=STREAMED)
            await hop.request(client)
            assert client.body == b"".join(vllm_events(False))
            await hop.close()
    run(scenario)


def test_a_stream_that_asked_itself_gets_the_servers_bytes_unchanged() -> None:
    asked = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                        "messages": []}).encode()

    async def scenario() -> None:
        upstream = Upstream(vllm_like(vllm_events(True)))
        async with upstream as url:
            hop = Hop(url)
            client = Client(body=asked)
            await hop.request(client)
            assert upstream.bodies == [asked]  # the very bytes the client sent
            assert client.body == b"".join(vllm_events(True))
            await hop.close()
    run(scenario)


@pytest.mark.parametrize("config", [
    'models: {m: {image: x, filters: {stripParams: "stream_options"}}}',
])
def test_a_model_whose_filters_strip_stream_options_is_not_asked(config: str) -> None:
    async def scenario() -> None:
        upstream = Upstream(vllm_like(vllm_events(True)))
        async with upstream as url:
            hop = Hop(url, config)
            client = Client(body=STREAMED)
            await hop.request(client)
            assert "stream_options" not in json.loads(upstream.bodies[0])
            assert client.body == b"".join(vllm_events(False))
            await hop.close()
    run(scenario)


def test_a_request_that_does_not_stream_is_sent_as_it_came() -> None:
    plain = json.dumps({"model": "m", "messages": []}).encode()

    async def answer(request, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: 2\r\n\r\n{}")
        return True

    async def scenario() -> None:
        upstream = Upstream(answer)
        async with upstream as url:
            hop = Hop(url)
            await hop.request(Client(body=plain))
            assert upstream.bodies == [plain]
            await hop.close()
    run(scenario)


def test_a_whole_stream_with_a_length_loses_the_chunk_and_keeps_a_true_length() -> None:
    stream = b"".join(vllm_events(True))

    async def whole(request, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(stream), stream))
        return True

    async def scenario() -> None:
        async with Upstream(whole) as url:
            hop = Hop(url)
            client = Client(body=STREAMED)
            await hop.request(client)
            assert client.body == b"".join(vllm_events(False))
            [start] = [m for m in client.sent if m["type"] == "http.response.start"]
            assert dict(start["headers"])[b"content-length"] == str(len(client.body)).encode()
            await hop.close()
    run(scenario)
