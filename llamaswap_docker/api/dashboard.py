"""Routes the web UI's pages read besides llama-swap's API: a model's page, its container's
resource usage live, and the proxy's own performance over time.

    GET /api/models/<model>          one model: status, placement, container, starts and
                                     loads, last exit, resolved config (secrets masked)
    GET /api/models/<model>/stats    the container's CPU, memory, network and disk, live (SSE),
                                     read from the engine's stats stream while a client listens
    GET /api/performance             llama-swap's ``enabled``/``sys_stats``/``gpu_stats``, and
                                     ``proxy_stats``: the proxy's CPU, memory, event-loop lag,
                                     requests per second (``?after=``: newer samples only)
    GET /api/timeline                which model was in which state when, and model loads

The container stats are never polled: one engine stream is opened per listener (a model page
open in a browser) and closed as soon as it leaves, so a model nobody looks at costs nothing.
The samples behind ``/api/performance`` and ``/api/timeline`` come from ``monitor.Monitor``,
started with the app (this router's lifespan).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from loguru import logger
from starlette.responses import JSONResponse, Response

from llamaswap_docker.api.errors import error_response
from llamaswap_docker.api.logs import (
    SHUTDOWN_POLL_S,
    STREAM_HEADERS,
    ClosingStreamingResponse,
    EngineFollower,
    Feed,
)
from llamaswap_docker.api.monitor import SAMPLE_S, Monitor
from llamaswap_docker.api.readings import container_reading, rfc3339_seconds
from llamaswap_docker.api.state import AppState, app_state
from llamaswap_docker.config.masking import mask_secrets
from llamaswap_docker.proxy.sse import typed_event

__all__ = ["router"]

#: Seconds between heartbeats on a quiet stats stream (a paused container writes none).
HEARTBEAT_S = 15.0
#: Readings a slow listener may have waiting before new ones are dropped for it.
STATS_QUEUE_LIMIT = 64


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs inside the app's own lifespan (FastAPI nests a router's), once the manager is up.
    state: AppState = app.state.llamaswap
    monitor = Monitor(state.manager, getattr(state.manager, "metrics", None))
    app.state.ui_monitor = monitor
    monitor.start()
    try:
        yield
    finally:
        await monitor.stop()


router = APIRouter(tags=["dashboard"], lifespan=_lifespan)


def _monitor(request: Request) -> Monitor:
    return request.app.state.ui_monitor


AfterQuery = Annotated[str | None, Query(
    description="only newer than this: RFC 3339 time or epoch seconds")]


def _after(text: str | None) -> float | None:
    """Epoch seconds of ``?after=`` (RFC 3339 or a number).

    Raises:
        ValueError: neither.
    """
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        pass
    seconds = rfc3339_seconds(text)
    if seconds is None:
        raise ValueError(f"invalid 'after' timestamp {text!r}: use RFC 3339 "
                         "(2025-01-31T12:00:00Z) or epoch seconds")
    return seconds


def _newer(samples: Any, after: float | None) -> list[dict[str, Any]]:
    if after is None:
        return list(samples)
    return [s for s in samples if datetime.fromisoformat(s["timestamp"]).timestamp() > after]


@router.get("/api/performance")
async def performance(request: Request, after: AfterQuery = None) -> JSONResponse:
    """Samples of the host (llama-swap's ``sys_stats``; ``gpu_stats`` stays empty: GPUs are
    on ``/api/hardware``) and of the proxy process (``proxy_stats``), one a second, the last
    15 minutes."""
    try:
        since = _after(after)
    except ValueError as exc:
        return error_response("openai", 400, str(exc), "invalid_request")
    monitor = _monitor(request)
    return JSONResponse({
        "enabled": True,
        "interval_s": SAMPLE_S,
        "started_at": monitor.started_at,
        "sys_stats": _newer(monitor.sys_samples, since),
        "gpu_stats": [],
        "proxy_stats": _newer(monitor.proxy_samples, since),
    })


@router.get("/api/timeline")
async def timeline(request: Request, after: AfterQuery = None) -> JSONResponse:
    """Which model was in which state when (``segments``: ``start``/``end`` epoch seconds,
    ``end`` null while it lasts; stopped is no segment) and the model loads (``seconds``:
    how long each took; null for a failed one)."""
    try:
        since = _after(after)
    except ValueError as exc:
        return error_response("openai", 400, str(exc), "invalid_request")
    monitor = _monitor(request)
    loads = [load for load in monitor.loads_of() if since is None or load["time"] > since]
    return JSONResponse({"now": time.time(), "since": monitor.started_at,
                         "segments": monitor.timeline(since), "loads": loads})


@router.get("/api/models/{model:path}/stats", response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}},
                       404: {"description": "unknown model, or the model has no container"}})
async def container_stats(request: Request, model: str) -> Response:
    """The model's container resource usage as SSE ``data: {"type": "stats", "data": {...}}``
    lines, about one a second (CPU %, memory, network and disk totals, processes), from the
    engine's stats stream; ``{"type": "end"}`` when the container stops."""
    state = app_state(request)
    model_id = state.manager.resolve(model)
    runtime = state.manager.models.get(model_id)
    container = runtime.container if runtime is not None else None
    if runtime is None or container is None:
        state_name = runtime.state.value if runtime is not None else "removed"
        return error_response("openai", 404, f"model {model_id!r} has no container now "
                              f"({state_name}): no resource usage to show", "model_not_running")
    containers = state.manager.containers_for(container)
    # Opened here, so an engine error still answers as an error, not an empty stream.
    stream = await asyncio.to_thread(containers.follow_stats, container.id)
    body = _relay(containers, container.id, stream, model_id, container.name, _monitor(request),
                  lambda: state.manager.should_exit)
    return ClosingStreamingResponse(body, media_type="text/event-stream", headers=STREAM_HEADERS)


