"""The data plane's client: HTTP/1.1 to model containers over pooled keep-alive connections.

Why our own client on ``httptools`` (llhttp, the parser uvicorn serves us with) and not httpx
(which stays for health checks and the CLI) or aiohttp: the client is most of a relay's cost,
and ``benchmarks/bench_relay.py`` measures the candidates side by side (figures in the README).
httpx's pool scans every connection for every request, so its cost grows with concurrency;
aiohttp is flat but spends more per request than the whole server side. A relay needs little
of a general client — no redirects, cookies, proxies or decompression, and TLS only for an
``https://`` peer (asyncio's, verified against the system's CAs) — and must do a few things a
general client cannot:

* send the client's header bytes as received: no decoding, so a Latin-1 ``café`` can neither
  crash the hop nor be re-encoded on the way;
* know whether a failed request used a pooled connection and whether any response byte came
  back: only then is it safe to send it once more, on a fresh connection;
* drop idle connections before the model server's own idle close (``KEEPALIVE_EXPIRY_S``);
* hand the body over as the bytes arrive, with back-pressure (reading pauses while the client
  is slow), and close the connection when the relay stops early, so the server sees the cancel.

A pool is a per-host stack of idle connections: taking or returning one costs the same at any
concurrency. A connection the server closes leaves the pool at once.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import httptools
from loguru import logger

from llamaswap_docker.errors import RequestError

__all__ = [
    "CONNECT_TIMEOUT_S",
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
#: A pooled connection that fails this soon after the request was written, with nothing
#: received, met the server's idle close: the request was not processed and is sent again.
#: Later, the server may have been working on it (then crashed): never sent twice.
STALE_WINDOW_S = 0.25
#: Body bytes buffered from the server before reading pauses (the client is slower).
READ_BUFFER_BYTES = 256 * 1024

#: Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; plus those a Connection header names.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
#: Request headers the relay writes itself (Host, Content-Length) or has answered itself
#: (Expect: uvicorn already said 100 Continue to the client, and the body goes whole).
_REQUEST_OWN = frozenset({"host", "content-length", "expect"})
#: Response headers our server writes itself; relaying the upstream's too would repeat them.
_RESPONSE_OWN = frozenset({"date", "server"})
_REQUEST_DROP = frozenset(name.encode() for name in HOP_BY_HOP | _REQUEST_OWN)
_RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP | _RESPONSE_OWN)


class UpstreamError(Exception):
    """The model server could not be reached, or broke the connection or the protocol.

    ``connect`` tells a refused or timed-out connection (the container may be gone) from one
    that failed after it was opened; ``timeout``: no response headers in the time given.
    """

    def __init__(self, message: str, *, connect: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.connect = connect
        self.timeout = timeout


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def request_headers(
    headers: list[tuple[bytes, bytes]], drop: Iterable[bytes] = ()
) -> list[tuple[bytes, bytes]]:
    """Client request headers (raw ASGI pairs, lower-case names) to send upstream, as bytes.

    Hop-by-hop headers, those the relay writes itself and ``drop`` are removed.
    """
    excluded = _REQUEST_DROP.union(drop) if drop else _REQUEST_DROP
    for name, _ in headers:
        if name == b"connection":
            excluded = excluded | _connection_tokens(headers)
            break
    return [(name, value) for name, value in headers if name not in excluded]


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers (lower-case names, as ``UpstreamResponse`` has them) to relay,
    as ASGI pairs."""
    excluded = _RESPONSE_DROP
    event_stream = False
    for name, value in headers:
        if name == b"connection" and value.lower() not in (b"keep-alive", b"close"):
            excluded = excluded | _connection_tokens(headers)
        elif name == b"content-type" and value.startswith(b"text/event-stream"):
            event_stream = True
    # CORS is the proxy's (api/guard.py): a server's own Access-Control-* would contradict it.
    relayed = [(name, value) for name, value in headers
               if name not in excluded and not name.startswith(b"access-control-")]
    if event_stream:
        # Tell nginx-style reverse proxies in front of us not to buffer the stream.
        relayed.append((b"x-accel-buffering", b"no"))
    return relayed


