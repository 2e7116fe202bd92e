"""Inference routes: OpenAI, Anthropic and llama-server paths, ``/upstream``, ``/v1/models``.

The inference paths are dispatched by ``InferenceRoutes``, a pure ASGI middleware, straight to
the hop (``proxy.forward``): no per-request routing table scan, request object or dependency
machinery on the hot path. It renders what the hop raises in the caller's dialect. FastAPI
keeps ``/v1/models`` and the management API (and their OpenAPI schema).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from loguru import logger
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from llamaswap_docker.api.errors import error_headers, error_response
from llamaswap_docker.api.state import app_state
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.proxy import dialect_for_path, forward

__all__ = ["router", "INFERENCE_PATHS", "InferenceRoutes"]

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


class InferenceRoutes:
    """Send inference requests to the hop; everything else to the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if (method == "POST" and path in INFERENCE_PATHS) or (
                    path.startswith("/upstream/") and method in UPSTREAM_METHODS):
                await self._forward(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _forward(scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state.llamaswap
        try:
            await forward(state.manager, state.upstream, scope, receive, send)
        except LlamaswapError as exc:
            # Nothing was sent yet (the hop reports later failures in-band).
            logger.bind(path=scope["path"], status=exc.status_code).warning(
                "request failed: {}", exc.message.splitlines()[0])
            response = error_response(dialect_for_path(scope["path"]), exc.status_code,
                                      exc.message, exc.code, error_headers(exc))
            await response(scope, receive, send)


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

