"""Inference routes: OpenAI, Anthropic and llama-server paths, ``/upstream``, ``/v1/models``.

Each request names a model; the handler waits for the model's lease (starting or swapping its
container), forwards the request to the container and relays the answer as it streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
from loguru import logger
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive

from llamaswap_docker.api.errors import dialect_for_path, sse_error_event
from llamaswap_docker.api.loading import LoadingStateResponse, wants_loading_state
from llamaswap_docker.api.state import AppState, app_state
from llamaswap_docker.errors import ModelNotFound, UpstreamUnavailable
from llamaswap_docker.lifecycle import Lease
from llamaswap_docker.proxy import RelayResponse, parse_model_request, request_headers, rewrite_body
from llamaswap_docker.proxy.upstream import ClientBodyInterrupted, iterate_body

__all__ = ["router", "INFERENCE_PATHS", "forward"]

T = TypeVar("T")

#: Routes whose model is named in the request (body, form field or ?model=).
INFERENCE_PATHS = (
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
)

#: Credentials meant for the proxy, never forwarded to a model server.
PROXY_AUTH_HEADERS = ("authorization", "x-api-key")

router = APIRouter()


class ClientDisconnected(Exception):
    """The client went away while its request waited."""


class DisconnectWatch:
    """Watches a request for a disconnect while it waits, keeping body messages for later.

    While a request waits for its model, reading ``receive`` is the only way to notice that the
    client left; body chunks that arrive meanwhile are kept and replayed by ``receive``.
    """

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self._buffered: list[Message] = []
        self.disconnected = False

    async def watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            self._buffered.append(message)

    async def receive(self) -> Message:
        if self._buffered:
            return self._buffered.pop(0)
        if self.disconnected:
            return {"type": "http.disconnect"}
        return await self._receive()


async def until_disconnect(request: Request, work: Awaitable[T]) -> tuple[T, DisconnectWatch]:
    """Await ``work`` unless the client disconnects first (then cancel it).

    Returns ``work``'s result and the watch, whose ``receive`` replays buffered body messages.
    """
    watch = DisconnectWatch(request)
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch.watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result(), watch
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it is being abandoned
            pass
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def _forward_headers(request: Request, state: AppState) -> list[tuple[str, str]]:
    drop = PROXY_AUTH_HEADERS if state.config.api_keys else ()
    return request_headers(request.headers.items(), drop=drop)


async def forward(
    state: AppState,
    lease: Lease,
    request: Request,
    path: str,
    content: Any,
) -> Response:
    """Send the request to the leased container and relay its answer; release when done."""
    url = f"{lease.base_url}{path}"
    if request.url.query:
        url += f"?{request.url.query}"
    upstream_request = state.http.build_request(
        request.method, url, headers=_forward_headers(request, state), content=content
    )
    dialect = dialect_for_path(request.url.path)
    try:
        if isinstance(content, (bytes, type(None))):
            # Headers may take as long as the whole generation (non-streaming): a client that
            # leaves meanwhile must cancel the upstream request, not wait for it.
            upstream, _ = await until_disconnect(
                request, state.http.send(upstream_request, stream=True))
        else:
            # A streamed body reads the client itself; a disconnect ends it with an error.
            upstream = await state.http.send(upstream_request, stream=True)
    except (ClientDisconnected, ClientBodyInterrupted):
        lease.release()
        logger.bind(model=lease.model_id, path=path).info(
            "client disconnected, upstream request cancelled")
        return Response(status_code=499)
    except httpx.HTTPError as exc:
        try:
            reason = await state.manager.report_upstream_failure(lease)
        finally:
            lease.release()
        raise UpstreamUnavailable(
            f"model {lease.model_id!r} did not answer: {reason or f'{type(exc).__name__}: {exc}'}"
        ) from exc
    except BaseException:
        lease.release()
        raise

    async def release() -> None:
        lease.release()

    async def upstream_failed(exc: Exception) -> bytes | None:
        reason = await state.manager.report_upstream_failure(lease)
        message = f"model {lease.model_id!r} stopped answering mid-response: " + (
            reason or f"{type(exc).__name__}: {exc}"
        )
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return sse_error_event(dialect, 502, message, "model_stopped")
        return None

    return RelayResponse(upstream, on_close=release, on_error=upstream_failed)


async def _acquire(state: AppState, request: Request, model_id: str) -> tuple[Lease, Receive]:
    """The model's lease, and the ``receive`` to read the rest of the request body from."""
    lease = state.manager.try_acquire(model_id)
    if lease is not None:  # the hot path: a ready model, no waiting, nothing to watch
        return lease, request.receive
    lease, watch = await until_disconnect(request, state.manager.acquire(model_id))
    return lease, watch.receive


async def proxy_model_request(request: Request) -> Response:
    """Any inference route: find the model, wait for it, forward."""
    state = app_state(request)
    body = await request.body()
    parsed = parse_model_request(
        body, request.headers.get("content-type", ""), request.query_params.get("model")
    )
    model_id = state.manager.resolve(parsed.model_name)
    model = state.config.models[model_id]
    content = rewrite_body(parsed, model)
    if wants_loading_state(state, model_id, request.url.path, parsed.payload):
        return LoadingStateResponse(state, request, model_id, content, forward)
    try:
        lease, _ = await _acquire(state, request, model_id)
    except ClientDisconnected:
        return Response(status_code=499)
    return await forward(state, lease, request, request.url.path, content)


for _path in INFERENCE_PATHS:
    router.add_api_route(_path, proxy_model_request, methods=["POST"], include_in_schema=False)


@router.api_route(
    "/upstream/{target:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
)
async def upstream_passthrough(request: Request, target: str) -> Response:
    """``/upstream/<model>/<path>``: direct access to a model's server, loading it if needed."""
    state = app_state(request)
    model_id, rest = _split_upstream_target(state, target, request.scope.get("raw_path"))
    try:
        lease, receive = await _acquire(state, request, model_id)
    except ClientDisconnected:
        return Response(status_code=499)
    # Streamed through, not read first: body chunks that arrived while waiting are replayed.
    content = iterate_body(receive) if request.method not in ("GET", "HEAD") else None
    return await forward(state, lease, request, "/" + rest, content)


def _split_upstream_target(
    state: AppState, target: str, raw_path: bytes | None = None
) -> tuple[str, str]:
    """Longest prefix of ``target`` naming a model (ids may contain '/'), and the rest.

    The rest is taken from the raw (still percent-encoded) path when it lines up, so ``%2F``
    or ``%3F`` reach the model server as the client wrote them.
    """
    parts = target.split("/")
    raw_parts = raw_path.decode("latin-1").split("/")[2:] if raw_path else []
    for cut in range(len(parts), 0, -1):
        model_id = state.config.resolve("/".join(parts[:cut]))
        if model_id is not None:
            if len(raw_parts) == len(parts):
                return model_id, "/".join(raw_parts[cut:])
            return model_id, "/".join(parts[cut:])
    raise ModelNotFound(
        f"no model in /upstream/{target}; GET /v1/models lists the models you can use"
    )


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