class _Connection(asyncio.Protocol):
    """One connection to a model server; one request at a time (no pipelining)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.requests = 0  # requests sent on this connection (> 1: it was reused)
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_request = False
        self.received_any = False
        self.headers_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.readable = asyncio.Event()
        self.reading_paused = False
        self.length: int | None = None
        self.chunked = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # a small request goes out at once, not after a delayed ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamError(f"invalid HTTP response from the model server: {exc}"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.complete:
            return
        if exc is None and self.headers_done.done() and self.length is None and not self.chunked:
            self.complete = True  # a body delimited by the connection's (clean) close
            self.readable.set()
            return
        reason = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        self._fail(UpstreamError(reason))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status >= 200:
            # A chunked body's trailer field: the header list is the caller's by now, and
            # the response head it was sent in is gone. Dropped (a relay cannot forward it).
            return
        self.headers.append((name.lower(), value))  # ASGI wants lower-case names

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # interim (101 Switching Protocols is not relayed)
            self.headers = []
            return
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit():
                self.length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
        if self.status in (204, 304):
            # No body, whatever a Content-Length says (304: the representation's): relaying
            # it would make the client wait for bytes that never come.
            self.headers = [(n, v) for n, v in self.headers if n != b"content-length"]
            self.length = 0
        elif self.head_request:
            self.length = 0
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.head_request:
            # llhttp cannot be told a response answers HEAD: end here, never reuse.
            self.complete = True
            self._close()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.readable.set()
        if self.buffered > READ_BUFFER_BYTES and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            return
        self.complete = True
        # llhttp answers this only inside its callbacks: once the message is over, it resets.
        self.keep_alive = self.parser.should_keep_alive()
        self.readable.set()

    # used by UpstreamResponse
    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
            self.headers_done.exception()  # retrieved by send(); silence "never retrieved"
        self.readable.set()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def next_chunk(self) -> bytes:
        """The next body bytes; ``b""`` at the end of the body."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self.readable.clear()
            await self.readable.wait()
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= READ_BUFFER_BYTES // 2 and self.transport:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk

    def send(self, head: bytes, body: bytes | None, head_request: bool) -> None:
        if self.requests:
            self._reset()
            self.parser = httptools.HttpResponseParser(self)
        self.requests += 1
        self.head_request = head_request
        # Closed already: e.g. Docker's userland proxy accepted the connection for a container
        # that refused it, and hung up.
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamError("the server closed the connection")
        try:
            self.transport.write(head + body if body and len(body) < 65536 else head)
            if body and len(body) >= 65536:
                self.transport.write(body)
        except RuntimeError as exc:  # uvloop: the transport closed under us
            raise UpstreamError(f"the server closed the connection ({exc})") from None

    def release(self) -> None:
        """Back to the pool when the response ended cleanly and may be followed; else close."""
        if (self.complete and self.keep_alive and not self.chunks and self.error is None
                and not self.closed):
            self.idle_since = time.monotonic()
            self.pool.put(self)
        else:
            self._close()


class _Pool:
    """Idle connections to one ``host:port``, most recently used first (over TLS with
    ``tls``: a peer's ``https://`` URL)."""

    def __init__(self, host: str, port: int, authority: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.authority = (authority or f"{host}:{port}").encode("idna")
        self.tls = tls
        # A dict as an ordered set: O(1) push, pop of the newest, removal of a closed one.
        self.idle: dict[_Connection, None] = {}
        #: Dropped by the client (its container stopped): connections coming back are closed.
        self.closed = False

    def take(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            connection, _ = self.idle.popitem()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_EXPIRY_S:
                return connection
            connection._close()
        return None

    def put(self, connection: _Connection) -> None:
        if self.closed:
            connection._close()
        else:
            self.idle[connection] = None

    def forget(self, connection: _Connection) -> None:
        self.idle.pop(connection, None)

    async def open(self, timeout: float | None = CONNECT_TIMEOUT_S) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = {"ssl": self.tls, "server_hostname": self.host} if self.tls else {}
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # (the client left) that lands as the connection completes.
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(self),
                                                             self.host, self.port, **tls)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}: {exc}",
                connect=True) from exc
        return connection

    def close(self) -> None:
        self.closed = True
        for connection in list(self.idle):
            connection._close()
        self.idle.clear()


class UpstreamResponse:
    """A model server's answer whose body is still to be read; ``close()`` it when done."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = connection.status
        self.raw_headers = connection.headers
        self.length = connection.length
        self._closed = False

    @property
    def is_event_stream(self) -> bool:
        for name, value in self.raw_headers:
            if name == b"content-type":
                return value.lower().startswith(b"text/event-stream")
        return False

    @property
    def small(self) -> bool:
        """Whether the whole body is known to be small (read it whole, relay it at once)."""
        return self.length is not None and self.length <= SMALL_RESPONSE_BYTES

    async def read(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: the connection broke before the end of the body.
        """
        next_chunk = self._connection.next_chunk
        parts = []
        while chunk := await next_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (an SSE event reaches the client as soon as it is here).

        Raises:
            UpstreamError: the connection broke before the end of the body.
        """
        connection = self._connection
        while True:
            chunk = await connection.next_chunk()
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Give the connection back when the body was read to its end; otherwise close it, so
        the model server sees the request cancelled."""
        if not self._closed:
            self._closed = True
            self._connection.release()


