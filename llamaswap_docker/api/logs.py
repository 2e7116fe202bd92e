"""Log routes: the proxy's own log (buffered and live) and a model container's output.

    GET /logs                    the proxy's recent log lines (text/plain)
    GET /logs/stream             the same, then live lines as they are logged (?no-history)
    GET /logs/stream/<model>     the model's container output, read from the engine
                                 (?follow=false: only the earlier lines, then end)

Each takes ``?tail=N``: how many earlier lines come first (-1: all; the default for the proxy's
log, 100 for a container's).

Container output comes from the engine, not from the proxy's memory, so it is there for a
container adopted after a restart too. Lines reach a stream from other threads (loguru sinks,
the engine's log stream read in a thread of its own); each stream has a bounded queue, and a
reader too slow to keep up loses lines, with a note saying how many. Live streams end when the
proxy begins to shut down, so a follower does not hold up the graceful shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Query, Request
from loguru import logger
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llamaswap_docker.api.errors import error_response
from llamaswap_docker.api.state import app_state
from llamaswap_docker.logs import log_buffer
from llamaswap_docker.runtime.engine import close_stream

__all__ = ["IDLE", "STREAM_HEADERS", "ClosingStreamingResponse", "EngineFollower", "Feed", "queued",
           "router"]

#: Bytes a stream may hold for a slow reader before it drops lines.
STREAM_QUEUE_BYTES = 8 * 1024 * 1024
#: Seconds between checks, on a quiet stream, whether the proxy is shutting down.
SHUTDOWN_POLL_S = 0.5
#: Seconds before following a container's output again after the engine ended the stream.
REFOLLOW_INTERVAL_S = 1.0
#: Headers that keep reverse proxies (nginx) from buffering a live stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TEXT = "text/plain; charset=utf-8"

T = TypeVar("T")

router = APIRouter(tags=["logs"])


class Feed(Generic[T]):
    """Items pushed from any thread into the event loop, read by one async reader.

    ``push`` may be called from any thread, also after the loop closed (it is then a no-op);
    ``end`` marks the end of the feed and is never dropped. What waits for the reader is
    bounded by ``limit``, counted by ``cost`` (bytes by default): past it, new items are
    dropped (``dropped`` counts them) rather than held without bound. The reader takes every
    item waiting at once (``batches``), so a burst costs it one write, not one per item.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], bool],
                 limit: int = STREAM_QUEUE_BYTES, cost: Callable[[T], int] = len) -> None:
        self._loop = loop
        self._stop = stop
        self._items: collections.deque[T] = collections.deque()
        self._held = 0
        self._limit = limit
        self._cost = cost
        self._wake = asyncio.Event()
        self._ending = False
        self.dropped = 0
        #: The feed was ended (``end()``), not stopped (``stop()``).
        self.ended = False

    def push(self, item: T) -> None:
        self._call(self._put, item)

    def end(self) -> None:
        self._call(self._end)

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: nobody reads any more
            pass

    def _put(self, item: T) -> None:
        cost = self._cost(item)
        if self._held + cost > self._limit:
            self.dropped += 1
            return
        self._held += cost
        self._items.append(item)
        self._wake.set()

    def _end(self) -> None:
        self._ending = True
        self._wake.set()

    async def batches(self) -> AsyncIterator[list[T]]:
        """Every item, in order, as lists of those waiting; an empty list after each quiet
        ``SHUTDOWN_POLL_S`` (a heartbeat's chance); until ``end()`` (after the items pushed
        before it) or until ``stop()`` turns true (checked before every batch)."""
        items = self._items
        while not self._stop():
            if items:
                batch = list(items)
                items.clear()
                self._held = 0
                yield batch
            elif self._ending:
                self.ended = True
                return
            else:
                self._wake.clear()
                try:
                    async with asyncio.timeout(SHUTDOWN_POLL_S):
                        await self._wake.wait()
                except TimeoutError:
                    yield []

    async def __aiter__(self) -> AsyncIterator[T]:
        """Every item, one at a time."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for item in batch:
                    yield item


#: What ``queued`` yields after each quiet ``SHUTDOWN_POLL_S``.
IDLE: Any = object()


async def queued(queue: asyncio.Queue[Any], stop: Callable[[], bool]) -> AsyncIterator[Any]:
    """The items of ``queue`` as they come, and ``IDLE`` after every quiet ``SHUTDOWN_POLL_S``,
    until ``stop()`` turns true (checked before every item). Close it (``aclosing``) when done.
    """
    # One get() at a time, kept across timeouts: cancelling it could lose an item.
    getter: asyncio.Future[Any] | None = None
    try:
        while not stop():
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=SHUTDOWN_POLL_S)
            if not done:
                yield IDLE
                continue
            item, getter = getter.result(), None
            yield item
    finally:
        if getter is not None:
            getter.cancel()


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator as soon as the response ends (a client disconnect included).

    Starlette cancels the send, but a generator paused at ``yield`` is only closed when it is
    garbage-collected: its ``finally`` (closing the engine's log stream) would run late.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def _dropped_note(feed: Feed[Any]) -> str:
    count, feed.dropped = feed.dropped, 0
    return f"[llamaswap-docker: {count} log lines dropped: the reader was too slow]\n"


TailQuery = Annotated[int, Query(ge=-1, description="earlier lines sent first; -1: all")]


def _last(lines: list[str], tail: int) -> list[str]:
    return lines if tail < 0 else lines[-tail:] if tail else []


@router.get("/logs", response_class=PlainTextResponse)
async def logs(tail: TailQuery = -1) -> PlainTextResponse:
    """The proxy's recent log lines, oldest first (``?tail=N``: the last N)."""
    history = _last(log_buffer.history(), tail)
    return PlainTextResponse("".join(f"{line}\n" for line in history), media_type=_TEXT)


