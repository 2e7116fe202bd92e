"""Observability routes: activity, stats, captures, live events and Prometheus metrics.

    GET /api/metrics                 llama-swap's activity list (oldest first)
    GET /api/metrics/activity        activity rows, newest first, paged and filtered
    GET /api/metrics/stats           per model: counts, tokens, tok/s and time percentiles
    GET /api/captures/<id>           a request's bodies (``captureBuffer``)
    GET /api/events                  live events (SSE): modelStatus, swap, pull, activity,
                                     inflight, logData
    GET /metrics                     Prometheus text format
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from llamaswap_docker.api.errors import error_response
from llamaswap_docker.api.logs import (
    IDLE,
    SHUTDOWN_POLL_S,
    STREAM_HEADERS,
    ClosingStreamingResponse,
    queued,
)
from llamaswap_docker.api.state import app_state
from llamaswap_docker.logs import log_buffer
from llamaswap_docker.observe.prometheus import CONTENT_TYPE

__all__ = ["router"]

#: Seconds between heartbeats on a quiet event stream (proxies close idle connections).
HEARTBEAT_S = 15.0

router = APIRouter(tags=["observability"])


@router.get("/api/metrics")
async def metrics_list(request: Request) -> JSONResponse:
    """The activity rows in memory, oldest first (llama-swap's ``/api/metrics``)."""
    recorder = app_state(request).recorder
    recorder.flush()
    rows = recorder.activity.rows
    return JSONResponse([row.to_json() for row in rows])


@router.get("/api/metrics/activity")
async def activity(
    request: Request,
    model: Annotated[str | None, Query(description="only this model (id or alias)")] = None,
    since: Annotated[float | None, Query(description="epoch seconds, inclusive")] = None,
    until: Annotated[float | None, Query(description="epoch seconds, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    """Activity rows, newest first: llama-swap's row fields plus ``wait_ms``."""
    state = app_state(request)
    model_id = state.manager.resolve(model) if model else None
    state.recorder.flush()
    activity_log = state.recorder.activity
    # The store is read in a thread; memory on the loop (a thread would race its appends).
    if activity_log.store_path is None:
        total, rows = activity_log.query(model_id, since, until, limit, offset)
    else:
        total, rows = await asyncio.to_thread(activity_log.query, model_id, since, until,
                                              limit, offset)
    return JSONResponse({"activity": [row.to_json() for row in rows], "total": total,
                         "limit": limit, "offset": offset})


@router.get("/api/metrics/stats")
async def stats(request: Request) -> JSONResponse:
    """Totals since the proxy started, and per-model percentiles over the rows in memory."""
    recorder = app_state(request).recorder
    recorder.flush()
    metrics = recorder.metrics
    totals: dict[str, Any] = {"requests": sum(metrics.requests.values()), "swaps": metrics.swaps}
    for (_, kind), count in metrics.tokens.items():
        totals[f"{kind}_tokens"] = totals.get(f"{kind}_tokens", 0) + count
    return JSONResponse({"totals": totals, **recorder.activity.stats()})


@router.get("/api/captures/{capture_id}")
async def capture(request: Request, capture_id: int) -> Response:
    """One request's headers (credentials redacted) and bodies, while the buffer holds it."""
    recorder = app_state(request).recorder
    recorder.flush()
    captures = recorder.captures
    found = captures.get(capture_id)
    if found is None:
        why = ("captures are off: set captureBuffer (MB) in the config" if not captures.enabled
               else f"no capture {capture_id}: it was never kept, or newer ones pushed it out")
        return error_response("openai", 404, why, "capture_not_found")
    return JSONResponse(found.to_json())


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def prometheus(request: Request) -> Response:
    """Prometheus metrics (text format 0.0.4)."""
    recorder = app_state(request).recorder
    recorder.flush()
    body = recorder.metrics.render()
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/api/events", response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request) -> Response:
    """Live events as SSE ``data: {"type": ..., "data": {...}}`` lines: first the models'
    status and the requests in flight, then every change; a comment line every 15 s."""
    state = app_state(request)
    loop = asyncio.get_running_loop()

    async def stream() -> AsyncIterator[bytes]:
        # Subscribed here, not before the response: a generator that never starts (the client
        # left first) never runs its finally, and would leave its queue subscribed for good.
        state.recorder.flush()  # requests that ended before this subscriber are not news to it
        state.manager.publish_status()  # what changed is news to the others (only that)
        subscription = state.events.subscribe()

        def on_log(line: str) -> None:  # called from any thread
            event = ("logData", {"source": "proxy", "data": f"{line}\n"})
            try:
                loop.call_soon_threadsafe(subscription.offer, event)
            except RuntimeError:  # the loop is closed
                pass

        log_buffer.subscribe(on_log)
        try:
            # This subscriber starts from every model's status.
            subscription.offer(("modelStatus", {**state.manager.status_event(),
                                                "time": time.time()}))
            inflight = [entry.snapshot() for entry in state.inflight.list()]
            subscription.offer(("inflight", {"op": "snapshot", "requests": inflight,
                                             "total": len(inflight), "time": time.time()}))
            yield b": connected\n\n"
            quiet = 0.0
            async with contextlib.aclosing(queued(subscription.queue,
                                                  lambda: state.manager.should_exit)) as events:
                async for event in events:
                    if event is IDLE:
                        quiet += SHUTDOWN_POLL_S
                        if quiet >= HEARTBEAT_S:
                            quiet = 0.0
                            yield b": ping\n\n"
                        continue
                    (kind, data), quiet = event, 0.0
                    if subscription.dropped:
                        dropped, subscription.dropped = subscription.dropped, 0
                        yield _sse("dropped", {"count": dropped})
                    yield _sse(kind, data)
        finally:
            log_buffer.unsubscribe(on_log)
            subscription.close()

    return ClosingStreamingResponse(stream(), media_type="text/event-stream",
                                    headers=STREAM_HEADERS)


def _sse(kind: str, data: Any) -> bytes:
    return b"data: " + orjson.dumps({"type": kind, "data": data}) + b"\n\n"
