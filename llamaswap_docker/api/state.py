"""What the app holds for its lifetime, shared with every route through ``app.state``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
from starlette.requests import HTTPConnection

from llamaswap_docker.config import Config
from llamaswap_docker.lifecycle import ModelManager
from llamaswap_docker.observe import EventBus, Recorder
from llamaswap_docker.proxy import InFlightRequests, Router, UpstreamClient
from llamaswap_docker.runtime import Engine

__all__ = ["AppState", "app_state"]


@dataclass
class AppState:
    """The running proxy: engine, model manager (which holds the config) and the clients."""

    engine: Engine | None  # None with engines: (each is the manager's: manager.engines)
    manager: ModelManager
    #: Control plane: health checks and adoption (httpx).
    http: httpx.AsyncClient
    #: Data plane: every inference request (``proxy.upstream``).
    upstream: UpstreamClient
    #: Live events (``GET /api/events``), shared by the manager and the in-flight registry.
    events: EventBus
    #: The requests holding a lease now (``GET /api/inflight``, forced unloads).
    inflight: InFlightRequests
    #: Activity rows, Prometheus counters and captures, fed by the hop.
    recorder: Recorder
    #: Requested names → models or peers: the active profile, selectors' reservations.
    router: Router
    started_at: float = field(default_factory=time.time)

    @property
    def config(self) -> Config:
        """The config in force (a reload swaps it in the manager)."""
        return self.manager.config


def app_state(connection: HTTPConnection) -> AppState:
    return connection.app.state.llamaswap
