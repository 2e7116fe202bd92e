"""The data plane's client: requests to model containers over pooled keep-alive connections.

Why aiohttp and not httpx (which stays for health checks and the CLI): httpx's pool scans every
connection for every request, so its cost grows with concurrency. Measured by
``benchmarks/bench_relay.py`` (figures in the README); aiohttp's pool is a per-host stack of
idle connections.

What a relay must get right, and where it is done here:

* Connections idle longer than ``KEEPALIVE_EXPIRY_S`` are dropped before the model server's own
  idle close (5 s for llama-server and vLLM), so a request rarely meets a stale connection; one
  that does fails before any response byte and is sent once more on a fresh connection.
* Nothing is added or decoded on the way: no User-Agent or Accept-Encoding of ours, bodies
  relayed as the bytes the server sent (compressed stays compressed), no cookies kept between
  clients, no redirects followed, no total timeout (a first token may take minutes).
* aiohttp's errors are translated here, once, to ``UpstreamError``.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Iterable

import aiohttp
from loguru import logger
from yarl import URL

from llamaswap_docker.errors import RequestError

__all__ = [
    "HOP_BY_HOP",
    "KEEPALIVE_EXPIRY_S",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
    "request_headers",
    "response_headers",
]

#: Seconds an idle upstream connection is kept: below the model servers' own idle close
#: (cpp-httplib's keep-alive timeout and vLLM's uvicorn ``timeout_keep_alive`` are both 5 s).
KEEPALIVE_EXPIRY_S = 3.0
#: Seconds to open a connection to a model container.
CONNECT_TIMEOUT_S = 10.0
#: Responses up to this size (by Content-Length) are read whole and relayed in one piece.
SMALL_RESPONSE_BYTES = 256 * 1024

#: Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; plus those a Connection header names.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
#: Request headers the relay sets itself (Host, Content-Length) or answers itself (Expect:
#: uvicorn already said 100 Continue to the client, and the body is sent whole).
_REQUEST_OWN = frozenset({"host", "content-length", "expect"})
#: Response headers our server writes itself; relaying the upstream's too would repeat them.
_RESPONSE_OWN = frozenset({"date", "server"})
_REQUEST_DROP = frozenset(name.encode() for name in HOP_BY_HOP | _REQUEST_OWN)
_RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP | _RESPONSE_OWN)
#: What aiohttp would add on its own; a relay sends only what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: Connection failures after which the request cannot have been processed: safe to resend.
_STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class UpstreamError(Exception):
    """The model server could not be reached, or dropped the connection.

    ``connect`` tells a refused or timed-out connection (the container may be gone) from one
    that failed after it was opened.
    """

    def __init__(self, message: str, *, connect: bool = False) -> None:
        super().__init__(message)
        self.connect = connect


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def _header_text(value: bytes) -> str:
    # aiohttp writes header values as UTF-8: decoding UTF-8 here sends the client's bytes
    # unchanged. Bytes that are not UTF-8 (obs-text) can only be sent re-encoded: read as
    # Latin-1, the way RFC 9110 says such octets were historically meant.
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def request_headers(
    headers: Iterable[tuple[bytes, bytes]], drop: Iterable[bytes] = ()
) -> list[tuple[str, str]]:
    """Client request headers (raw ASGI pairs, lower-case names) to send upstream.

    Hop-by-hop headers, those the relay sets itself and ``drop`` are removed.
    """
    headers = headers if isinstance(headers, list) else list(headers)
    excluded = _REQUEST_DROP.union(drop)
    if any(name == b"connection" for name, _ in headers):
        excluded = excluded | _connection_tokens(headers)
    return [(name.decode("latin-1"), _header_text(value))
            for name, value in headers if name not in excluded]


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers (raw pairs) to relay, as ASGI pairs with lower-case names."""
    pairs = [(name.lower(), value) for name, value in headers]
    excluded = _RESPONSE_DROP
    if any(name == b"connection" for name, _ in pairs):
        excluded = excluded | _connection_tokens(pairs)
    relayed = [(name, value) for name, value in pairs if name not in excluded]
    for name, value in relayed:
        if name == b"content-type" and value.startswith(b"text/event-stream"):
            # Tell nginx-style reverse proxies in front of us not to buffer the stream.
            relayed.append((b"x-accel-buffering", b"no"))
            break
    return relayed


class UpstreamResponse:
    """A model server's answer whose body has not been read yet; ``close()`` it when done."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers
        self.raw_headers = response.raw_headers

    @property
    def is_event_stream(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("text/event-stream")

    @property
    def small(self) -> bool:
        """Whether the whole body is known to be small (read it whole, relay it at once)."""
        length = self._response.content_length
        return length is not None and length <= SMALL_RESPONSE_BYTES

    async def read(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: the connection broke before the end of the body.
        """
        try:
            return await self._response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(_describe(exc)) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (an SSE event reaches the client as soon as it is here).

        Raises:
            UpstreamError: the connection broke before the end of the body.
        """
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(_describe(exc)) from exc

    def close(self) -> None:
        """Give the connection back to the pool when the body was read to its end; otherwise
        close it, so the model server sees the request cancelled."""
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _stale(exc: BaseException) -> bool:
    """A pooled connection the server had already closed: the request was not processed."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return (
        isinstance(exc, aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and exc.errno in _STALE_ERRNOS
    )


def _session(force_close: bool) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=None if force_close else KEEPALIVE_EXPIRY_S,
        force_close=force_close, ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        skip_auto_headers=_NO_AUTO_HEADERS,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        requote_redirect_url=False,
    )


class UpstreamClient:
    """The pooled client every inference request goes through; ``open()`` in a running loop."""

    def __init__(self) -> None:
        self._pooled: aiohttp.ClientSession | None = None
        # Retries go through a session that never reuses a connection: "a fresh one".
        self._fresh: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._pooled = _session(force_close=False)
        self._fresh = _session(force_close=True)

    async def close(self) -> None:
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> UpstreamResponse:
        """Send a request and return once the response headers are in.

        ``url`` is used as written (already percent-encoded, as the client sent it).

        Raises:
            UpstreamError: no connection, or the connection broke before the headers.
            RequestError: a header the client sent cannot be written (a control character).
        """
        assert self._pooled is not None and self._fresh is not None, "UpstreamClient not open"
        target = URL(url, encoded=True)
        try:
            response = await self._pooled.request(
                method, target, headers=headers, data=body, allow_redirects=False)
        except ValueError as exc:  # aiohttp refuses control characters in header values
            raise RequestError(f"a request header cannot be forwarded: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            if not _stale(exc):
                raise _translate(exc) from exc
            logger.bind(url=url, error=_describe(exc)).debug(
                "upstream connection was closed by the server; resending on a fresh one")
            try:
                response = await self._fresh.request(
                    method, target, headers=headers, data=body, allow_redirects=False)
            except (aiohttp.ClientError, OSError) as retry_exc:
                raise _translate(retry_exc) from retry_exc
        return UpstreamResponse(response)


def _translate(exc: BaseException) -> UpstreamError:
    return UpstreamError(_describe(exc), connect=isinstance(exc, aiohttp.ClientConnectorError))
