"""Inference routes: OpenAI, Anthropic and llama-server paths, ``/upstream``, ``/v1/models``.

The inference paths are served by the hop (``proxy.forward``), which ``ProxyApp``
(``api/asgi.py``) calls before FastAPI's routing; this module lists them, puts them in the
OpenAPI document, and serves ``/v1/models``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse

from llamaswap_docker.api.listing import routing_entries
from llamaswap_docker.api.state import app_state
from llamaswap_docker.config.schema import Capabilities
from llamaswap_docker.errors import (
    ConcurrencyLimitExceeded,
    EngineError,
    ImageNotFound,
    ImagePullFailed,
    InsufficientGpuMemory,
    LlamaswapError,
    ModelNotFound,
    ModelNotLoaded,
    ModelStartFailed,
    ModelStopped,
    NoTargetAvailable,
    RequestError,
    RequestTooLarge,
    UnsupportedMediaType,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["router", "INFERENCE_PATHS", "UPSTREAM_METHODS", "capability_fields", "document"]

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


_DIALECTS = {"/v1/messages": "Anthropic Messages", "/v1/messages/count_tokens": "Anthropic",
             "/completion": "llama-server", "/infill": "llama-server"}


#: The errors the hop answers with before the model server's own answer (its statuses are
#: relayed as they are), each documented under its status in the OpenAPI document.
HOP_ERRORS: tuple[type[LlamaswapError], ...] = (
    RequestError, RequestTooLarge, UnsupportedMediaType, ModelNotFound, ModelNotLoaded,
    ConcurrencyLimitExceeded, ModelStartFailed, ModelStopped, UpstreamUnavailable,
    EngineError, ImageNotFound, ImagePullFailed, NoTargetAvailable, InsufficientGpuMemory,
    UpstreamTimeout,
)


def error_responses() -> dict[str, dict[str, str]]:
    """OpenAPI ``responses`` for ``HOP_ERRORS``: per status, what each error of that status
    means (their own docstrings, so the document cannot drift from the code)."""
    meanings: dict[int, list[str]] = {}
    for error in HOP_ERRORS:
        text = (error.__doc__ or error.__name__).strip().splitlines()[0].rstrip(".")
        meanings.setdefault(error.status_code, []).append(
            f"{text[0].lower()}{text[1:]} (`{error.code}`)")
    return {str(status): {"description": "; ".join(texts)}
            for status, texts in sorted(meanings.items())}


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
            **error_responses(),
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


#: Top-level /v1/models fields rendered from ``capabilities`` (llama-swap's names).
_CAPABILITY_FIELDS = frozenset({"architecture", "capabilities", "supported_parameters",
                                "context_length"})


def capability_fields(caps: Capabilities) -> dict[str, Any]:
    """A model's ``capabilities`` as llama-swap renders them in /v1/models
    (``renderCapabilities`` in its ``internal/server/api.go``): OpenRouter-style
    ``architecture``, a ``capabilities`` map of flags, ``supported_parameters`` and
    ``context_length``; nothing for an empty block."""
    if caps.empty:
        return {}
    fields: dict[str, Any] = {}
    inputs, outputs = caps.in_, caps.out
    if inputs or outputs:
        architecture: dict[str, Any] = {}
        if inputs:
            architecture["input_modalities"] = list(inputs)
        if outputs:
            architecture["output_modalities"] = list(outputs)
        if inputs and outputs:
            architecture["modality"] = f"{'+'.join(inputs)}->{'+'.join(outputs)}"
        fields["architecture"] = architecture
    flags: dict[str, bool] = {}
    if "image" in inputs:
        flags["vision"] = True
    if inputs and outputs:
        if "audio" in inputs and "text" in outputs:
            flags["audio_transcriptions"] = True
        if "text" in inputs and "audio" in outputs:
            flags["audio_speech"] = True
        if "text" in inputs and "image" in outputs:
            flags["image_generation"] = True
        if "image" in inputs and "image" in outputs:
            flags["image_to_image"] = True
    if caps.tools:
        flags["function_calling"] = True
    if caps.reranker:
        flags["reranker"] = True
    if flags:
        fields["capabilities"] = flags
    if caps.tools:
        fields["supported_parameters"] = ["tools", "tool_choice"]
    if caps.context > 0:
        fields["context_length"] = caps.context
    return fields


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
            ids += state.config.model_aliases(model_id)  # setParamsByID names included
        for listed in ids:
            entry: dict[str, Any] = {
                "id": listed, "object": "model", "created": created, "owned_by": "llamaswap-docker",
            }
            if model.name:
                entry["name"] = model.name
            if model.description:
                entry["description"] = model.description
            rendered = capability_fields(model.capabilities)
            entry.update(rendered)
            meta = dict(model.metadata)
            if rendered:  # as llama-swap: the rendered fields win over metadata of those names
                meta = {k: v for k, v in meta.items() if k not in _CAPABILITY_FIELDS}
                if "context_length" in rendered:
                    meta["n_ctx"] = rendered["context_length"]
            if listed != model_id:
                meta["alias_of"] = model_id
            if meta:
                entry["meta"] = meta
            entry["state"] = state.manager.models[model_id].state.value
            entries.append(entry)
    # Peers' models, selectors, the active profile's pins (api/listing.py).
    entries += routing_entries(state, created, {*state.config.models, *state.config.aliases})
    entries.sort(key=lambda entry: entry["id"])
    return JSONResponse({"object": "list", "data": entries})

