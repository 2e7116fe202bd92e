"""The hop: one inference request, from its ASGI scope to its released lease.

    read the body (bounded) → find the model → admit (lease) → send upstream → relay → release

``forward`` is the only code that holds a lease for a request. It takes the lease in one place
and releases it in the ``finally`` of the same function, whatever ends the request: the answer
relayed, any exception, the task cancelled, or the client leaving — while its model starts,
before the upstream headers, or mid-stream. A client that leaves after sending its body is
noticed by ``_ClientWatch``, which cancels the request's task: the cancellation closes the
upstream connection (the model server stops generating) and the ``finally`` releases the lease.

Errors before anything was sent are raised (``LlamaswapError``) for the API layer to render in
the caller's dialect; after the headers went out they are reported in-band (an SSE error event)
or by ending the response early, so a client never takes a cut body for a whole one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from loguru import logger
from starlette.types import Message, Receive, Scope, Send

from llamaswap_docker.config import Config
from llamaswap_docker.errors import (
    LlamaswapError,
    ModelStopped,
    RequestTooLarge,
    UpstreamUnavailable,
)
from llamaswap_docker.lifecycle import Lease, ModelManager, ModelState
from llamaswap_docker.observe import CLIENT_GONE, Recorder, Trace
from llamaswap_docker.proxy.dialects import Dialect, dialect_for_path, sse_error_event
from llamaswap_docker.proxy.inflight import InFlight, InFlightRequests
from llamaswap_docker.proxy.routing import (
    ModelRequest,
    parse_model_request,
    rewrite_body,
    split_upstream_target,
)
from llamaswap_docker.proxy.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    request_headers,
    response_headers,
)

__all__ = ["ClientGone", "PROGRESS_INTERVAL_S", "forward", "read_body"]

#: Seconds between loading-progress deltas while a model starts (``sendLoadingState``).
PROGRESS_INTERVAL_S = 1.0
#: Seconds after which a request still in progress starts watching for its client leaving.
WATCH_AFTER_S = 0.02
#: Credentials meant for the proxy, never forwarded to a model server when ``apiKeys`` is set.
PROXY_AUTH_HEADERS = (b"authorization", b"x-api-key")
#: Inference routes that take files (``multipart/form-data``, the model in a form field).
UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations",
                          "/v1/images/edits", "/v1/images/variations"})
#: The most of an upstream error body quoted in an in-band error.
ERROR_DETAIL_BYTES = 500
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    """The client disconnected before its request was answered."""


def _mib(size: int) -> str:
    return f"{size / 1048576:g} MiB"


async def read_body(headers: list[tuple[bytes, bytes]], receive: Receive, limit: int) -> bytes:
    """The whole request body, refused as soon as it is known to exceed ``limit`` bytes.

    Raises:
        RequestTooLarge: ``Content-Length`` (before reading) or the bytes received (chunked)
            exceed ``limit``.
        ClientGone: the client left before the end of its body.
    """
    for name, value in headers:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise RequestTooLarge(
                    f"request body of {int(value)} bytes is larger than maxRequestBodySize "
                    f"({_mib(limit)})")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(
                    f"request body is larger than maxRequestBodySize ({_mib(limit)})")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _ClientWatch:
    """Once the body is read, ``receive`` only ever says the client left (or the response
    ended): wait for that in one small task and cancel the request's task when it comes.

    The task starts only if the request is still going after ``WATCH_AFTER_S``: a quick answer
    (most non-streamed ones) never pays for it, and a client that leaves a long one is
    noticed at most that much later.
    """

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._active = True
        self._receive = receive
        self._request_task = asyncio.current_task()
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._watch(self._receive))
        self._task.add_done_callback(self._on_done)

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    def _on_done(self, task: asyncio.Future[None]) -> None:
        # A callback may already be scheduled when stop() runs: the flag, not the removal,
        # decides.
        if self._active and not task.cancelled() and self._request_task is not None:
            self.gone = True
            self._request_task.cancel()

    def stop(self) -> None:
        self._active = False
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


class _Target:
    """What a request asks for: its model, the path and body to send there."""

    __slots__ = ("model_id", "path", "body", "payload")

    def __init__(self, model_id: str, path: str, body: bytes,
                 payload: dict[str, Any] | None = None) -> None:
        self.model_id = model_id
        self.path = path
        self.body = body
        self.payload = payload


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


class _Routes:
    """What the hop reads of a config on every request, as plain attributes (pydantic
    properties and private attributes cost microseconds each)."""

    __slots__ = ("config", "largest_body", "limits", "rewrites", "drop", "stall_timeout",
                 "stall_timeouts")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.largest_body = config.max_request_body_size()
        self.limits = {m: config.max_request_body_size(m) for m in config.models}
        self.rewrites = {m: bool(model.use_model_name or model.filters.stripped_params
                                 or model.filters.effective_set_params)
                         for m, model in config.models.items()}
        # Keys meant for the proxy never reach a model server.
        self.drop = PROXY_AUTH_HEADERS if config.api_keys else ()
        self.stall_timeout = float(config.stall_timeout_default)
        self.stall_timeouts = {m: float(model.stall_timeout) for m, model in config.models.items()
                               if model.stall_timeout is not None}


_routes: _Routes | None = None


def _routes_for(config: Config) -> _Routes:
    global _routes
    if _routes is None or _routes.config is not config:  # a reload swapped the config
        _routes = _Routes(config)
    return _routes


async def _target(manager: ModelManager, routes: _Routes, scope: Scope,
                  receive: Receive) -> _Target:
    """Read the body and find the model: from ``/upstream/<model>/…``, or from the body."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    path: str = scope["path"]
    query: bytes = scope["query_string"]
    if path.startswith("/upstream/"):
        raw_path: bytes | None = scope.get("raw_path")
        model_id, rest = split_upstream_target(
            routes.config.resolve, path[len("/upstream/"):],
            raw_path.decode("latin-1")[len("/upstream/"):] if raw_path else None)
        body = await read_body(headers, receive, routes.limits.get(model_id, routes.largest_body))
        return _Target(model_id, "/" + rest + ("?" + query.decode("latin-1") if query else ""),
                       body)
    body = await read_body(headers, receive, routes.largest_body)
    query_model = None
    if query:
        query_model = (parse_qs(query.decode("latin-1")).get("model") or [None])[0]
    request: ModelRequest = parse_model_request(body, _header(headers, b"content-type"),
                                                query_model, uploads=path in UPLOAD_PATHS)
    model_id = manager.resolve(request.model_name)
    if model_id not in routes.limits:  # a reload added it while the body was read
        routes = _routes_for(manager.config)
    limit = routes.limits.get(model_id, routes.largest_body)
    if len(body) > limit:
        raise RequestTooLarge(f"request body of {len(body)} bytes is larger than "
                              f"maxRequestBodySize ({_mib(limit)}) of model {model_id!r}")
    if routes.rewrites.get(model_id):
        body = rewrite_body(request, routes.config.models[model_id])
    upstream_path = path + ("?" + query.decode("latin-1") if query else "")
    return _Target(model_id, upstream_path, body, request.payload)