async def _relay(containers: Any, container_id: str, stream: Iterator[dict[str, Any]],
                 model_id: str, container_name: str, monitor: Monitor,
                 stop: Callable[[], bool]) -> AsyncIterator[bytes]:
    """Relay the readings of an engine stats stream (``logs.EngineFollower``); leaving closes
    it. ``monitor.stats_streams`` counts the engine streams open: the reader thread gives its
    count back only once the engine stream has ended (the thread was unblocked)."""
    feed: Feed[dict[str, Any]] = Feed(asyncio.get_running_loop(), stop, STATS_QUEUE_LIMIT,
                                      cost=lambda _: 1)
    counted = threading.Lock()
    log = logger.bind(model=model_id, container=container_name)

    def done() -> None:
        with counted:
            monitor.stats_streams -= 1
        log.debug("container stats stream closed")
        feed.end()

    with counted:
        monitor.stats_streams += 1
    log.debug("container stats stream opened")
    follower = EngineFollower(
        containers, container_id, stream, model_id, "stats",
        lambda raw: feed.push(container_reading(raw)), done,
        lambda: containers.follow_stats(container_id))
    try:
        yield b": connected\n\n"
        quiet = 0.0
        async with contextlib.aclosing(feed.batches()) as batches:
            async for batch in batches:
                if not batch:
                    quiet += SHUTDOWN_POLL_S
                    if quiet >= HEARTBEAT_S:
                        quiet = 0.0
                        yield b": ping\n\n"
                    continue
                quiet = 0.0
                yield b"".join(typed_event("stats", {"model": model_id,
                                                     "container": container_name, **item})
                               for item in batch)
        if feed.ended:  # the container stopped (not the proxy shutting down)
            yield typed_event("end", {"model": model_id, "container": container_name})
    finally:
        follower.close()  # the client left, the container stopped or the proxy stops


@router.get("/api/models/{model:path}",
            responses={404: {"description": "unknown model"}})
async def model_details(request: Request, model: str) -> JSONResponse:
    """One model (id or alias) for its page: ``/running``'s fields, its container, how often
    it was started and how long loads took, how its last container ended and what it wrote
    last, and its config as the proxy resolved it, secrets masked."""
    state = app_state(request)
    model_id = state.manager.resolve(model)
    config = state.config.models[model_id]
    status = next((s for s in state.manager.status() if s.model_id == model_id), None)
    runtime = state.manager.models.get(model_id)
    if status is None or runtime is None:  # a reload adds or removes it this very moment
        return error_response("openai", 404, f"model {model_id!r} is being added or removed by "
                              "a config reload: ask again in a moment", "model_not_found")
    ref = runtime.container
    monitor = _monitor(request)
    loads = monitor.loads_of(model_id)
    metrics = getattr(state.manager, "metrics", None)
    starts = sum(metrics.loads[model_id].counts) if metrics and model_id in metrics.loads else 0
    failures = sum(count for (m, _), count in metrics.load_failures.items()
                   if m == model_id) if metrics else 0
    kept = state.manager.last_output.get(model_id)
    groups = [name for name, group in state.config.swap_groups.items()
              if model_id in getattr(group, "members", ())]
    return JSONResponse({
        **status.to_json(config),
        **state.manager.placement_of(model_id),
        "container": None if ref is None else {
            "id": ref.id, "name": ref.name, "image": config.image, "status": ref.status,
            "created": ref.created.isoformat() if ref.created else None,
            "age_s": round(ref.age_s() or 0, 1) if ref.created else None,
            "base_url": ref.base_url, "devices": list(ref.devices or ()), "vram_bytes": ref.vram,
        },
        "starts": starts,
        "load_failures": failures,
        "loads": loads[-100:],
        "last_exit": None if kept is None else {
            "container_name": kept.container_name, "reason": kept.reason,
            "stopped_at": kept.stopped_at, "output_tail": "\n".join(kept.text.splitlines()[-50:]),
        },
        "groups": groups,
        "config": mask_secrets(config.model_dump(mode="json", by_alias=True)),
    })