@router.get("/logs/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}}})
async def logs_stream(request: Request, tail: TailQuery = -1) -> StreamingResponse:
    """The proxy's log, live: recent lines first (unless ``?no-history``), then new ones."""
    with_history = "no-history" not in request.query_params
    feed: Feed[str] = Feed(asyncio.get_running_loop(), _shutting_down(request))
    # Subscribe before reading the history, so no line falls between the two.
    log_buffer.subscribe(feed.push)
    history = _last(log_buffer.history(), tail) if with_history else []

    async def lines() -> AsyncIterator[str]:
        try:
            if history:
                yield "".join(f"{line}\n" for line in history)
            # A line logged between subscribing and reading the history is in both: skip it.
            recent = set(history[-64:])
            async for line in feed:
                if recent:
                    if line in recent:
                        recent.discard(line)
                        continue
                    recent.clear()
                if feed.dropped:
                    yield _dropped_note(feed)
                yield f"{line}\n"
        finally:
            log_buffer.unsubscribe(feed.push)

    return ClosingStreamingResponse(lines(), media_type=_TEXT, headers=STREAM_HEADERS)


@router.get("/logs/stream/{model:path}", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}},
                       404: {"description": "unknown model, or the model has no container"}})
async def model_logs_stream(
    request: Request,
    model: str,
    tail: TailQuery = 100,
    follow: Annotated[bool, Query(description="keep streaming new output")] = True,
) -> Response:
    """The output (stdout and stderr) of the model's container, as the engine has it; once the
    container is gone (swapped out, stopped, crashed), the last lines it wrote."""
    state = app_state(request)
    model_id = state.manager.resolve(model)
    runtime = state.manager.models.get(model_id)
    container = runtime.container if runtime is not None else None
    if runtime is None or container is None:
        state_name = runtime.state.value if runtime is not None else "removed"
        kept = state.manager.last_output.get(model_id)
        if kept is not None:
            stopped = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(kept.stopped_at))
            header = (f"# {model_id} has no container now ({state_name}); the last output of "
                      f"{kept.container_name}, stopped {stopped} ({kept.reason}):\n")
            lines = _last(kept.text.splitlines(), tail)
            return PlainTextResponse(header + "".join(f"{line}\n" for line in lines),
                                     media_type=_TEXT)
        return error_response(
            "openai", 404,
            f"model {model_id!r} has no container ({state_name}) and none ran since the proxy "
            f"started: nothing to show; start it with `llamaswap-docker load {model_id}`",
            "model_not_running",
        )
    containers = state.manager.containers_for(container)
    if not follow:
        text = await asyncio.to_thread(containers.logs_tail, container.id, tail)
        return PlainTextResponse(f"{text}\n" if text else "", media_type=_TEXT)
    # Open the stream here, so an engine error still answers as an error, not an empty stream.
    opened_at = time.time()
    stream = await asyncio.to_thread(containers.follow_logs, container.id, tail)
    body = _follow(containers, container.id, stream, model_id, _shutting_down(request), opened_at)
    return ClosingStreamingResponse(body, media_type=_TEXT, headers=STREAM_HEADERS)


