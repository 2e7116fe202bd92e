"""The app's factory: lifespan (engine, manager, upstream client), FastAPI's routes and
error handlers, and the root ``ProxyApp`` (``api/asgi.py``) around them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from loguru import logger
from starlette.exceptions import HTTPException
from starlette.responses import Response

from llamaswap_docker import __version__
from llamaswap_docker.api import admin, dashboard, inference, logs, observe, profiles
from llamaswap_docker.api.asgi import ProxyApp
from llamaswap_docker.api.errors import error_answer, error_response
from llamaswap_docker.api.state import AppState
from llamaswap_docker.config import Config
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.lifecycle import ModelManager, ModelState
from llamaswap_docker.lifecycle.engines import EngineSet
from llamaswap_docker.observe import (
    ActivityLog,
    CaptureBuffer,
    EventBus,
    Metrics,
    Recorder,
    RecordingOff,
    StateReading,
)
from llamaswap_docker.proxy import InFlightRequests, Router, UpstreamClient, dialect_for_path
from llamaswap_docker.runtime import Containers, Engine, resolve_routing
from llamaswap_docker.ui import mount_ui

__all__ = ["create_app", "new_control_client"]


def _gauges(manager: ModelManager) -> StateReading:
    """What ``/metrics``' gauges read, at scrape time."""
    statuses = manager.status()
    return StateReading(states={s.model_id: s.state.value for s in statuses},
                        in_flight={s.model_id: s.in_flight for s in statuses},
                        waiting={s.model_id: s.waiting for s in statuses})


def _state_of(manager: ModelManager) -> Callable[[str], ModelState | None]:
    """A local model's state now, for the router's selectors (None: no such model)."""
    def state_of(model_id: str) -> ModelState | None:
        runtime = manager.models.get(model_id)
        return None if runtime is None else runtime.state
    return state_of


def new_control_client() -> httpx.AsyncClient:
    """The control-plane client (health checks, adoption): few requests, short timeouts."""
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False, trust_env=False)


def create_app(config: Config, engine: Engine | None, listen_host: str = "127.0.0.1",
               extra_hosts: list[str] | None = None, recording: bool = True) -> ProxyApp:
    """Build the proxy app for ``config`` on a connected ``engine``: the hop for inference
    requests, FastAPI for the rest (``ProxyApp``).

    ``listen_host`` is the address the server binds (on loopback, foreign Host headers are
    refused); ``extra_hosts`` are Host values allowed besides the config's ``allowedHosts``;
    ``recording`` False keeps no activity (``LLAMASWAP_RECORDING``).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engines, containers, routing = None, None, "per engine"
        if config.engines:  # several engines: each connected (or retried) and claimed here
            engines = EngineSet.of(config, listen_host)
            await asyncio.to_thread(engines.connect_all)
        else:
            assert engine is not None, "a config without engines: runs on the given engine"
            routing = await asyncio.to_thread(resolve_routing, config.docker.routing, engine)
            containers = Containers(engine, config.docker.instance, config.docker.network,
                                    routing)
        activity = ActivityLog(config.metrics_max_in_memory, config.store.path)
        # Before the manager, which reads its measured needs from the same file: opening
        # migrates it, or moves it aside when it cannot be used.
        await asyncio.to_thread(activity.open)
        http = new_control_client()
        upstream = UpstreamClient()
        events = EventBus()
        manager = ModelManager(config, containers, http, events, engines)
        manager.on_container_gone = upstream.forget
        inflight = InFlightRequests(events)
        manager.on_engine_lost = inflight.cut_models
        manager.metrics = metrics = Metrics(lambda: _gauges(manager), [s.value for s in ModelState])
        recorder = (Recorder if recording else RecordingOff)(
            activity, metrics, events, CaptureBuffer(config.capture_buffer << 20))
        router = Router(lambda: manager.config, _state_of(manager), events)
        app.state.llamaswap = proxy.running.llamaswap = AppState(
            engine=engine, manager=manager, http=http, upstream=upstream, events=events,
            inflight=inflight, recorder=recorder, router=router)
        logger.bind(instance=config.docker.instance, network=config.docker.network,
                    routing=routing).info("proxy starting")
        try:
            # Inside the try: a failed startup still stops what it started or adopted.
            await manager.startup()
            # What is alive now (modules, config, clients) lives as long as the proxy: keep it
            # out of the collector's full passes, which otherwise stall the requests in
            # flight (bench_relay, c=64: p99 10-14 ms with, 18-51 ms without).
            gc.collect()
            gc.freeze()
            yield
        finally:
            logger.info("proxy shutting down")
            try:
                await manager.shutdown(keep_containers=config.docker.on_shutdown == "keep")
            finally:
                await inflight.close()
                await upstream.close()
                await http.aclose()
                recorder.flush()
                await asyncio.to_thread(activity.close)
                if engines is not None:
                    await asyncio.to_thread(engines.release)

    app = FastAPI(
        title="llamaswap-docker",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # ui.mount_ui serves /docs from local assets (works offline)
        redoc_url=None,
    )
    app.include_router(admin.router)
    app.include_router(inference.router)
    app.include_router(logs.router)
    app.include_router(observe.router)
    app.include_router(profiles.router)
    app.include_router(dashboard.router)  # its lifespan samples for the UI
    mount_ui(app)
    inference.document(app)

    @app.exception_handler(LlamaswapError)
    async def on_llamaswap_error(request: Request, exc: LlamaswapError) -> Response:
        return error_answer(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        message = f"invalid request: {first.get('msg')} at {'.'.join(map(str, first.get('loc', ())))}"
        return error_response(dialect_for_path(request.url.path), 400, message, "invalid_request")

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(dialect_for_path(request.url.path), exc.status_code, message, code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # The client gets a clean answer; starlette re-raises afterwards, so the traceback
        # reaches the log once, through the server.
        return error_answer(exc, request.url.path, traceback=False)

    proxy = ProxyApp(app, config, listen_host, extra_hosts)  # the lifespan above fills it
    return proxy


