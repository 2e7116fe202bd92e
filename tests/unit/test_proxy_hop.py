"""The hop's every way to end, in one process against a model server on a real socket: the
client leaving at each stage (mid-body, while its model starts, before the headers,
mid-stream), the server dying at each stage (before the headers, mid-body, mid-stream, while
starting), cuts from the in-flight registry. Whatever ends a request, it gives back its lease,
its wait and its in-flight entry, closes the upstream connection it did not finish (so the
server sees the cancel), and ends as one activity row with the status it ended with.

The real-engine versions of some of these live in tests/integration (test_proxy_surface,
test_deadlines, test_recovery); these take milliseconds.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from llamaswap_docker.errors import (
    ModelStartFailed,
    ModelStopped,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llamaswap_docker.observe import CLIENT_GONE
from tests.unit.hop_fakes import (
    Client,
    Hop,
    Upstream,
    chunk,
    json_reply,
    run,
    sse_head,
    until,
)

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                     "stream": True}).encode()
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'


async def answer(request, reader, writer) -> bool:
    writer.write(json_reply())
    return True


def test_a_small_answer_is_relayed_whole_and_everything_is_given_back() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url)
            client = Client(body=CHAT)
            await hop.request(client)
            assert (client.status, client.body, client.ended) == (200, b'{"ok":true}', True)
            assert hop.recorder.statuses == [200]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


# -- the client leaves -------------------------------------------------------------------------


def test_a_client_that_leaves_mid_body_takes_no_lease_and_is_not_recorded() -> None:
    async def scenario() -> None:
        async with upstream as url:
            hop = Hop(url)
            client = Client(parts=[CHAT[:10]], complete=False)
            request = hop.request(client)
            await until(lambda: not client._pending)  # the first part is read
            client.leave()
            await request  # ends quietly: nobody is left to answer
            assert client.sent == [] and upstream.requests == []
            assert hop.recorder.rows == []  # no model was named yet
            hop.assert_all_given_back()
            await hop.close()

    upstream = Upstream(answer)
    run(scenario)


def test_a_client_that_leaves_while_its_model_starts_leaves_the_queue() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url)
            hop.manager.stop("m")
            client = Client(body=CHAT)
            request = hop.request(client)
            await until(lambda: hop.manager.waiting == 1)
            client.leave()
            await request
            assert client.sent == []
            assert hop.recorder.statuses == [CLIENT_GONE]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_an_admission_that_races_the_client_leaving_is_given_back() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url)
            hop.manager.stop("m")
            client = Client(body=CHAT)
            request = hop.request(client)
            await until(lambda: hop.manager.waiting == 1)
            await asyncio.sleep(0.05)  # the client watch is on (WATCH_AFTER_S)
            hop.manager.start.set_result(None)  # admitted in the same turn as it leaves
            client.leave()
            await request
            assert hop.recorder.statuses in ([CLIENT_GONE], [200])
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_client_that_leaves_before_the_headers_cancels_the_upstream_request() -> None:
    async def scenario() -> None:
        upstream = Upstream.never_answering()
        async with upstream as url:
            hop = Hop(url)
            client = Client(body=CHAT)
            request = hop.request(client)
            await until(lambda: upstream.requests)
            client.leave()
            await request
            await until(lambda: upstream.closed_by_proxy == 1)  # the server saw the cancel
            assert client.sent == [] and hop.recorder.statuses == [CLIENT_GONE]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_client_that_leaves_mid_stream_cancels_the_upstream_request() -> None:
    upstream: Upstream

    async def stream_then_wait(request, reader, writer) -> bool:
        writer.write(sse_head() + chunk(EVENT))
        await upstream.wait_for_close(reader)
        return False

    async def scenario() -> None:
        nonlocal upstream
        upstream = Upstream(stream_then_wait)
        async with upstream as url:
            hop = Hop(url)
            client = Client(body=STREAM)
            request = hop.request(client)
            await until(lambda: EVENT in client.body)
            client.leave()
            await request
            await until(lambda: upstream.closed_by_proxy == 1)
            assert client.status == 200 and not client.ended
            assert hop.recorder.statuses == [CLIENT_GONE]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


# -- the server dies ---------------------------------------------------------------------------


async def die_at_once(request, reader, writer) -> bool:
    return False


async def die_mid_body(request, reader, writer) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: 100\r\n\r\n{\"partial\":")
    await writer.drain()
    return False


async def die_mid_large_body(request, reader, writer) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: 10000000\r\n\r\n" + b" " * 70000)
    await writer.drain()
    return False


async def die_mid_stream(request, reader, writer) -> bool:
    writer.write(sse_head() + chunk(EVENT))
    await writer.drain()
    return False


def test_a_server_that_dies_before_the_headers_is_a_502_and_its_container_is_checked() -> None:
    async def scenario() -> None:
        async with Upstream(die_at_once) as url:
            hop = Hop(url)
            with pytest.raises(UpstreamUnavailable, match="model 'm' did not answer"):
                await hop.request(Client(body=CHAT))
            assert hop.manager.failures_reported == 1
            assert hop.recorder.statuses == [502]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_server_that_refuses_connections_is_a_502() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            pass  # closed: nothing listens there now
        hop = Hop(url)
        with pytest.raises(UpstreamUnavailable, match="cannot connect"):
            await hop.request(Client(body=CHAT))
        assert hop.recorder.statuses == [502]
        hop.assert_all_given_back()
        await hop.close()
    run(scenario)


def test_a_server_that_dies_mid_small_body_is_a_502_before_anything_is_sent() -> None:
    async def scenario() -> None:
        async with Upstream(die_mid_body) as url:
            hop = Hop(url)
            client = Client(body=CHAT)
            with pytest.raises(UpstreamUnavailable, match="stopped answering mid-response"):
                await hop.request(client)
            assert client.sent == []
            assert hop.recorder.statuses == [502]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_server_that_dies_mid_large_body_leaves_a_broken_body_not_a_short_one() -> None:
    async def scenario() -> None:
        async with Upstream(die_mid_large_body) as url:
            hop = Hop(url)
            client = Client(body=CHAT)
            await hop.request(client)
            assert client.status == 200 and client.body and not client.ended
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


@pytest.mark.parametrize(("path", "framing"), [
    ("/v1/chat/completions", b"data: {\"error\""),
    ("/v1/messages", b"event: error\ndata: {\"type\": \"error\""),
])
def test_a_server_that_dies_mid_stream_ends_it_with_an_error_in_the_callers_dialect(
        path: str, framing: bytes) -> None:
    async def scenario() -> None:
        async with Upstream(die_mid_stream) as url:
            hop = Hop(url)
            client = Client(path, body=STREAM)
            await hop.request(client)
            assert client.status == 200 and client.ended
            events = client.body.split(b"\n\n")
            assert events[0] + b"\n\n" == EVENT
            assert events[1].startswith(framing) and b"stopped answering" in events[1]
            assert b"[DONE]" not in client.body
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_model_that_fails_to_start_is_raised_for_the_api_to_render() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url)
            hop.manager.stop("m")
            request = hop.request(Client(body=CHAT))
            await until(lambda: hop.manager.waiting == 1)
            hop.manager.start.set_exception(ModelStartFailed("model 'm' exited with code 1"))
            with pytest.raises(ModelStartFailed):
                await request
            assert hop.recorder.statuses == [502]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


LOADING = "models: {m: {image: x, sendLoadingState: true}}"


@pytest.mark.parametrize(("path", "done"), [("/v1/chat/completions", True)])
def test_a_failed_start_ends_a_loading_stream_in_band(path: str, done: bool) -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url, LOADING)
            hop.manager.stop("m")
            client = Client(path, body=STREAM)
            request = hop.request(client)
            await until(lambda: hop.manager.waiting == 1 and client.body)
            hop.manager.start.set_exception(ModelStartFailed("model 'm' exited with code 1"))
            await request
            assert client.status == 200 and client.ended
            assert b"reasoning_content" in client.body and b"exited with code 1" in client.body
            assert client.body.endswith(b"data: [DONE]\n\n") is done
            assert hop.recorder.statuses == [502]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_loading_stream_goes_on_with_the_models_own_stream() -> None:
    async def stream(request, reader, writer) -> bool:
        writer.write(sse_head() + chunk(EVENT) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True

    async def scenario() -> None:
        async with Upstream(stream) as url:
            hop = Hop(url, LOADING)
            hop.manager.stop("m")
            client = Client(body=STREAM)
            request = hop.request(client)
            await until(lambda: client.body)
            hop.manager.start.set_result(None)
            await request
            assert client.ended and client.body.endswith(EVENT + b"data: [DONE]\n\n")
            assert b"Model m ready" in client.body
            assert hop.recorder.statuses == [200]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_client_that_leaves_a_loading_stream_leaves_the_queue() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url, LOADING)
            hop.manager.stop("m")
            client = Client(body=STREAM)
            request = hop.request(client)
            await until(lambda: hop.manager.waiting == 1 and client.body)
            client.leave()
            await request
            assert client.status == 200 and not client.ended
            assert hop.recorder.statuses == [CLIENT_GONE]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_no_response_headers_within_the_models_limit_is_a_504_and_a_cancel() -> None:
    async def scenario() -> None:
        upstream = Upstream.never_answering()
        async with upstream as url:
            hop = Hop(url, "models: {m: {image: x, timeouts: {responseHeader: 0.05}}}")
            with pytest.raises(UpstreamTimeout, match=r"timeouts.responseHeader \(0.05 s\)"):
                await hop.request(Client(body=CHAT))
            await until(lambda: upstream.closed_by_proxy == 1)
            assert hop.recorder.statuses == [504]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


# -- cuts (unload with force, cancel, stalled reader) -------------------------------------------


def test_a_request_cut_before_its_headers_is_answered_model_stopped() -> None:
    async def scenario() -> None:
        upstream = Upstream.never_answering()
        async with upstream as url:
            hop = Hop(url)
            request = hop.request(Client(body=CHAT))
            await until(lambda: upstream.requests)
            [entry] = hop.inflight.list()
            hop.inflight.cut(entry.id, "unloaded with force")
            with pytest.raises(ModelStopped, match="request cut: unloaded with force"):
                await request
            await until(lambda: upstream.closed_by_proxy == 1)
            assert hop.recorder.statuses == [502]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_stream_cut_mid_way_ends_with_an_in_band_error() -> None:
    upstream: Upstream

    async def stream_then_wait(request, reader, writer) -> bool:
        writer.write(sse_head() + chunk(EVENT))
        await upstream.wait_for_close(reader)
        return False

    async def scenario() -> None:
        nonlocal upstream
        upstream = Upstream(stream_then_wait)
        async with upstream as url:
            hop = Hop(url)
            client = Client(body=STREAM)
            request = hop.request(client)
            await until(lambda: EVENT in client.body)
            [entry] = hop.inflight.list()
            hop.inflight.cut(entry.id, "cancelled by the operator")
            await request
            await until(lambda: upstream.closed_by_proxy == 1)
            assert client.ended and b"request cut: cancelled by the operator" in client.body
            assert hop.recorder.statuses == [502]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_loading_stream_cut_before_the_models_headers_ends_in_band() -> None:
    async def scenario() -> None:
        upstream = Upstream.never_answering()
        async with upstream as url:
            hop = Hop(url, LOADING)
            hop.manager.stop("m")
            client = Client(body=STREAM)
            request = hop.request(client)
            await until(lambda: client.body)
            hop.manager.start.set_result(None)
            await until(lambda: upstream.requests)
            [entry] = hop.inflight.list()
            hop.inflight.cut(entry.id, "unloaded with force")
            await request  # the 200 is long sent: no error response can follow it
            assert client.ended and b"request cut: unloaded with force" in client.body
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_shutdown_cancel_is_not_swallowed() -> None:
    async def never_answer(request, reader, writer) -> bool:
        await reader.read()
        return False

    async def scenario() -> None:
        async with Upstream(never_answer) as url:
            hop = Hop(url)
            request = hop.request(Client(body=CHAT))
            await until(lambda: hop.inflight.list())
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert hop.recorder.statuses == [CLIENT_GONE]
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


# -- routing ends --------------------------------------------------------------------------------


def test_a_body_too_large_for_its_model_gives_back_a_selectors_reservation() -> None:
    config = ("models:\n  a: {image: x, maxRequestBodySize: 1000}\n  b: {image: x}\n"
              "maxRequestBodySize: 100000\n"
              "groups: {both: {swap: false, members: [a, b]}}\n"
              "selectors:\n  pick: {strategy: spillover, targets: [a, b]}\n")

    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url, config)
            big = json.dumps({"model": "pick", "pad": "x" * 5000}).encode()
            with pytest.raises(RequestTooLarge, match="of model 'a'"):
                await hop.request(Client(body=big))
            spillover = hop.router._spillovers["pick"]
            assert not any(spillover.in_flight.values()), "the reservation was kept"
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_peers_model_takes_the_hop_without_a_lease() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url, f"models: {{m: {{image: x}}}}\npeers:\n  lab:\n    proxy: {url}/base\n"
                           "    models: [remote]\n")
            client = Client(body=json.dumps({"model": "lab/remote"}).encode())
            await hop.request(client)
            assert client.status == 200 and client.ended
            assert hop.recorder.rows[0][:2] == ("lab/remote", 200)
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_a_peer_that_dies_mid_stream_ends_it_in_band_naming_the_peer() -> None:
    async def scenario() -> None:
        async with Upstream(die_mid_stream) as url:
            hop = Hop(url, f"models: {{m: {{image: x}}}}\npeers:\n  lab:\n    proxy: {url}\n"
                           "    models: [remote]\n")
            client = Client(body=json.dumps({"model": "lab/remote", "stream": True}).encode())
            await hop.request(client)
            assert client.ended and b"peer 'lab'" in client.body
            assert hop.manager.failures_reported == 0  # no container to check
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)
