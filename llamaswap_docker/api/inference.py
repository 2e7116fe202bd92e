"""Inference routes: OpenAI, Anthropic and llama-server paths, ``/upstream``, ``/v1/models``.

``ProxyApp``, the app the server runs, sends the inference paths straight to the hop
(``proxy.forward``): no routing-table scan, middleware stack, request object or dependency
machinery on the hot path. It renders what the hop raises in the caller's dialect. FastAPI
keeps ``/v1/models`` and the management API (and their OpenAPI schema).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from loguru import logger
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from llamaswap_docker.api.auth import ApiKeyMiddleware
from llamaswap_docker.api.errors import error_headers, error_response
from llamaswap_docker.api.guard import HostOriginGuard
from llamaswap_docker.api.state import AppState, app_state
from llamaswap_docker.config import Config
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.proxy import dialect_for_path, forward

__all__ = ["router", "INFERENCE_PATHS", "ProxyApp", "document"]

#: Routes whose model is named in the request (body, form field or ?model=).
INFERENCE_PATHS = frozenset({
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/completion",
    "/infill",
})
#: Methods ``/upstream/<model>/<path>`` passes through.
UPSTREAM_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

router = APIRouter()


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
        path: str = scope["path"]
        try:
            await forward(state.manager, state.upstream, state.inflight, state.recorder, scope,
                          receive, send)
        except LlamaswapError as exc:
            # Raised before anything was sent (the hop reports later failures in-band).
            logger.bind(path=path, status=exc.status_code).warning(
                "request failed: {}", (exc.message.splitlines() or [""])[0])
            try:
                await error_response(dialect_for_path(path), exc.status_code, exc.message,
                                     exc.code, error_headers(exc))(scope, receive, send)
            except RuntimeError:  # the response had started after all: the server cuts it
                logger.bind(path=path).warning("response cut after it started: {}", exc.message)
        except Exception as exc:
            logger.opt(exception=exc).bind(path=path).error(
                "unexpected error: {}: {}", type(exc).__name__, exc)
            try:
                await error_response(dialect_for_path(path), 500,
                                     "internal error in llamaswap-docker; see the proxy log",
                                     "internal_error")(scope, receive, send)
            except RuntimeError:  # the response had started: the server closes the connection
                raise exc from None


_DIALECTS = {"/v1/messages": "Anthropic Messages", "/v1/messages/count_tokens": "Anthropic",
             "/completion": "llama-server", "/infill": "llama-server"}


def document(app: FastAPI) -> None:
    """Put the inference routes in the OpenAPI document: ``ProxyApp`` serves them before
    FastAPI's routing, so no FastAPI route declares them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        body = {"required": True, "content": {
            "application/json": {"schema": {"type": "object", "required": ["model"],
                                            "properties": {"model": {"type": "string"}},
                                            "additionalProperties": True}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["model"],
                                               "properties": {"model": {"type": "string"}}}},
        }}
        responses = {
            "200": {"description": "the model server's answer, relayed (JSON, or an event "
                                   "stream when the request asks for one)"},
            "400": {"description": "malformed body, or no model named"},
            "404": {"description": "the model is not configured"},
            "413": {"description": "body larger than maxRequestBodySize"},
            "502": {"description": "the model's server failed"},
            "503": {"description": "the model could not be started"},
        }
        for path in sorted(INFERENCE_PATHS):
            dialect = _DIALECTS.get(path, "OpenAI")
            schema["paths"].setdefault(path, {})["post"] = {
                "tags": ["inference"], "summary": f"{dialect}: {path} (model from the body)",
                "description": "Starts the named model if needed (swapping out what cannot "
                               "run beside it), then relays the request to it.",
                "operationId": f"inference_{path.strip('/').replace('/', '_')}",
                "requestBody": body, "responses": responses,
            }
        schema["paths"]["/upstream/{model}/{path}"] = {"post": {
            "tags": ["inference"], "summary": "Any path of the model's own server",
            "operationId": "upstream_passthrough",
            "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                           for n in ("model", "path")],
            "responses": responses,
        }}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
async def list_models(request: Request) -> JSONResponse:
    """Configured models (not ``unlisted``), sorted by id, with aliases if configured."""
    state = app_state(request)
    created = int(state.started_at)
    entries: list[dict[str, Any]] = []
    for model_id, model in state.config.models.items():
        if model.unlisted:
            continue
        ids = [model_id]
        if state.config.include_aliases_in_list:
            ids += model.aliases
        for listed in ids:
            entry: dict[str, Any] = {
                "id": listed, "object": "model", "created": created, "owned_by": "llamaswap-docker",
            }
            if model.name:
                entry["name"] = model.name
            if model.description:
                entry["description"] = model.description
            meta = dict(model.metadata)
            if listed != model_id:
                meta["alias_of"] = model_id
            if meta:
                entry["meta"] = meta
            entry["state"] = state.manager.models[model_id].state.value
            entries.append(entry)
    entries.sort(key=lambda entry: entry["id"])
    return JSONResponse({"object": "list", "data": entries})

