"""Per-model state: where the model's container is in its life, and who is using it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from llamaswap_docker.runtime import ContainerRef

__all__ = ["ModelState", "ModelRuntime", "ModelStatus"]


class ModelState(str, enum.Enum):
    """stopped → starting → ready → stopping → stopped; failed keeps the reason."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass
class ModelRuntime:
    """The mutable state of one configured model, owned by the ``ModelManager``."""

    model_id: str
    state: ModelState = ModelState.STOPPED
    container: ContainerRef | None = None
    in_flight: int = 0
    #: Set while a swap or unload waits for in-flight requests to finish: admit no new ones.
    draining: bool = False
    last_used: float = field(default_factory=time.monotonic)
    ready_since: float | None = None
    failure: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """A read-only snapshot of one model for the API and the CLI."""

    model_id: str
    state: ModelState
    container_id: str | None
    container_name: str | None
    image: str
    base_url: str | None
    in_flight: int
    waiting: int
    uptime_s: float | None
    ttl_s: int
    ttl_left_s: float | None
    failure: str | None