class UpstreamClient:
    """The pooled client every inference request goes through."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._pools: dict[str, _Pool] = {}
        #: Verifies https:// peers (default: the system's CAs, made for the first one).
        self._tls = tls

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    @property
    def base_urls(self) -> list[str]:
        """The base URLs the client holds a connection pool for."""
        return list(self._pools)

    def forget(self, base_url: str) -> None:
        """Drop ``base_url``'s pool: its server is gone (a container stopped; its next start
        publishes another port). Idle connections close now, those in use when released."""
        pool = self._pools.pop(base_url, None)
        if pool is not None:
            pool.close()

    def _pool(self, base_url: str) -> _Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamError(f"unsupported upstream URL {base_url!r} (http://host:port)")
            tls = None
            if parts.scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                tls = self._tls
            default_port = 443 if tls else 80
            pool = self._pools[base_url] = _Pool(
                parts.hostname, parts.port or default_port, parts.netloc.rpartition("@")[2], tls)
        return pool

    async def send(
        self, method: str, base_url: str, target: str,
        headers: list[tuple[bytes, bytes]], body: bytes | None, *,
        connect_timeout: float | None = CONNECT_TIMEOUT_S,
        header_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers are in.

        ``target`` is the path and query as the client wrote them (still percent-encoded);
        ``headers`` are sent as the bytes given, after the Host and Content-Length we write.
        ``connect_timeout`` bounds opening a connection (TLS included), ``header_timeout`` the
        wait for the response headers once the request is written; None: no limit.

        Raises:
            UpstreamError: no connection, the connection broke before the headers, or no
                headers within ``header_timeout`` (``timeout`` set; the connection is closed).
            RequestError: the target or a header holds CR, LF or NUL (never sent).
        """
        pool = self._pool(base_url)
        head = self._head(method, target, pool.authority, headers, body)
        head_request = method == "HEAD"
        connection = pool.take()
        reused = connection is not None
        if connection is None:
            connection = await pool.open(connect_timeout)
        written = time.monotonic()
        try:
            connection.send(head, body, head_request)
            if header_timeout is None:  # most models: no coroutine of its own for the wait
                await connection.headers_done
            else:
                await _headers(connection, header_timeout)
        except UpstreamError as exc:
            connection._close()
            # A pooled connection the server had already closed (nothing received, and at
            # once): the request was not processed. Once more, on a fresh connection.
            stale = time.monotonic() - written < STALE_WINDOW_S
            if exc.timeout or not (reused and stale and not connection.received_any):
                raise
            logger.bind(upstream=base_url, error=str(exc)).debug(
                "pooled upstream connection was closed by the server; resending on a new one")
            connection = await pool.open(connect_timeout)
            try:
                connection.send(head, body, head_request)
                await _headers(connection, header_timeout)
            except BaseException:
                connection._close()
                raise
        except BaseException:
            connection._close()  # cancelled (client gone) or worse: the server sees a close
            raise
        return UpstreamResponse(connection)

    @staticmethod
    def _head(method: str, target: str, authority: bytes,
              headers: list[tuple[bytes, bytes]], body: bytes | None) -> bytes:
        raw_target = target.encode("latin-1")
        lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode("ascii"), raw_target,
                                                       authority)]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: %d\r\n" % (len(body) if body else 0))
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        head = b"".join(lines)
        # uvicorn's parser already refuses CR, LF and NUL in what clients send; whatever
        # reaches here, never write a second request into the model server's stream.
        # Every CR and LF must be one of ours: one CRLF per element of `lines`, two in the
        # first (request line and Host).
        crlfs = len(lines) + 1
        if head.count(b"\n") != crlfs or head.count(b"\r") != crlfs or b"\x00" in head:
            raise RequestError("a request header or the path holds CR, LF or NUL; not forwarded")
        return head


async def _headers(connection: _Connection, timeout: float | None) -> None:
    """Wait for the response headers, at most ``timeout`` seconds (None: no limit)."""
    if timeout is None:
        await connection.headers_done
        return
    try:
        async with asyncio.timeout(timeout):
            await connection.headers_done
    except TimeoutError:
        raise UpstreamError(f"no response headers within {timeout:g} s", timeout=True) from None
