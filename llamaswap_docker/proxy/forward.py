"""The hop: one inference request, from its ASGI scope to its released lease.

``forward`` reads as the steps every request takes, each a method of ``_Hop`` (the one object
that holds what a request found and took):

    read_and_route   read the body (bounded), find the model or peer it names
    admit            a lease on the model if it is ready now; else ``wait_for_model`` (to start,
                     or to be swapped in), with loading progress on a stream that asks for it
    send_to_model    the request to the lease's container; ``unanswered`` when no response
                     comes (a peer's model: ``send_to_peer``, no lease: nothing to start)
    relay            the answer back, whole when small, else chunk by chunk as it arrives
    end              give back everything taken, then record the request (one activity row)

``end`` runs in ``forward``'s one ``finally``, whatever ended the request: the answer relayed,
any exception, the task cancelled, or the client leaving — while its body arrives, while its
model starts, before the upstream headers, or mid-stream. A client that leaves after sending
its body is noticed by ``_ClientWatch``, which cancels the request's task: the cancellation
closes the upstream connection (the model server stops generating) and ``end`` releases the
lease. A request cut from the in-flight registry (an unload with force, a cancel, a stalled
reader) is cancelled the same way and tells its client why.

Errors before anything was sent are raised (``LlamaswapError``) for the API layer to render in
the caller's dialect; after the headers went out they are reported in-band (an SSE error event)
or by ending the response early, so a client never takes a cut body for a whole one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs, unquote

from loguru import logger
from starlette.types import Message, Receive, Scope, Send

from llamaswap_docker.config import Config
from llamaswap_docker.config.schema import Timeouts
from llamaswap_docker.errors import (
    LlamaswapError,
    ModelStopped,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llamaswap_docker.lifecycle import Lease, ModelManager, ModelState
from llamaswap_docker.observe import CLIENT_GONE, Recorder
from llamaswap_docker.proxy.dialects import (
    Dialect,
    dialect_for_path,
    end_of_stream_error,
    sse_error_event,
)
from llamaswap_docker.proxy.inflight import InFlight, InFlightRequests
from llamaswap_docker.proxy.peers import peer_failure, peer_headers
from llamaswap_docker.proxy.peers import send_to_peer as _send_to_peer
from llamaswap_docker.proxy.routing import ModelRequest, Route, Router, parse_model_request, rewrite_body
from llamaswap_docker.proxy.sse import sse_event
from llamaswap_docker.proxy.stream_usage import (
    UsageHoldBack,
    filters_name_stream_options,
    usage_options,
)
from llamaswap_docker.proxy.upstream import (
    CONNECT_TIMEOUT_S,
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
_UPSTREAM = "/upstream/"


class ClientGone(Exception):
    """The client disconnected before its request was answered."""


async def forward(
    manager: ModelManager, upstream: UpstreamClient, inflight: InFlightRequests,
    recorder: Recorder, router: Router, scope: Scope, receive: Receive, send: Send,
) -> None:
    """Serve one inference request (``POST /v1/...`` or ``/upstream/<model>/...``).

    ``router`` resolves the name (profiles, selectors, aliases, peers). A peer's model takes
    the same hop without a lease: nothing to start or swap.

    Every request that named a model ends as one activity row (``recorder``), whatever
    ended it: ``trace.status`` holds the status sent, then the error's status, or 499 when
    the client left.

    Raises:
        LlamaswapError: before anything was sent (bad request, unknown model, failed start,
            unreachable model server): the caller renders it in the client's dialect.
    """
    hop = _Hop(manager, upstream, inflight, recorder, router, scope, receive, send)
    try:
        await hop.read_and_route()
        if hop.route.peer is not None:  # type: ignore[union-attr]
            hop.response = await hop.send_to_peer()
        elif hop.admit() or await hop.wait_for_model():
            hop.response = await hop.send_to_model()
        else:
            return  # the model did not start: the loading stream told the client why
        await hop.relay()
    except UpstreamError as exc:  # from send_to_model: the model's server did not answer
        await hop.unanswered(exc)
    except LlamaswapError as exc:
        hop.trace.status = exc.status_code
        raise
    except asyncio.CancelledError:
        if not hop.cancelled_by_us():
            raise
        await hop.tell_cut()
    except ClientGone:
        hop.trace.status = CLIENT_GONE
        logger.bind(model=hop.model_id, path=hop.path).info("client disconnected mid-body")
    finally:
        hop.end()


# --------------------------------------------------------------------------- reading the body


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
            return b"".join(chunks)  # one chunk: that very object, no copy


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


# --------------------------------------------------------------------------- routing


class _Routes:
    """What the hop reads of a config on every request, as plain attributes (pydantic
    properties and private attributes cost microseconds each)."""

    __slots__ = ("config", "largest_body", "limits", "rewrites", "drop", "stall_timeout",
                 "stall_timeouts", "timeouts", "usage_left_alone", "peers_left_alone")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.largest_body = config.max_request_body_size()
        self.limits = {m: config.max_request_body_size(m) for m in config.models}
        self.rewrites = {m: bool(model.use_model_name or model.filters.rewrites)
                         for m, model in config.models.items()}
        # Keys meant for the proxy never reach a model server.
        self.drop = PROXY_AUTH_HEADERS if config.api_keys else ()
        self.stall_timeout = float(config.stall_timeout_default)
        self.stall_timeouts = {m: float(model.stall_timeout) for m, model in config.models.items()
                               if model.stall_timeout is not None}
        # (connect, responseHeader) seconds of each model that sets `timeouts`; None: no limit.
        self.timeouts = {m: _hop_timeouts(model.timeouts) for m, model in config.models.items()
                         if model.timeouts.model_fields_set}
        # Models whose filters say what stream_options are: never asked for usage by the hop.
        self.usage_left_alone = frozenset(m for m, model in config.models.items()
                                          if filters_name_stream_options(model.filters))
        self.peers_left_alone = frozenset(p for p, peer in config.peers.items()
                                          if filters_name_stream_options(peer.filters))


#: A model's (connect, responseHeader) limits when its config sets none (llama-swap's
#: responseHeader default is 0: no limit).
_DEFAULT_TIMEOUTS: tuple[float | None, float | None] = (CONNECT_TIMEOUT_S, None)


def _hop_timeouts(timeouts: Timeouts) -> tuple[float | None, float | None]:
    """``timeouts`` as the upstream client takes them: unset is the default, 0 no limit."""
    connect = CONNECT_TIMEOUT_S if timeouts.connect is None else (timeouts.connect or None)
    return connect, timeouts.response_header or None


_routes: _Routes | None = None


def _routes_for(config: Config) -> _Routes:
    global _routes
    if _routes is None or _routes.config is not config:  # a reload swapped the config
        _routes = _Routes(config)
    return _routes


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def _query_model(query: bytes) -> str | None:
    """``?model=`` (the name when neither the body nor a form field says one)."""
    return (parse_qs(query.decode("latin-1")).get("model") or [None])[0]


def _rewritten(routes: _Routes, route: Route, request: ModelRequest,
               extra: dict[str, Any] | None) -> bytes:
    """The body to send: as received unless a name, the filters or ``extra`` change it."""
    if route.peer is not None:
        return _peer_body(route, request, extra)
    # A profile or a selector chose the name: the server sees the name chosen, as llama-swap's.
    chosen = route.name if route.name != request.model_name else None
    if chosen or extra or routes.rewrites.get(route.model_id):
        model = routes.config.models[route.model_id]
        return rewrite_body(request, model, rename=model.use_model_name or chosen,
                            requested=route.name, extra=extra)
    return request.body


def _peer_body(route: Route, request: ModelRequest, extra: dict[str, Any] | None) -> bytes:
    assert route.peer is not None
    # The peer knows its model by its own name, not "peer/model" (llama-swap's rewrite).
    rename = route.remote_name if request.model_name != route.remote_name else None
    if rename or extra or route.peer.filters.rewrites:
        return rewrite_body(request, route.peer, rename=rename, requested=route.name,
                            extra=extra)
    return request.body


# --------------------------------------------------------------------------- the hop


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
                         "body": sse_event(json.dumps(chunk).encode())})

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


class _Hop:
    """One request's way through the proxy: what each step found or took, in one place, so
    that ``end`` gives all of it back whatever ended the request."""

    __slots__ = ("manager", "upstream", "inflight", "recorder", "router", "scope", "receive",
                 "send", "path", "routes", "trace", "route", "model_id", "target",
                 "body", "payload", "usage_asked", "lease", "waiting", "watch", "progress",
                 "entry", "response")

    def __init__(self, manager: ModelManager, upstream: UpstreamClient,
                 inflight: InFlightRequests, recorder: Recorder, router: Router, scope: Scope,
                 receive: Receive, send: Send) -> None:
        self.manager = manager
        self.upstream = upstream
        self.inflight = inflight
        self.recorder = recorder
        self.router = router
        self.scope = scope
        self.receive = receive
        self.send = send
        self.path: str = scope["path"]
        self.routes = _routes_for(manager.config)
        self.trace = recorder.trace(self.path)
        self.route: Route | None = None
        #: The model's id, or "peer/model" ("-" until routed: then no activity row).
        self.model_id = "-"
        # Set by routing: ``target`` (the path and query to send upstream) and ``body``.
        self.target: str
        self.body: bytes
        self.payload: dict[str, Any] | None = None
        #: The hop asked for the stream's usage: its usage chunk is held back from the client.
        self.usage_asked = False
        self.lease: Lease | None = None
        self.waiting: asyncio.Future[Lease] | None = None
        self.watch: _ClientWatch | None = None
        self.progress: _Progress | None = None
        self.entry: InFlight | None = None
        self.response: UpstreamResponse | None = None

    # -- 1, 2: read the body, route ---------------------------------------------------------

    # Steps that only prepare an await return the awaitable instead of awaiting it: no
    # coroutine of their own for every request.

    def read_and_route(self) -> Awaitable[None]:
        """Read the body and find where it goes: the model or peer ``/upstream/<model>/…``
        names, or the one the body (a form field, ``?model=``) names."""
        if self.path.startswith(_UPSTREAM):
            return self._route_by_path()
        return self._route_by_body()

    @property
    def _dialect(self) -> Dialect:
        """The caller's dialect, for the error events written in-band (read only then)."""
        return dialect_for_path(self.path)

    def _routed(self, route: Route) -> None:
        self.model_id = route.model_id
        trace = self.trace
        trace.routed = trace.admitted = time.monotonic()
        if trace.capture is not None:
            trace.request(self.scope["headers"], self.body)

    async def _route_by_path(self) -> None:
        scope, routes = self.scope, self.routes
        raw_path: bytes | None = scope.get("raw_path")
        route, rest = self.router.upstream(
            self.path[len(_UPSTREAM):],
            raw_path.decode("latin-1")[len(_UPSTREAM):] if raw_path else None)
        self.route = route
        self.router.check_ignored(route, "/" + (unquote(rest) if raw_path else rest))
        self.body = await read_body(scope["headers"], self.receive,
                                    routes.limits.get(route.model_id, routes.largest_body))
        query: bytes = scope["query_string"]
        self.target = "/" + rest + ("?" + query.decode("latin-1") if query else "")
        self._routed(route)

    async def _route_by_body(self) -> None:
        scope, routes = self.scope, self.routes
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query: bytes = scope["query_string"]
        body = await read_body(headers, self.receive, routes.largest_body)
        request = parse_model_request(body, _header(headers, b"content-type"),
                                      _query_model(query) if query else None,
                                      uploads=self.path in UPLOAD_PATHS)
        # From here ``end`` gives back a selector's reservation, whatever fails.
        self.route = route = self.router.route(request.model_name)
        if route.peer is None and route.model_id not in routes.limits:  # a reload added it
            self.routes = routes = _routes_for(self.router.config)
        limit = routes.limits.get(route.model_id, routes.config.max_request_body_size_default)
        if len(body) > limit:
            raise RequestTooLarge(f"request body of {len(body)} bytes is larger than "
                                  f"maxRequestBodySize ({_mib(limit)}) of model {route.model_id!r}")
        self.payload = payload = request.payload
        streamed = payload is not None and payload.get("stream") is True
        self.body = _rewritten(routes, route, request,
                               self._usage_request(route) if streamed else None)
        self.target = self.path + ("?" + query.decode("latin-1") if query else "")
        self._routed(route)

    def _usage_request(self, route: Route) -> dict[str, Any] | None:
        """What to add to the body so that a stream says its tokens (``proxy.stream_usage``);
        None: nothing."""
        options = usage_options(self.path, self.payload)
        if options is None:
            return None
        if (route.peer_id in self.routes.peers_left_alone if route.peer is not None
                else route.model_id in self.routes.usage_left_alone):
            return None
        self.usage_asked = True
        return {"stream_options": options}

    # -- 3: the lease -----------------------------------------------------------------------

    def admit(self) -> bool:
        """Take a lease on the model if it is ready now; False: wait for it (``wait_for_model``).
        From here the client is watched: leaving cancels the request."""
        self.lease = self.manager.try_acquire(self.model_id)
        self.watch = _ClientWatch(self.receive)
        if self.lease is None:
            return False
        self._in_flight()
        return True

    async def wait_for_model(self) -> bool:
        """Wait for the model to start (or to be swapped in) and take a lease on it; a stream
        that asks for loading state gets progress meanwhile. False: the wait failed and the
        loading stream said so in-band."""
        self.trace.admitted = None  # until it is
        self.waiting = waiting = asyncio.ensure_future(self.manager.acquire(self.model_id))
        if self._wants_loading_state():
            self.progress = progress = _Progress(self.model_id, self.send)
            try:
                self.lease = await progress.wait(self.manager, waiting)
            except LlamaswapError as exc:
                await self._end_in_band(exc)
                return False
        else:
            self.lease = await waiting
        self.waiting = None
        self.trace.admitted = time.monotonic()
        self._in_flight()
        return True

    def _in_flight(self) -> None:
        """Register the admitted request (``GET /api/inflight``, cuts, the stall watchdog)."""
        routes = self.routes
        self.entry = self.inflight.add(
            self.model_id, self.path, self.scope.get("client"),
            routes.stall_timeouts.get(self.model_id, routes.stall_timeout))
        self.entry.responded = self.progress is not None

    def _wants_loading_state(self) -> bool:
        """A streaming chat request for a model that is not ready, with ``sendLoadingState``."""
        return (
            self.path == "/v1/chat/completions"
            and self.payload is not None
            and self.payload.get("stream") is True
            and self.manager.config.send_loading_state(self.model_id)
            and self.manager.models[self.model_id].state is not ModelState.READY
        )

    # -- 4: send ----------------------------------------------------------------------------

    def send_to_model(self) -> Awaitable[UpstreamResponse]:
        """Send the request to the lease's container, with the container's own key when it
        has one; the response once its headers are in. A failure (``UpstreamError``) goes to
        ``unanswered``."""
        lease = self.lease
        assert lease is not None
        authorization = lease.container.authorization
        if authorization:  # the container's own key replaces whatever the client sent
            headers = request_headers(self.scope["headers"], PROXY_AUTH_HEADERS)
            headers.append((b"authorization", authorization.encode()))
        else:
            headers = request_headers(self.scope["headers"], self.routes.drop)
        connect_timeout, header_timeout = self.routes.timeouts.get(self.model_id,
                                                                   _DEFAULT_TIMEOUTS)
        return self.upstream.send(self.scope["method"], lease.base_url, self.target, headers,
                                  self.body or None, connect_timeout=connect_timeout,
                                  header_timeout=header_timeout)

    async def unanswered(self, exc: UpstreamError) -> None:
        """The model's server sent no response: say so, as an error response or, on a loading
        stream, in-band.

        Raises:
            UpstreamUnavailable: no connection, or a broken one (502).
            UpstreamTimeout: no response headers within ``timeouts.responseHeader`` (504; the
                connection is closed, so the server sees the request cancelled).
        """
        if exc.timeout:
            _, header_timeout = self.routes.timeouts.get(self.model_id, _DEFAULT_TIMEOUTS)
            error: UpstreamUnavailable = UpstreamTimeout(
                f"model {self.model_id!r} sent no response headers within "
                f"timeouts.responseHeader ({header_timeout:g} s); the request was cancelled")
        else:
            error = UpstreamUnavailable(await self._why(exc, "did not answer"))
        if self.progress is not None:
            await self._end_in_band(error)
            return
        self.trace.status = error.status_code
        raise error from None

    def send_to_peer(self) -> Awaitable[UpstreamResponse]:
        """Send the request to the route's peer: no lease (nothing to start or swap); the
        peer's key replaces the client's. Its failures are raised as a model's are
        (``UpstreamUnavailable``, ``UpstreamTimeout``: ``peers.send_to_peer``)."""
        route, routes = self.route, self.routes
        assert route is not None and route.peer is not None
        self.watch = _ClientWatch(self.receive)
        self.entry = self.inflight.add(self.model_id, self.path, self.scope.get("client"),
                                       routes.stall_timeout)
        return _send_to_peer(
            self.upstream, route, self.scope["method"], self.target,
            peer_headers(self.scope["headers"], route.peer, routes.drop, PROXY_AUTH_HEADERS),
            self.body or None)

    async def _why(self, exc: UpstreamError, what: str) -> str:
        """Why the server failed us, for the client and the log."""
        route = self.route
        assert route is not None
        if route.peer is not None:
            return await peer_failure(route, exc, what)
        assert self.lease is not None
        return await _failure(self.manager, self.lease, exc, what)

    # -- 5: relay ---------------------------------------------------------------------------

    def relay(self) -> Awaitable[None]:
        """Relay the answer: whole when small, else chunk by chunk as it arrives.

        Each write to the client is marked in ``entry.writing_since``: the in-flight watchdog
        cuts a client that accepts no bytes for its ``stallTimeout``, so one stalled reader
        cannot hold its model (and every swap waiting on it) forever.
        """
        response, trace = self.response, self.trace
        assert response is not None and self.entry is not None
        if self.progress is not None:
            trace.status, trace.headers = 200, _SSE_HEADERS
            if response.status != 200:  # the stream's 200 is long sent: say it in-band
                return self._refused_in_band(response)
            return self._relay_chunks(response, self.entry, None)
        trace.status, trace.headers = response.status, response.raw_headers
        start: Message = {"type": "http.response.start", "status": response.status,
                          "headers": response_headers(response.raw_headers)}
        if response.small:
            return self._relay_whole(response, start)
        return self._relay_chunks(response, self.entry, start)

    async def _relay_whole(self, response: UpstreamResponse, start: Message) -> None:
        try:
            body = await response.read()
        except UpstreamError as exc:
            raise UpstreamUnavailable(
                await self._why(exc, "stopped answering mid-response")) from None
        self.watch.stop()  # type: ignore[union-attr]
        self.trace.body(body)
        if self.usage_asked and response.is_event_stream:  # a whole stream: rare
            body = _without_usage_chunk(body, start)
        entry = self.entry
        assert entry is not None
        entry.responded = True
        await self.send(start)
        entry.bytes = len(body)
        entry.writing_since = time.monotonic()
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_chunks(self, response: UpstreamResponse, entry: InFlight,
                            start: Message | None) -> None:
        send = self.send
        if start is not None:  # (a loading stream's 200 is long sent)
            entry.responded = True
            await send(start)
        if self.usage_asked and response.is_event_stream:
            await self._relay_holding_usage(response, entry)
            return
        scan = self.trace.chunk
        try:
            async for chunk in response.chunks():
                scan(chunk)
                entry.bytes += len(chunk)
                entry.writing_since = time.monotonic()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                entry.writing_since = None
        except UpstreamError as exc:
            await self._cut_mid_response(exc)
            return
        self.watch.stop()  # type: ignore[union-attr]
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay_holding_usage(self, response: UpstreamResponse, entry: InFlight) -> None:
        """``_relay_chunks`` for a stream whose usage the hop asked for: its usage chunk is
        held back (``proxy.stream_usage``). A loop of its own, so that other streams pay
        nothing for it, and this one a few byte checks per chunk."""
        send = self.send
        scan = self.trace.chunk
        hold = UsageHoldBack()
        try:
            async for chunk in response.chunks():
                scan(chunk)  # what the server sent, the usage chunk included
                if hold.carry or not chunk.endswith(b"\n\n") or b'"usage"' in chunk:
                    chunk = hold.chunk(chunk)  # cut mid-event, or a usage chunk maybe
                    if not chunk:
                        continue
                entry.bytes += len(chunk)
                entry.writing_since = time.monotonic()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                entry.writing_since = None
        except UpstreamError as exc:
            await self._cut_mid_response(exc)
            return
        self.watch.stop()  # type: ignore[union-attr]
        await send({"type": "http.response.body", "body": hold.rest(), "more_body": False})

    async def _refused_in_band(self, response: UpstreamResponse) -> None:
        try:
            detail = (await response.read())[:ERROR_DETAIL_BYTES].decode("utf-8", "replace")
        except UpstreamError as exc:
            detail = f"(and then: {exc})"
        message = f"model {self.model_id!r} answered {response.status}: {detail}"
        self.trace.status = 502
        await _end_stream(self.send, self._dialect, 502, message, "upstream_error")

    async def _cut_mid_response(self, exc: UpstreamError) -> None:
        message = await self._why(exc, "stopped answering mid-response")
        if self.progress is not None or self.response.is_event_stream:  # type: ignore[union-attr]
            self.watch.stop()  # type: ignore[union-attr]
            await _stream_error(self.send, self._dialect, message)
        else:
            # No in-band way to say it: end without the final chunk, so the client sees a
            # broken body rather than a short one that looks complete.
            logger.bind(model=self.model_id).warning("response cut: {}", message)

    async def _end_in_band(self, error: LlamaswapError) -> None:
        """End a loading stream (its 200 long sent) with ``error``."""
        self.trace.status = error.status_code
        await _end_stream(self.send, self._dialect, error.status_code, error.message, error.code)

    # -- cancelled --------------------------------------------------------------------------

    def cancelled_by_us(self) -> bool:
        """Whether a cancellation is the hop's own — the client left (``_ClientWatch``), or
        the request was cut (``InFlightRequests.cut``) — and is absorbed here; not one from
        outside (shutdown)."""
        entry = self.entry
        cut = entry.cut if entry is not None else None
        self.trace.status = CLIENT_GONE if cut is None else 502
        if cut is None and (self.watch is None or not self.watch.gone):
            return False
        # Cancelled from outside as well: not ours to swallow.
        return asyncio.current_task().uncancel() == 0  # type: ignore[union-attr]

    async def tell_cut(self) -> None:
        """After our own cancellation: log the client gone, or tell a cut request's client
        why — an error response before the headers, an in-band error on a stream.

        Raises:
            ModelStopped: cut before the response started.
        """
        entry = self.entry
        if entry is None or entry.cut is None:
            logger.bind(model=self.model_id, path=self.path).info(
                "client disconnected; upstream request cancelled")
            return
        logger.bind(model=self.model_id, path=self.path, request=entry.id).warning(
            "request cut: {}", entry.cut)
        message = f"model {self.model_id!r}: request cut: {entry.cut}"
        if not entry.responded:
            self.trace.status = ModelStopped.status_code
            raise ModelStopped(message) from None
        if entry.stalled:
            return  # nothing more can reach this client; the server closes the connection
        if self.progress is not None or (self.response is not None
                                         and self.response.is_event_stream):
            self.watch.stop()  # type: ignore[union-attr]
            await _stream_error(self.send, self._dialect, message)

    # -- 6: end -----------------------------------------------------------------------------

    def end(self) -> None:
        """Give back all the request took — its in-flight entry, the watch, a wait still
        queued, the upstream connection, the lease, a selector's reservation — then record
        it (last: what it took is given back whatever recording does)."""
        if self.entry is not None:
            self.inflight.remove(self.entry)
        if self.watch is not None:
            self.watch.stop()
        lease = self._lease_taken()
        if self.response is not None:
            self.response.close()
        if lease is not None:
            lease.release()
        route = self.route
        if route is not None and route.release is not None:
            route.release()  # a spillover selector's reservation
        if self.model_id != "-":
            try:
                self.recorder.finish(self.trace, self.model_id)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail a request
                logger.opt(exception=exc).bind(model=self.model_id).error(
                    "recording the request failed")

    def _lease_taken(self) -> Lease | None:
        """The lease, or one a wait still pending was given as it was cancelled."""
        waiting = self.waiting
        if waiting is not None and not waiting.done():
            waiting.cancel()  # acquire() gives back an admission that races the cancel
        return self.lease or _admitted(waiting)



