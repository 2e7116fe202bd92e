"""What the app holds for its lifetime, shared with every route through ``app.state``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
from starlette.requests import HTTPConnection

from llamaswap_docker.config import Config
from llamaswap_docker.lifecycle import ModelManager
from llamaswap_docker.runtime import Engine

__all__ = ["AppState", "app_state"]


@dataclass
class AppState:
    """The running proxy: config, engine, model manager and the upstream client."""

    config: Config
    engine: Engine
    manager: ModelManager
    http: httpx.AsyncClient
    started_at: float = field(default_factory=time.time)


def app_state(connection: HTTPConnection) -> AppState:
    return connection.app.state.llamaswap