def _wants_loading_state(manager: ModelManager, path: str, target: _Target) -> bool:
    """A streaming chat request for a model that is not ready, with ``sendLoadingState`` on."""
    return (
        path == "/v1/chat/completions"
        and target.payload is not None
        and target.payload.get("stream") is True
        and manager.config.send_loading_state(target.model_id)
        and manager.models[target.model_id].state is not ModelState.READY
    )


class _Progress:
    """Loading feedback: a stream opened at once, progress as ``reasoning_content`` deltas
    (chat UIs show them while they wait), then the model's own stream."""

    def __init__(self, model_id: str, send: Send) -> None:
        self.model_id = model_id
        self.send = send
        self.started = time.monotonic()
        self.chunk_id = f"chatcmpl-loading-{uuid.uuid4().hex[:12]}"

    async def delta(self, text: str) -> None:
        chunk = {
            "id": self.chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "delta": {"reasoning_content": text},
                         "finish_reason": None}],
        }
        await self.send({"type": "http.response.body", "more_body": True,
                         "body": f"data: {json.dumps(chunk)}\n\n".encode()})

    async def wait(self, manager: ModelManager, waiting: asyncio.Future[Lease]) -> Lease:
        await self.send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await self.delta(f"Loading model {self.model_id}…\n")
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=PROGRESS_INTERVAL_S)
            if done:
                lease = waiting.result()
                await self.delta(f"Model {self.model_id} ready in "
                                 f"{time.monotonic() - self.started:.1f}s.\n\n")
                return lease
            progress = manager.describe_progress(self.model_id)
            await self.delta(f"{progress} ({time.monotonic() - self.started:.0f}s)\n")


