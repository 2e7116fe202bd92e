"""Management routes, on llama-swap's paths where it has them: health, running, load, unload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, PlainTextResponse

from llamaswap_docker.api.state import app_state
from llamaswap_docker.lifecycle import ModelState, ModelStatus

__all__ = ["router", "RunningModel", "RunningList"]

router = APIRouter()


class RunningModel(BaseModel):
    """One model with a container (llama-swap's fields first, ours added)."""

    model: str
    state: str
    name: str = ""
    description: str = ""
    ttl: int
    ttl_left_s: float | None
    container_id: str | None
    container_name: str | None
    image: str
    base_url: str | None
    in_flight: int
    waiting: int
    uptime_s: float | None
    failure: str | None


class RunningList(BaseModel):
    running: list[RunningModel]


def _running_model(request: Request, status: ModelStatus) -> RunningModel:
    model = app_state(request).config.models[status.model_id]
    return RunningModel(
        model=status.model_id, state=status.state.value, name=model.name,
        description=model.description, ttl=status.ttl_s, ttl_left_s=status.ttl_left_s,
        container_id=status.container_id, container_name=status.container_name,
        image=status.image, base_url=status.base_url, in_flight=status.in_flight,
        waiting=status.waiting, uptime_s=status.uptime_s, failure=status.failure,
    )


@router.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    """Liveness of the proxy itself (no auth)."""
    return "OK"


@router.get("/running", response_model=RunningList)
async def running(request: Request, all: bool = False) -> RunningList:
    """Models that have a container (``?all=true``: every configured model)."""
    statuses = app_state(request).manager.status()
    return RunningList(running=[
        _running_model(request, status) for status in statuses
        if all or status.state is not ModelState.STOPPED
    ])


@router.post("/api/models/unload")
@router.get("/unload", include_in_schema=False)
async def unload_all(request: Request) -> dict[str, Any]:
    """Stop every model once its in-flight requests finish."""
    await app_state(request).manager.unload(None, reason="unload requested (all)")
    return {"msg": "ok", "unloaded": "all"}


@router.post("/api/models/unload/{model:path}")
async def unload_model(request: Request, model: str) -> dict[str, Any]:
    manager = app_state(request).manager
    model_id = manager.resolve(model)
    await manager.unload([model_id], reason="unload requested")
    return {"msg": "ok", "unloaded": model_id}


@router.post("/api/models/load/{model:path}")
async def load_model(request: Request, model: str, wait: bool = True) -> JSONResponse:
    """Start a model without an inference request; ``?wait=false`` returns at once (202)."""
    state = app_state(request)
    model_id = state.manager.resolve(model)
    if not wait:
        state.manager.load_in_background(model_id)
        return JSONResponse({"msg": "loading", "model": model_id}, status_code=202)
    await state.manager.load(model_id)
    return JSONResponse({"msg": "ok", "model": model_id, "state": "ready"})
