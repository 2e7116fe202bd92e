"""Forward a request to a model's container and relay the answer chunk by chunk.

One ``httpx.AsyncClient`` (pooled keep-alive connections per upstream) is shared by every
request. Responses are streamed with ``aiter_raw``: SSE and chunked bodies reach the client as
they arrive, and a client disconnect closes the upstream response at once, so the model server
sees the cancellation. There is no total timeout: a first token may take minutes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable


import anyio
import httpx
from loguru import logger
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = [
    "HOP_BY_HOP",
    "new_upstream_client",
    "request_headers",
    "response_headers",
    "RelayResponse",
]

#: Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; plus those a Connection header names.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
#: Request headers the proxy sets itself: Host is rewritten, Content-Length recomputed.
_REQUEST_OWN = frozenset({"host", "content-length"})
#: Response headers our server writes itself; relaying the upstream's too would repeat them.
_RESPONSE_OWN = frozenset({"date", "server"})


def new_upstream_client() -> httpx.AsyncClient:
    """The shared upstream client: connect fast, then wait as long as generation takes."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=10.0, read=None, write=None, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64,
                            keepalive_expiry=30.0),
        follow_redirects=False,
        trust_env=False,
    )


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def request_headers(
    headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Client request headers to send upstream (hop-by-hop, Host, ``drop`` removed)."""
    headers = list(headers)
    excluded = HOP_BY_HOP | _REQUEST_OWN | _connection_tokens(headers) | {d.lower() for d in drop}
    return [(name, value) for name, value in headers if name.lower() not in excluded]


def response_headers(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """Upstream response headers to relay, as raw ASGI pairs."""
    pairs = headers.raw
    excluded = HOP_BY_HOP | _RESPONSE_OWN | _connection_tokens(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs)
    relayed = [(name.lower(), value) for name, value in pairs
               if name.decode("latin-1").lower() not in excluded]
    content_type = headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        # Tell nginx-style reverse proxies in front of us not to buffer the stream.
        relayed.append((b"x-accel-buffering", b"no"))
    return relayed


class RelayResponse(Response):
    """An ASGI response relaying an upstream ``httpx.Response`` opened with ``stream=True``.

    ``on_close`` runs exactly once when the relay ends — finished, failed or cancelled by a
    client disconnect — after the upstream response is closed.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        on_close: Callable[[], Awaitable[None]],
        on_error: Callable[[Exception], Awaitable[bytes | None]] | None = None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.background = None
        self.on_close = on_close
        self.on_error = on_error
        self.extra_headers = extra_headers or []

    async def _stream(self, send: Send) -> None:
        await send({
            "type": "http.response.start",
            "status": self.upstream.status_code,
            "headers": response_headers(self.upstream.headers) + self.extra_headers,
        })
        try:
            async for chunk in self.upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            # The upstream died mid-response: tell the client in-band when we can (an SSE error
            # event); otherwise end without the final chunk, so the client sees a broken body
            # rather than a short one that looks complete.
            trailer = await self.on_error(exc) if self.on_error else None
            if not trailer:
                raise
            await send({"type": "http.response.body", "body": trailer, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = finished = False
        try:
            async with anyio.create_task_group() as group:

                async def relay() -> None:
                    nonlocal finished
                    await self._stream(send)
                    finished = True
                    group.cancel_scope.cancel()

                async def watch_disconnect() -> None:
                    nonlocal disconnected
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            disconnected = not finished
                            group.cancel_scope.cancel()
                            return

                group.start_soon(relay)
                group.start_soon(watch_disconnect)
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
                if disconnected:
                    logger.bind(url=str(self.upstream.request.url)).info(
                        "client disconnected, upstream request closed"
                    )
                await self.on_close()


class ClientBodyInterrupted(Exception):
    """The client disconnected before sending its whole request body."""


async def iterate_body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives (for ``/upstream`` passthrough).

    Raises:
        ClientBodyInterrupted: the client left mid-body (the upstream request is aborted,
            not ended as if the body were complete).
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientBodyInterrupted("the client disconnected before the end of its body")
        body: bytes = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return
