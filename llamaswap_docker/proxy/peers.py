"""Peers: other servers whose models this proxy serves (llama-swap's ``peers``).

A peer's request takes the same hop as a local model's (``forward``: read the body, route,
send, relay, record one activity row) without the scheduler: nothing is started, swapped or
leased. What differs is here: where the request goes (the peer's base URL, its path prefix
kept), the peer's own name for its model in the body, its key in the headers, its timeouts,
and how a failure reads.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from urllib.parse import urlsplit

from llamaswap_docker.config import PeerConfig
from llamaswap_docker.errors import UpstreamTimeout, UpstreamUnavailable
from llamaswap_docker.proxy.routing import Route
from llamaswap_docker.proxy.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    request_headers,
)

__all__ = ["peer_failure", "peer_headers", "send_to_peer"]


@functools.lru_cache(maxsize=256)
def _split(proxy: str) -> tuple[str, str]:
    """A peer's base URL → (``scheme://host[:port]``, its path prefix without the last /)."""
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


def peer_headers(headers: list[tuple[bytes, bytes]], peer: PeerConfig,
                 drop: Iterable[bytes], own_auth: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """The client's headers to send to a peer: its ``apiKey`` replaces what the client sent
    (as ``Authorization: Bearer`` and ``x-api-key``, as llama-swap sends it); without one,
    the client's own credentials go on, unless they were this proxy's (``drop``)."""
    if not peer.api_key:
        return request_headers(headers, drop)
    key = peer.api_key.encode("latin-1", "replace")
    sent = request_headers(headers, own_auth)
    sent += [(b"authorization", b"Bearer " + key), (b"x-api-key", key)]
    return sent


async def send_to_peer(upstream: UpstreamClient, route: Route, method: str, target: str,
                       headers: list[tuple[bytes, bytes]], body: bytes | None) -> UpstreamResponse:
    """Send a request to the route's peer: ``target`` (path and query, as for a model
    server) goes after the peer's base URL.

    Raises:
        UpstreamUnavailable: no connection, or a broken one (502, as llama-swap answers).
        UpstreamTimeout: no response headers within ``timeouts.responseHeader`` (504, as
            for a model; the connection is closed, so the peer sees the request cancelled).
    """
    peer = route.peer
    assert peer is not None
    base_url, prefix = _split(peer.proxy)
    try:
        return await upstream.send(method, base_url, prefix + target, headers, body,
                                   connect_timeout=peer.connect_timeout,
                                   header_timeout=peer.response_header_timeout)
    except UpstreamError as exc:
        error = UpstreamTimeout if exc.timeout else UpstreamUnavailable
        raise error(await peer_failure(route, exc, "did not answer")) from None


async def peer_failure(route: Route, exc: UpstreamError, what: str) -> str:
    """Why a peer failed a request, for the client and the log."""
    peer = route.peer
    assert peer is not None
    hint = " (timeouts.responseHeader)" if exc.timeout else ""
    return f"peer {route.peer_id!r} ({peer.proxy}) {what} for model {route.model_id!r}: {exc}{hint}"
