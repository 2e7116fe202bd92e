"""API keys: ``apiKeys`` in the config guard every route but ``/health``.

A client sends its key as ``Authorization: Bearer <key>``, as the password of HTTP Basic auth
(any user name), or as ``x-api-key`` (what the Anthropic SDK sends). Keys are compared in
constant time against every configured key. A missing or wrong key answers 401 in the caller's
dialect with ``WWW-Authenticate: Bearer``. The key never reaches a model server: the inference
routes drop these headers before forwarding (``inference.PROXY_AUTH_HEADERS``).

``ApiKeyMiddleware`` is a pure ASGI middleware (not ``BaseHTTPMiddleware``) so streaming
responses and client disconnects pass through it untouched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from typing import Any

from loguru import logger
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from llamaswap_docker.api.errors import error_response
from llamaswap_docker import ui
from llamaswap_docker.api.guard import is_loopback
from llamaswap_docker.proxy.dialects import dialect_for_path
from llamaswap_docker.config import Config

__all__ = ["ApiKeyMiddleware", "OPEN_PATHS", "presented_keys", "key_matches", "warn_if_exposed"]

#: Paths answered without a key: liveness probes must work for load balancers and compose;
#: the UI's and the API docs' pages and assets hold no data (they call the API with a key).
OPEN_PATHS = frozenset({"/health"}) | ui.OPEN_PATHS
OPEN_PREFIXES = ui.OPEN_PREFIXES

_MISSING = (
    "missing API key: send it as 'Authorization: Bearer <key>', as the Basic auth password, "
    "or in the 'x-api-key' header"
)
_INVALID = "invalid API key: it matches none of the proxy's apiKeys"


def presented_keys(headers: Headers) -> list[str]:
    """Every candidate key a request carries (Bearer token, Basic password, ``x-api-key``)."""
    keys: list[str] = []
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        keys.append(credentials)
    elif scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        _, sep, password = decoded.partition(":")
        if sep and password:
            keys.append(password)
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        keys.append(api_key)
    return keys


def key_matches(candidates: Sequence[str], keys: Sequence[str]) -> bool:
    """Whether any candidate equals any key, comparing every pair in constant time."""
    matched = False
    for candidate in candidates:
        for key in keys:
            # No early exit: the time taken does not depend on which key matched.
            matched |= hmac.compare_digest(candidate.encode(), key.encode())
    return matched


class ApiKeyMiddleware:
    """Reject requests without a valid key when the config has ``apiKeys``.

    The keys are read from the running config on every request (so a reloaded config takes
    effect at once); before the app's lifespan has set its state, ``config``'s keys apply.
    """

    def __init__(self, app: ASGIApp, config: Config, state: Any) -> None:
        self.app = app
        self.config = config
        self.state = state  # has ``llamaswap`` (the running AppState) once the lifespan set it

    def _keys(self) -> Sequence[str]:
        running = getattr(self.state, "llamaswap", None)
        config = running.config if running is not None else self.config
        return config.api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] not in ("http", "websocket") or path in OPEN_PATHS
                or path.startswith(OPEN_PREFIXES)):
            await self.app(scope, receive, send)
            return
        keys = self._keys()
        if not keys:
            await self.app(scope, receive, send)
            return
        candidates = presented_keys(Headers(scope=scope))
        if key_matches(candidates, keys):
            await self.app(scope, receive, send)
            return
        message = _INVALID if candidates else _MISSING
        client = scope.get("client")
        logger.bind(path=scope["path"], client=client[0] if client else "-").warning(
            "request rejected: {}", "invalid API key" if candidates else "missing API key"
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        response = error_response(dialect_for_path(scope["path"]), 401, message,
                                  "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def warn_if_exposed(host: str, config: Config) -> None:
    """Log a warning when the proxy binds beyond loopback without ``apiKeys``.

    Args:
        host: the interface the server binds (``Settings.host``).
        config: the config being served.
    """
    if config.api_keys or is_loopback(host):
        return
    logger.bind(host=host).warning(
        "listening on {} without apiKeys: anyone who can reach this address can run your "
        "models and use the management API; set apiKeys in the config, or listen on "
        "127.0.0.1", host,
    )