def _admitted(waiting: asyncio.Future[Lease] | None) -> Lease | None:
    """The lease a wait produced, if it finished with one (also when nobody took it)."""
    if waiting is None or not waiting.done() or waiting.cancelled():
        return None
    return waiting.result() if waiting.exception() is None else None


async def forward(
    manager: ModelManager, upstream: UpstreamClient, inflight: InFlightRequests,
    recorder: Recorder, scope: Scope, receive: Receive, send: Send,
) -> None:
    """Serve one inference request (``POST /v1/...`` or ``/upstream/<model>/...``).

    Every request that named a model ends as one activity row (``recorder``), whatever
    ended it: ``trace.status`` holds the status sent, then the error's status, or 499 when
    the client left.

    Raises:
        LlamaswapError: before anything was sent (bad request, unknown model, failed start,
            unreachable model server): the caller renders it in the client's dialect.
    """
    path: str = scope["path"]
    dialect = dialect_for_path(path)
    lease: Lease | None = None
    waiting: asyncio.Future[Lease] | None = None
    watch: _ClientWatch | None = None
    response: UpstreamResponse | None = None
    progress: _Progress | None = None
    entry: InFlight | None = None
    model_id = "-"
    trace = recorder.trace(path)
    routes = _routes_for(manager.config)
    try:
        target = await _target(manager, routes, scope, receive)
        model_id = target.model_id
        trace.routed = trace.admitted = time.monotonic()
        if trace.capture is not None:
            trace.request(scope["headers"], target.body)
        lease = manager.try_acquire(model_id)
        watch = _ClientWatch(receive)
        if lease is None:  # the model must start, or is busy swapping: wait, watched
            trace.admitted = None  # until it is
            waiting = asyncio.ensure_future(manager.acquire(model_id))
            if _wants_loading_state(manager, path, target):
                progress = _Progress(model_id, send)
                try:
                    lease = await progress.wait(manager, waiting)
                except LlamaswapError as exc:
                    trace.status = exc.status_code  # said in-band: the 200 is long sent
                    await _end_stream(send, dialect, exc.status_code, exc.message, exc.code)
                    return
            else:
                lease = await waiting
            waiting = None
            trace.admitted = time.monotonic()
        entry = inflight.add(model_id, path, scope.get("client"),
                             routes.stall_timeouts.get(model_id, routes.stall_timeout))
        entry.responded = progress is not None
        authorization = lease.container.authorization
        if authorization:  # the container's own key replaces whatever the client sent
            headers = request_headers(scope["headers"], PROXY_AUTH_HEADERS)
            headers.append((b"authorization", authorization.encode()))
        else:
            headers = request_headers(scope["headers"], routes.drop)
        try:
            response = await upstream.send(scope["method"], lease.base_url, target.path, headers,
                                           target.body or None)
        except UpstreamError as exc:
            message = await _failure(manager, lease, exc, "did not answer")
            if progress is None:
                raise UpstreamUnavailable(message) from None
            trace.status = 502
            await _end_stream(send, dialect, 502, message, "upstream_unavailable")
            return
        await _relay(manager, lease, response, progress, dialect, send, watch, entry, trace)
    except LlamaswapError as exc:
        trace.status = exc.status_code
        raise
    except asyncio.CancelledError:
        cut = entry.cut if entry is not None else None
        trace.status = CLIENT_GONE if cut is None else 502
        if (watch is None or not watch.gone) and cut is None:
            raise
        if asyncio.current_task().uncancel() > 0:  # type: ignore[union-attr]
            raise  # cancelled from outside too (shutdown): not ours to swallow
        if cut is None:
            logger.bind(model=model_id, path=path).info(
                "client disconnected; upstream request cancelled")
        else:
            assert entry is not None
            logger.bind(model=model_id, path=path, request=entry.id).warning(
                "request cut: {}", cut)
            message = f"model {model_id!r}: request cut: {cut}"
            if not entry.responded:
                trace.status = ModelStopped.status_code
                raise ModelStopped(message) from None
            if entry.stalled:
                return  # nothing more can reach this client; the server closes the connection
            if progress is not None or (response is not None and response.is_event_stream):
                if watch is not None:
                    watch.stop()
                await _stream_error(send, dialect, message)
    except ClientGone:
        trace.status = CLIENT_GONE
        logger.bind(model=model_id, path=path).info("client disconnected mid-body")
    finally:
        if entry is not None:
            inflight.remove(entry)
        if watch is not None:
            watch.stop()
        if waiting is not None and not waiting.done():
            waiting.cancel()  # acquire() gives back an admission that races the cancel
        lease = lease or _admitted(waiting)
        if response is not None:
            response.close()
        if lease is not None:
            lease.release()
        if model_id != "-":  # last: what it took is given back whatever recording does
            try:
                recorder.finish(trace, model_id)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail a request
                logger.opt(exception=exc).bind(model=model_id).error(
                    "recording the request failed")


