"""Host and Origin checks: web pages the operator visits cannot drive the proxy.

Two browser attacks, closed before authentication (a proxy without ``apiKeys`` has nothing
else in their way):

* **DNS rebinding.** A page on ``evil.example`` re-points its name at 127.0.0.1 and reads the
  answers, which are then same-origin for the browser. Its requests carry
  ``Host: evil.example``: when the proxy listens on loopback (or ``allowedHosts`` is set), only
  the loopback names and ``allowedHosts`` are served; anything else gets 403.
* **Cross-site requests.** A page's ``fetch``/form posts carry its ``Origin``. One that is not
  an allowed Host value (or, with no Host check in force, not the request's own Host) and not
  in ``cors.allowOrigins`` gets 403 on every route but ``GET /health``; so does a request a
  browser marks ``Sec-Fetch-Site: cross-site`` without an ``Origin`` (``<img src=…/unload>``). Preflights
  (``OPTIONS``) are answered, with CORS headers, only for allowed origins; responses to listed
  origins carry ``Access-Control-Allow-Origin``.

Ollama shipped the first as CVE-2024-28224 and checks both since. Pure ASGI: one pass over the
headers per request.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from loguru import logger
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamaswap_docker.api.errors import error_response
from llamaswap_docker.config import Config
from llamaswap_docker.proxy.dialects import dialect_for_path

__all__ = ["HostOriginGuard", "LOOPBACK_HOSTS", "is_loopback"]

#: Host names that always reach a proxy on loopback.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE = "600"
_ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, brackets allowed) is this machine only."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(authority: str) -> str:
    """``Host`` header value → the host name, lower-case, without port or IPv6 brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class _Policy:
    """What one config (and the listen address) allows, precomputed."""

    def __init__(self, config: Config, listen_host: str, extra_hosts: list[str]) -> None:
        self.config = config
        configured = [*config.allowed_hosts, *extra_hosts]
        self.check_host = is_loopback(listen_host) or bool(configured)
        self.hosts = LOOPBACK_HOSTS | {_hostname(host) for host in configured}
        self.origins = frozenset(config.cors.allow_origins)
        # Host header values already found allowed: clients repeat theirs on every request.
        self.seen_hosts: set[bytes] = set()

    def host_allowed(self, host: bytes) -> bool:
        if host in self.seen_hosts:
            return True
        allowed = _hostname(host.decode("latin-1")) in self.hosts
        if allowed and len(self.seen_hosts) < 256:
            self.seen_hosts.add(host)
        return allowed

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file://) and anything odd
        if self.check_host:
            return _hostname(parts.netloc) in self.hosts
        return host is not None and parts.netloc == host.strip().lower()


class HostOriginGuard:
    """Refuse foreign ``Host`` and ``Origin`` values; answer CORS preflights.

    The config is read from the running app state on each request, so a reload applies.
    """

    def __init__(self, app: ASGIApp, config: Config, state: object, listen_host: str,
                 extra_hosts: list[str] | None = None) -> None:
        self.app = app
        self.config = config
        self.state = state
        self.listen_host = listen_host
        self.extra_hosts = extra_hosts or []
        self._policy = _Policy(config, listen_host, self.extra_hosts)

    def _current(self) -> _Policy:
        running = getattr(self.state, "llamaswap", None)
        config = running.config if running is not None else self.config
        if self._policy.config is not config:  # a reload swapped the config
            self._policy = _Policy(config, self.listen_host, self.extra_hosts)
        return self._policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host: bytes | None = None
        origin: str | None = None
        cross_site = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value.decode("latin-1").lower()
            elif name == b"sec-fetch-site":
                cross_site = value == b"cross-site"
        policy = self._current()
        path: str = scope["path"]
        if policy.check_host and host is not None and not policy.host_allowed(host):
            shown = host.decode("latin-1")
            await self._refuse(scope, receive, send, f"Host {shown!r} is not served here: "
                               "add it to allowedHosts in the config to allow it", host=shown)
            return
        if path == "/health" and scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if origin is None:
            # Browsers send no Origin with a plain cross-site GET (<img src=…/unload>), but say
            # where it comes from in Sec-Fetch-Site.
            if cross_site:
                await self._refuse(scope, receive, send, "cross-site requests from web pages "
                                   "are not allowed", origin="(cross-site, no Origin)")
                return
            await self.app(scope, receive, send)
            return
        if not policy.origin_allowed(origin, host.decode("latin-1") if host else None):
            await self._refuse(scope, receive, send, f"requests from web pages on {origin!r} are "
                               "not allowed: add the origin to cors.allowOrigins in the config "
                               "to allow it", origin=origin)
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        preflight = Headers(scope=scope) if scope.get("method") == "OPTIONS" else None
        if preflight is not None and "access-control-request-method" in preflight:
            requested = preflight.get("access-control-request-headers", "").encode("latin-1")
            await send({"type": "http.response.start", "status": 204, "headers": cors + [
                (b"access-control-allow-methods", _ALLOW_METHODS),
                (b"access-control-allow-headers", requested),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            ]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str,
                      **fields: str) -> None:
        logger.bind(path=scope["path"], **fields).warning("request refused: foreign {}",
                                                          "Host" if "host" in fields else "Origin")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "forbidden"})
            return
        response = error_response(dialect_for_path(scope["path"]), 403, message, "forbidden")
        await response(scope, receive, send)