def _shutting_down(request: Request) -> Callable[[], bool]:
    manager = app_state(request).manager
    return lambda: manager.should_exit


async def _follow(containers: Any, container_id: str, stream: Iterator[bytes],
                  model_id: str, stop: Callable[[], bool], opened_at: float) -> AsyncIterator[bytes]:
    """Relay an engine log stream (opened at ``opened_at``) read in a daemon thread; closing
    it ends the thread.

    An engine that ends the stream while the container runs on (a hiccup, a log file rotated
    under the follower, or a stream opened on a container created but not yet started, which
    the engine ends at once) is followed again from the last output received, or from when
    the stream was opened if none was: no line written meanwhile is lost.
    """
    feed: Feed[bytes] = Feed(asyncio.get_running_loop(), stop)
    ended_at = opened_at

    def take(chunk: bytes) -> None:
        nonlocal ended_at
        feed.push(chunk)
        ended_at = time.time()

    follower = EngineFollower(
        containers, container_id, stream, model_id, "logs", take, feed.end,
        lambda: containers.follow_logs(container_id, -1, since=ended_at))
    try:
        async with contextlib.aclosing(feed.batches()) as batches:
            async for batch in batches:
                if feed.dropped:
                    yield _dropped_note(feed).encode()
                if batch:
                    yield b"".join(batch)
    finally:
        follower.close()  # the client left, or the container stopped


class EngineFollower:
    """An engine stream of a container (its logs, its stats) read in a daemon thread of its
    own (a follow may last for days; the loop's executor is joined at shutdown), each item
    handed to ``take``, ``done`` called once the thread is through.

    The engine ends the stream when the container stops. It may also end it while the
    container runs on: ``reopen`` then opens it again, at most once per
    ``REFOLLOW_INTERVAL_S`` (an engine that keeps ending it costs one call a second).
    ``close()`` shuts the engine stream's socket down, which unblocks the thread at once; it
    never awaits, so it may run while its caller is being cancelled.
    """

    def __init__(self, containers: Any, container_id: str, stream: Iterator[Any], model_id: str,
                 what: str, take: Callable[[Any], None], done: Callable[[], None],
                 reopen: Callable[[], Iterator[Any]]) -> None:
        self._containers = containers
        self._container_id = container_id
        self._current = stream
        self._model_id = model_id
        self._what = what
        self._take = take
        self._done = done
        self._reopen = reopen
        self._closed = threading.Event()
        threading.Thread(target=self._pump, name=f"{what}-{model_id}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        close_engine_stream(self._current, self._model_id, self._what)

    def _pump(self) -> None:
        log = logger.bind(model=self._model_id)
        closed = self._closed
        try:
            while not closed.is_set():
                try:
                    for item in self._current:
                        if closed.is_set():
                            return
                        self._take(item)
                except Exception as exc:  # noqa: BLE001 - an engine hiccup: decided below
                    log.debug("container {} stream broke: {}", self._what, exc)
                if (closed.is_set() or not _may_write_more(self._containers, self._container_id)
                        or closed.wait(REFOLLOW_INTERVAL_S)):
                    return
                log.debug("container {} stream ended early: following again", self._what)
                self._current = self._reopen()
                if closed.is_set():  # closed while reopening: the closer saw the old stream
                    close_engine_stream(self._current, self._model_id, self._what)
        except Exception as exc:  # noqa: BLE001 - an engine error ends this stream, not the proxy
            log.debug("container {} stream ended: {}", self._what, exc)
        finally:
            self._done()


def _may_write_more(containers: Any, container_id: str) -> bool:
    """Running, or about to: a stream opened as the container was created (a model page
    follows a start from its first moment) ends at once, before the container starts."""
    state = containers.state(container_id)
    return state is not None and (state.running or state.status in ("created", "restarting"))


def close_engine_stream(stream: Iterator[Any], model_id: str, what: str = "log") -> None:
    """End an engine stream (logs, stats) from any thread: its reader unblocks at once."""
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close_stream(stream)
        except Exception as exc:  # noqa: BLE001 - the stream is being abandoned either way
            logger.bind(model=model_id).debug("closing a container {} stream: {}", what, exc)
