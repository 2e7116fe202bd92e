"""Streams that end early, in the caller's dialect: the hop against an in-process upstream.

Once a stream's headers are sent, an error can only be told in-band. OpenAI's shape is a
``data: {"error": ...}`` event (then ``data: [DONE]`` where the stream is ours: the loading
progress); Anthropic's is ``event: error`` and no ``[DONE]``, which its clients do not know.
One test per way a stream ends early. The model manager is a stand-in for the hop's view of
it (admit, wait, progress); nothing here touches Docker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.errors import LlamaswapError, ModelStartFailed
from llamaswap_docker.lifecycle import Lease, ModelState
from llamaswap_docker.lifecycle.model import ModelRuntime
from llamaswap_docker.observe import ActivityLog, CaptureBuffer, EventBus, Metrics, Recorder
from llamaswap_docker.observe.prometheus import StateReading
from llamaswap_docker.proxy import InFlightRequests, Router, UpstreamClient, forward
from llamaswap_docker.proxy.dialects import end_of_stream_error
from llamaswap_docker.runtime import ContainerRef

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A model server on a real socket: ``handler`` answers each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def dies_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Two events of a stream, then the connection drops (the server crashed)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for event in (b'event: message_start\ndata: {"type": "message_start"}\n\n',
                  b'event: ping\ndata: {"type": "ping"}\n\n'):
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    await writer.drain()


async def answers_500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"error": "out of memory"}'
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


class Manager:
    """The hop's view of the manager: model ``m`` is ready at once (``ready``), or starts when
    asked and then runs in ``base_url``'s server, or fails to start with ``start_error``."""

    def __init__(self, base_url: str, *, ready: bool = False,
                 start_error: LlamaswapError | None = None) -> None:
        self.config = load_config_text(
            "sendLoadingState: true\nmodels:\n  m: {image: llamaswap/none:local}\n")
        self.models = {"m": ModelRuntime("m", ModelState.READY if ready else ModelState.STOPPED)}
        self.container = ContainerRef(id="c0ffee", name="m-c0ffee", model_id="m", spec_hash="0",
                                      instance="test", status="running", base_url=base_url)
        self.start_error = start_error
        self.released = 0

    def _lease(self, model_id: str) -> Lease:
        return Lease(self._release, model_id, self.container)

    def _release(self, model_id: str) -> None:
        self.released += 1

    def try_acquire(self, model_id: str) -> Lease | None:
        return self._lease(model_id) if self.models[model_id].state is ModelState.READY else None

    async def acquire(self, model_id: str) -> Lease:
        await asyncio.sleep(0.01)
        if self.start_error is not None:
            self.models[model_id].state = ModelState.FAILED
            raise self.start_error
        self.models[model_id].state = ModelState.READY
        return self._lease(model_id)

    def describe_progress(self, model_id: str) -> str:
        return "starting the container"

    async def report_upstream_failure(self, lease: Lease) -> str | None:
        return None  # the container still runs: the message quotes the connection's error


async def serve(manager: Manager, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    """One request through the hop; the status and body the client received."""
    events = EventBus()
    recorder = Recorder(ActivityLog(10), Metrics(lambda: StateReading({}, {}, {}), []), events,
                        CaptureBuffer(0))
    router = Router(lambda: manager.config, lambda model_id: manager.models[model_id].state,
                    events)
    upstream = UpstreamClient()
    body = json.dumps(payload).encode()
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000)}
    received = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if received:
            return received.pop(0)
        await gone.wait()  # the client stays until the response ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        hop = forward(manager, upstream, InFlightRequests(events),  # type: ignore[arg-type]
                      recorder, router, scope, receive, send)
        await asyncio.wait_for(hop, 30)
    finally:
        gone.set()
        await upstream.close()
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies and bodies[-1].get("more_body", False) is False, "the stream was not ended"
    assert manager.released == (0 if manager.start_error else 1)  # every lease given back
    return start["status"], b"".join(m.get("body", b"") for m in bodies)


def events_of(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name = next((line[7:] for line in block.splitlines() if line.startswith("event: ")), None)
        data = "".join(line[6:] for line in block.splitlines() if line.startswith("data: "))
        out.append((name, data))
    return out


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_end_of_stream_error_is_framed_in_the_dialect(dialect: str) -> None:
    framed = events_of(end_of_stream_error(
        dialect, 503, "model 'm' failed", "start_failed"))  # type: ignore[arg-type]
    if dialect == "anthropic":
        [(name, data)] = framed
        assert name == "error"
        assert json.loads(data) == {"type": "error", "error": {
            "type": "overloaded_error", "message": "model 'm' failed"}}
    else:
        [(name, data), done] = framed
        assert name is None and json.loads(data)["error"]["code"] == "start_failed"
        assert done == (None, "[DONE]")


def test_loading_stream_whose_model_fails_to_start_ends_with_the_error_then_done() -> None:
    manager = Manager("http://127.0.0.1:9", start_error=ModelStartFailed("model 'm' exited"))
    status, body = run(serve(manager, "/v1/chat/completions", CHAT))
    assert status == 200  # the loading stream was open before the start failed
    *progress, (_, error), done = events_of(body)
    assert progress and all("reasoning_content" in data for _, data in progress)
    assert json.loads(error)["error"]["message"] == "model 'm' exited"
    assert done == (None, "[DONE]")


def test_loading_stream_whose_model_server_refuses_the_request_ends_with_the_error() -> None:
    async def scenario() -> tuple[int, bytes]:
        async with Upstream(answers_500) as url:  # a port that was open: now nothing listens
            pass
        return await serve(Manager(url), "/v1/chat/completions", CHAT)

    status, body = run(scenario())
    *_, (_, error), done = events_of(body)
    assert status == 200 and json.loads(error)["error"]["code"] == "upstream_unavailable"
    assert "did not answer" in json.loads(error)["error"]["message"]
    assert done == (None, "[DONE]")


def test_loading_stream_whose_model_answers_an_error_status_ends_with_it_quoted() -> None:
    async def scenario() -> tuple[int, bytes]:
        async with Upstream(answers_500) as url:
            return await serve(Manager(url), "/v1/chat/completions", CHAT)

    status, body = run(scenario())
    *_, (_, error), done = events_of(body)
    message = json.loads(error)["error"]["message"]
    assert status == 200 and "answered 500" in message and "out of memory" in message
    assert done == (None, "[DONE]")


def test_anthropic_stream_cut_by_a_dying_server_ends_with_an_error_event_and_no_done() -> None:
    async def scenario() -> tuple[int, bytes]:
        async with Upstream(dies_mid_stream) as url:
            return await serve(Manager(url, ready=True), "/v1/messages", MESSAGES)

    status, body = run(scenario())
    framed = events_of(body)
    assert status == 200
    assert [name for name, _ in framed] == ["message_start", "ping", "error"]
    error = json.loads(framed[-1][1])
    assert error["type"] == "error" and "stopped answering" in error["error"]["message"]
    assert b"[DONE]" not in body


def test_openai_stream_cut_by_a_dying_server_ends_with_an_error_event() -> None:
    async def scenario() -> tuple[int, bytes]:
        async with Upstream(dies_mid_stream) as url:
            return await serve(Manager(url, ready=True), "/v1/chat/completions", CHAT)

    status, body = run(scenario())
    *_, (name, error) = events_of(body)
    assert status == 200 and name is None
    assert "stopped answering" in json.loads(error)["error"]["message"]