async def _failure(manager: ModelManager, lease: Lease, exc: UpstreamError, what: str) -> str:
    """Why the model server failed us: its container's death when it died, else the error."""
    try:
        reason = await manager.report_upstream_failure(lease)
    except Exception as engine_exc:  # noqa: BLE001 - the engine is slow too: say what we know
        logger.bind(model=lease.model_id).warning("could not check the container: {}", engine_exc)
        reason = None
    return f"model {lease.model_id!r} {what}: {reason or exc}"


def _without_usage_chunk(body: bytes, start: Message) -> bytes:
    """A whole event stream without the usage chunk the hop asked for; ``start``'s
    Content-Length follows."""
    hold = UsageHoldBack()
    kept = hold.chunk(body) + hold.rest()
    if len(kept) != len(body):
        start["headers"] = [(name, str(len(kept)).encode() if name == b"content-length" else value)
                            for name, value in start["headers"]]
    return kept


async def _stream_error(send: Send, dialect: Dialect, message: str) -> None:
    """End a stream whose model stopped serving it with an in-band error event."""
    await send({"type": "http.response.body", "more_body": False,
                "body": sse_error_event(dialect, 502, message, "model_stopped")})


async def _end_stream(send: Send, dialect: Dialect, status: int, message: str, code: str) -> None:
    await send({"type": "http.response.body", "more_body": False,
                "body": end_of_stream_error(dialect, status, message, code)})
