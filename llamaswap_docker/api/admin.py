"""Management routes, on llama-swap's paths where it has them: health, running, load, unload.

    GET  /health                     200 "OK" (no API key needed)
    GET  /running                    models that have a container (?all=true: every model)
    GET  /api/hardware               the GPUs, and what is placed on each
    POST /api/models/load/<model>    start a model; waits until ready (?wait=false: 202 at once)
    POST /api/models/unload/<model>  stop a model once its in-flight requests finish
                                     (?force=true: at once, cutting them)
    POST /api/models/unload          stop every model (legacy: GET /unload)
    GET  /api/inflight               the requests in flight
    POST /api/inflight/<id>/cancel   cut one
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, PlainTextResponse

from llamaswap_docker.api.errors import error_response
from llamaswap_docker.api.state import AppState, app_state
from llamaswap_docker.lifecycle import ModelState, ModelStatus

__all__ = ["router", "RunningModel", "RunningList", "LoadResult", "UnloadResult",
           "InFlightRequest", "InFlightList"]

ForceQuery = Annotated[bool, Query(
    description="stop at once: cut the requests in flight (streams get an error event)")]

router = APIRouter(tags=["management"])


class RunningModel(BaseModel):
    """One model with a container (llama-swap's fields first, ours added)."""

    model: str = Field(description="model id")
    state: str = Field(description="stopped, starting, ready, stopping, asleep or failed")
    name: str = ""
    description: str = ""
    ttl: int = Field(description="seconds idle before unloading; 0: never")
    ttl_left_s: float | None = Field(description="seconds until the TTL unloads it (ready only)")
    container_id: str | None
    container_name: str | None
    image: str
    base_url: str | None = Field(description="where the proxy reaches the model's server")
    in_flight: int = Field(description="requests being served")
    waiting: int = Field(description="requests queued for the model")
    uptime_s: float | None = Field(description="seconds since the model became ready")
    failure: str | None = Field(description="why the last start failed or the container died")
    need_bytes: int | None = Field(None, description="GPU memory the model needs (None: unknown)")
    need_source: str = Field("none", description="declared, estimated, measured, unknown or none")
    gpus: list[str] = Field([], description="the GPUs it runs (or is starting) on")
    engine: str | None = Field(None, description="the engine it runs on (engines:), or is "
                                                  "pinned to; 'default' without engines:")


class RunningList(BaseModel):
    """``GET /running``."""

    running: list[RunningModel]


class LoadResult(BaseModel):
    """``POST /api/models/load/<model>``: ``msg`` is ``ok`` (ready) or ``loading`` (202)."""

    msg: str
    model: str
    state: str


class UnloadResult(BaseModel):
    """``POST /api/models/unload[/<model>]``: ``unloaded`` is a model id or ``all``."""

    msg: str
    unloaded: str


class InFlightRequest(BaseModel):
    """One request holding a model."""

    id: str = Field(description="for POST /api/inflight/<id>/cancel")
    model: str
    path: str
    client: str = Field(description="client address:port")
    elapsed_s: float
    bytes: int = Field(description="body bytes relayed to the client so far")


class InFlightList(BaseModel):
    """``GET /api/inflight``."""

    inflight: list[InFlightRequest]


def _cutter(state: AppState, reason: str) -> Callable[[list[str]], int]:
    """What a forced unload calls to cut the requests in flight on its models."""
    return lambda model_ids: state.inflight.cut_models(model_ids, reason)


def _running_model(request: Request, status: ModelStatus) -> RunningModel:
    state = app_state(request)
    model = state.config.models[status.model_id]
    return RunningModel.model_validate({**status.to_json(model),
                                        **state.manager.placement_of(status.model_id)})


@router.head("/health", include_in_schema=False)  # probes that only look at the status
@router.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    """Liveness of the proxy itself (no auth)."""
    return "OK"


@router.get("/running", response_model=RunningList)
async def running(
    request: Request,
    all: Annotated[bool, Query(description="list every configured model")] = False,
) -> RunningList:
    """Models that have a container (``?all=true``: every configured model)."""
    statuses = app_state(request).manager.status()
    return RunningList(running=[
        _running_model(request, status) for status in statuses
        if all or status.state is not ModelState.STOPPED
    ])


@router.get("/api/hardware")
async def hardware(request: Request) -> JSONResponse:
    """The GPU inventory (llama-swap's snapshot fields, then per GPU: memory, what is placed)."""
    return JSONResponse(app_state(request).manager.hardware())


@router.post("/api/models/unload", response_model=UnloadResult)
@router.get("/unload", response_model=UnloadResult, include_in_schema=False)
async def unload_all(request: Request, force: ForceQuery = False) -> UnloadResult:
    """Stop every model once its in-flight requests finish (``?force=true``: at once)."""
    state = app_state(request)
    cut = _cutter(state, "every model unloaded (force)") if force else None
    await state.manager.unload(None, reason="unload requested (all)", cut=cut)
    return UnloadResult(msg="ok", unloaded="all")


@router.post("/api/models/unload/{model:path}", response_model=UnloadResult)
async def unload_model(request: Request, model: str, force: ForceQuery = False) -> UnloadResult:
    """Stop one model (id or alias) once its in-flight requests finish (``?force=true``: at
    once, cutting them)."""
    state = app_state(request)
    model_id = state.manager.resolve(model)
    cut = _cutter(state, f"model {model_id!r} unloaded (force)") if force else None
    await state.manager.unload([model_id], reason="unload requested", cut=cut)
    return UnloadResult(msg="ok", unloaded=model_id)


@router.get("/api/inflight", response_model=InFlightList)
async def inflight(request: Request) -> InFlightList:
    """The requests in flight, oldest first."""
    entries = app_state(request).inflight.list()
    return InFlightList(inflight=[InFlightRequest(**entry.snapshot()) for entry in entries])


@router.post("/api/inflight/{request_id}/cancel")
async def cancel_inflight(request: Request, request_id: str) -> JSONResponse:
    """Cut one request in flight: its client gets an error, its model is free at once."""
    if not app_state(request).inflight.cut(request_id, "cancelled (POST /api/inflight)"):
        return error_response("openai", 404, f"no request {request_id!r} is in flight; "
                              "GET /api/inflight lists them", "not_found")
    return JSONResponse({"msg": "ok", "cancelled": request_id})


@router.post("/api/models/load/{model:path}", response_model=LoadResult,
             responses={202: {"model": LoadResult, "description": "loading (``?wait=false``)"}})
async def load_model(
    request: Request,
    model: str,
    wait: Annotated[bool, Query(description="wait until the model is ready")] = True,
) -> JSONResponse:
    """Start a model without an inference request; ``?wait=false`` returns at once (202)."""
    state = app_state(request)
    model_id = state.manager.resolve(model)
    if not wait:
        state.manager.load_in_background(model_id)
        current = state.manager.models[model_id].state.value
        result = LoadResult(msg="loading", model=model_id, state=current)
        return JSONResponse(result.model_dump(), status_code=202)
    await state.manager.load(model_id)
    return JSONResponse(LoadResult(msg="ok", model=model_id, state="ready").model_dump())