async def _relay(
    manager: ModelManager, lease: Lease, response: UpstreamResponse, progress: _Progress | None,
    dialect: Dialect, send: Send, watch: _ClientWatch, entry: InFlight, trace: Trace,
) -> None:
    """Relay the upstream answer to the client, chunk by chunk as it arrives.

    Each write to the client is marked in ``entry.writing_since``: the in-flight watchdog cuts
    a client that accepts no bytes for its ``stallTimeout``, so one stalled reader cannot hold
    its model (and every swap waiting on it) forever.
    """
    if progress is not None:
        trace.status, trace.headers = 200, _SSE_HEADERS
        # The stream's headers (200, event stream) are long sent: report a failure in-band.
        if response.status != 200:
            try:
                detail = (await response.read())[:ERROR_DETAIL_BYTES].decode("utf-8", "replace")
            except UpstreamError as exc:
                detail = f"(and then: {exc})"
            message = f"model {lease.model_id!r} answered {response.status}: {detail}"
            trace.status = 502
            await _end_stream(send, dialect, 502, message, "upstream_error")
            return
    else:
        trace.status, trace.headers = response.status, response.raw_headers
        start: Message = {"type": "http.response.start", "status": response.status,
                          "headers": response_headers(response.raw_headers)}
        if response.small:
            try:
                body = await response.read()
            except UpstreamError as exc:
                raise UpstreamUnavailable(
                    await _failure(manager, lease, exc, "stopped answering mid-response")
                ) from None
            watch.stop()
            entry.responded = True
            trace.body(body)
            await send(start)
            entry.bytes = len(body)
            entry.writing_since = time.monotonic()
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        entry.responded = True
        await send(start)
    scan = trace.chunk
    try:
        async for chunk in response.chunks():
            scan(chunk)
            entry.bytes += len(chunk)
            entry.writing_since = time.monotonic()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            entry.writing_since = None
    except UpstreamError as exc:
        message = await _failure(manager, lease, exc, "stopped answering mid-response")
        if progress is not None or response.is_event_stream:
            watch.stop()
            await _stream_error(send, dialect, message)
        else:
            # No in-band way to say it: end without the final chunk, so the client sees a
            # broken body rather than a short one that looks complete.
            logger.bind(model=lease.model_id).warning("response cut: {}", message)
        return
    watch.stop()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _failure(manager: ModelManager, lease: Lease, exc: UpstreamError, what: str) -> str:
    """Why the model server failed us: its container's death when it died, else the error."""
    try:
        reason = await manager.report_upstream_failure(lease)
    except Exception as engine_exc:  # noqa: BLE001 - the engine is slow too: say what we know
        logger.bind(model=lease.model_id).warning("could not check the container: {}", engine_exc)
        reason = None
    return f"model {lease.model_id!r} {what}: {reason or exc}"


async def _stream_error(send: Send, dialect: Dialect, message: str) -> None:
    """End a stream whose model stopped serving it with an in-band error event."""
    await send({"type": "http.response.body", "more_body": False,
                "body": sse_error_event(dialect, 502, message, "model_stopped")})


async def _end_stream(send: Send, dialect: Dialect, status: int, message: str, code: str) -> None:
    await send({"type": "http.response.body", "more_body": True,
                "body": sse_error_event(dialect, status, message, code)})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

