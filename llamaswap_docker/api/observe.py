"""Observability routes: activity, stats, captures, live events and Prometheus metrics.

    GET /api/metrics                 llama-swap's activity list (oldest first)
    GET /api/metrics/activity        activity rows, newest first, paged, filtered and sorted
                                     (llama-swap's envelope and parameters, and ours)
    GET /api/metrics/stats           per model: counts, tokens, tok/s and time percentiles;
                                     llama-swap's totals and tok/s histograms (?model=)
    GET /api/captures/<id>           a request's bodies (``captureBuffer``)
    GET /api/events                  live events (SSE): modelStatus, swap, pull, activity,
                                     inflight, logData, profileChanged
    GET /metrics                     Prometheus text format
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

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
from llamaswap_docker.api.readings import (
    activity_stats,
    histograms_by_model,
    rfc3339_seconds,
    status_range,
)
from llamaswap_docker.api.state import app_state
from llamaswap_docker.logs import log_buffer
from llamaswap_docker.observe.activity import SORT_KEYS, ActivityQuery
from llamaswap_docker.observe.prometheus import CONTENT_TYPE
from llamaswap_docker.proxy.sse import typed_event

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
    model: Annotated[list[str] | None, Query(
        description="only these models (ids or aliases); repeat for several")] = None,
    start: Annotated[str | None, Query(description="RFC 3339 time, inclusive")] = None,
    end: Annotated[str | None, Query(description="RFC 3339 time, inclusive")] = None,
    since: Annotated[float | None, Query(description="epoch seconds, inclusive")] = None,
    until: Annotated[float | None, Query(description="epoch seconds, inclusive")] = None,
    min_id: Annotated[int | None, Query(ge=1, description="lowest row id")] = None,
    max_id: Annotated[int | None, Query(ge=1, description="highest row id")] = None,
    sort: Annotated[str, Query(description=f"one of {', '.join(SORT_KEYS)}")] = "id",
    order: Annotated[str, Query(description="asc or desc")] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page: Annotated[int | None, Query(ge=1, description="1-based page of `limit` rows")] = None,
    offset: Annotated[int | None, Query(ge=0, description="rows to skip (instead of page)")] = None,
    status: Annotated[str | None, Query(
        description="ok (below 400), error (400 and above), 2xx, 4xx, 5xx or one code")] = None,
) -> JSONResponse:
    """Activity rows, newest first: llama-swap's row fields plus ``wait_ms``, in llama-swap's
    envelope (``data``, ``page``, ``limit``, ``total``, ``total_pages``) plus ``offset``."""
    try:
        query = _activity_query(model, start, end, since, until, min_id, max_id, sort, order,
                                limit, page, offset)
        statuses = status_range(status)
    except ValueError as exc:
        return error_response("openai", 400, f"invalid request: {exc}", "invalid_request")
    state = app_state(request)
    # Aliases name their model; any other name is taken as written (a removed model, a peer's).
    query = dataclasses.replace(query, statuses=statuses, models=tuple(dict.fromkeys(
        state.config.resolve(name) or name for name in query.models)))
    state.recorder.flush()
    activity_log = state.recorder.activity
    # The store is read in a thread; memory on the loop (a thread would race its appends).
    if activity_log.store_path is None:
        total, rows = activity_log.query(query)
    else:
        total, rows = await asyncio.to_thread(activity_log.query, query)
    data = [row.to_json() for row in rows]
    return JSONResponse({
        "data": data, "page": query.offset // limit + 1, "limit": limit, "total": total,
        "total_pages": -(-total // limit), "offset": query.offset,
    })


def _activity_query(models: list[str] | None, start: str | None, end: str | None,
                    since: float | None, until: float | None, min_id: int | None,
                    max_id: int | None, sort: str, order: str, limit: int, page: int | None,
                    offset: int | None) -> ActivityQuery:
    """The query of ``/api/metrics/activity``'s parameters, checked as llama-swap checks them
    (``parseActivityQuery``).

    Raises:
        ValueError: a parameter that cannot be used, said in a sentence.
    """
    if start is not None:  # with since too: the later of the two
        start_s = _rfc3339(start, "start")
        since = start_s if since is None else max(since, start_s)
    if end is not None:
        end_s = _rfc3339(end, "end")
        until = end_s if until is None else min(until, end_s)
    if since is not None and until is not None and since > until:
        raise ValueError("start must be before end")
    if min_id is not None and max_id is not None and min_id > max_id:
        raise ValueError("min_id must be <= max_id")
    if sort not in SORT_KEYS:
        raise ValueError(f"invalid sort column {sort!r}: use one of {', '.join(SORT_KEYS)}")
    if order.lower() not in ("asc", "desc"):
        raise ValueError("order must be asc or desc")
    if page is not None and offset is not None:
        raise ValueError("give page or offset, not both")
    skip = (page - 1) * limit if page is not None else offset or 0
    names = tuple(name.strip() for name in models or () if name.strip())
    return ActivityQuery(models=names, since=since, until=until, min_id=min_id, max_id=max_id,
                         sort=sort, descending=order.lower() == "desc", limit=limit, offset=skip)


def _rfc3339(text: str, name: str) -> float:
    """Epoch seconds of an RFC 3339 time (``2025-01-31T12:00:00Z``)."""
    seconds = rfc3339_seconds(text) if "T" in text.upper() else None  # a date alone is not one
    if seconds is None:
        raise ValueError(f"invalid {name!r} timestamp {text!r}: use RFC 3339, e.g. "
                         "2025-01-31T12:00:00Z")
    return seconds


@router.get("/api/metrics/stats")
async def stats(request: Request, model: Annotated[str | None, Query(
        description="llama-swap's total_* and histogram fields of this model only")] = None,
) -> JSONResponse:
    """Totals since the proxy started, and per-model percentiles over the rows in memory;
    llama-swap's ``total_*`` fields and tok/s histograms (``prompt_histogram``,
    ``gen_histogram``) over those rows, also per model."""
    state = app_state(request)
    recorder = state.recorder
    recorder.flush()
    metrics = recorder.metrics
    totals: dict[str, Any] = {"requests": sum(metrics.requests.values()), "swaps": metrics.swaps}
    for (_, kind), count in metrics.tokens.items():
        totals[f"{kind}_tokens"] = totals.get(f"{kind}_tokens", 0) + count
    model_id = None if model is None else state.config.resolve(model) or model
    rows = recorder.activity.rows
    body = {"totals": totals, **recorder.activity.stats(rows),
            **activity_stats(r for r in rows if model_id is None or r.model == model_id)}
    histograms = histograms_by_model(rows)
    for name, fields in body["models"].items():
        fields.update(histograms.get(name, {}))
    return JSONResponse(body)


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
            subscription.offer(("profileChanged", {"active": state.router.active_profile,
                                                   "time": time.time()}))
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
                        yield typed_event("dropped", {"count": dropped})
                    yield typed_event(kind, data)
        finally:
            log_buffer.unsubscribe(on_log)
            subscription.close()

    return ClosingStreamingResponse(stream(), media_type="text/event-stream",
                                    headers=STREAM_HEADERS)

