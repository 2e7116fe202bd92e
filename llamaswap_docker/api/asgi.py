"""``ProxyApp``, the root ASGI app the server runs.

Inference paths go straight to the hop (``proxy.forward``): no routing-table scan, middleware
stack, request object or dependency machinery on the hot path. Everything else — the
management API, ``/v1/models``, the UI, the OpenAPI document — goes to FastAPI. Host, Origin
and API keys are checked for both, in front of either.
"""

from __future__ import annotations

from fastapi import FastAPI
from loguru import logger
from starlette.types import Receive, Scope, Send

from llamaswap_docker.api.auth import ApiKeyMiddleware
from llamaswap_docker.api.errors import error_answer
from llamaswap_docker.api.guard import HostOriginGuard
from llamaswap_docker.api.inference import INFERENCE_PATHS, UPSTREAM_METHODS
from llamaswap_docker.api.state import AppState
from llamaswap_docker.config import Config
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.proxy import forward

__all__ = ["ProxyApp", "Running"]


class Running:
    """Holder of the running ``AppState`` (None before startup and after shutdown)."""

    __slots__ = ("llamaswap",)

    def __init__(self) -> None:
        self.llamaswap: AppState | None = None


class ProxyApp:
    """The ASGI app the server runs: inference requests straight to the hop, everything else
    (management API, ``/v1/models``, OpenAPI) to FastAPI; Host, Origin and API keys checked
    for both.

    ``state`` is the FastAPI app's, where the lifespan puts the running ``AppState``.
    """

    def __init__(self, api: FastAPI, config: Config, listen_host: str = "127.0.0.1",
                 extra_hosts: list[str] | None = None) -> None:
        self.api = api
        self.state = api.state
        #: The running ``AppState`` as a plain attribute (``running.llamaswap``), set by the
        #: lifespan next to ``state.llamaswap``: read on every request, faster than State's.
        self.running = Running()
        # Host/Origin first (a page in the operator's browser has no key to fail), then keys.
        self._checked = HostOriginGuard(ApiKeyMiddleware(self._dispatch, config, self.running),
                                        config, self.running, listen_host, extra_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.api(scope, receive, send)
        else:
            await self._checked(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if (method == "POST" and path in INFERENCE_PATHS) or (
                    path.startswith("/upstream/") and method in UPSTREAM_METHODS):
                await self._forward(scope, receive, send)
                return
        await self.api(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.running.llamaswap
        assert state is not None
        try:
            await forward(state.manager, state.upstream, state.inflight, state.recorder,
                          state.router, scope, receive, send)
        except Exception as exc:
            # Raised before anything was sent (the hop reports later failures in-band).
            try:
                await error_answer(exc, scope["path"])(scope, receive, send)
            except RuntimeError:  # the response had started after all: the server cuts it
                if not isinstance(exc, LlamaswapError):
                    raise exc from None  # the server closes the connection
                logger.bind(path=scope["path"]).warning("response cut after it started: {}",
                                                        exc.message)
