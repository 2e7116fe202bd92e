"""Per-model state: where the model's container is in its life, and who is using it."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamaswap_docker.runtime import ContainerRef

__all__ = ["Lease", "ModelState", "ModelRuntime", "ModelStatus"]


class ModelState(str, enum.Enum):
    """stopped → starting → ready → stopping → stopped; failed keeps the reason.

    With ``sleepMode`` an evicted model goes ready → stopping → asleep (its container runs
    on, holding no GPU memory) and a request wakes it: asleep → starting → ready.
    """

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    ASLEEP = "asleep"
    FAILED = "failed"


#: State changes a runtime remembers (a timeline reader takes them well before this many).
TRANSITIONS_KEPT = 64


@dataclass
class ModelRuntime:
    """The mutable state of one configured model, owned by the ``ModelManager``.

    Every change of ``state`` is remembered with its time in ``transitions`` (the last
    ``TRANSITIONS_KEPT``; ``transitions_total`` counts them all), so a timeline is exact
    however briefly a state lasted. State changes are rare; requests only read it.
    """

    model_id: str
    _state: ModelState = ModelState.STOPPED
    container: ContainerRef | None = None
    in_flight: int = 0
    #: Set while a swap or unload waits for in-flight requests to finish: admit no new ones.
    draining: bool = False
    last_used: float = field(default_factory=time.monotonic)
    ready_since: float | None = None
    asleep_since: float | None = None
    failure: str | None = None
    #: (monotonic time, new state) of the latest changes.
    transitions: deque[tuple[float, ModelState]] = field(
        default_factory=lambda: deque(maxlen=TRANSITIONS_KEPT), repr=False)
    transitions_total: int = 0

    @property
    def state(self) -> ModelState:
        return self._state

    @state.setter
    def state(self, value: ModelState) -> None:
        if value is not self._state:
            self._state = value
            self.transitions.append((time.monotonic(), value))
            self.transitions_total += 1


class Lease:
    """A request's hold on a ready model; ``release()`` when the response is finished."""

    def __init__(self, release: Callable[[str], None], model_id: str,
                 container: ContainerRef) -> None:
        # The container is fixed at admission: if it dies later, this lease still names the one
        # the request was admitted to (and its death reason).
        self._release = release
        self.model_id = model_id
        self.container = container
        self.base_url: str = container.base_url or ""
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._release(self.model_id)


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

    def to_json(self, model: Any) -> dict[str, Any]:
        """``/running``'s fields, plus llama-swap's model list ones (``id``, ``unlisted``,
        ``aliases``); ``model`` is the model's config."""
        return {
            "id": self.model_id, "model": self.model_id, "state": self.state.value,
            "name": model.name, "description": model.description, "unlisted": model.unlisted,
            "aliases": list(model.aliases), "ttl": self.ttl_s,
            "ttl_left_s": _rounded(self.ttl_left_s), "container_id": self.container_id,
            "container_name": self.container_name, "image": self.image,
            "base_url": self.base_url, "in_flight": self.in_flight, "waiting": self.waiting,
            "uptime_s": _rounded(self.uptime_s), "failure": self.failure,
        }

    @classmethod
    def of(cls, runtime: ModelRuntime, image: str, ttl: int, waiting: int,
           now: float) -> "ModelStatus":
        ttl_left = None
        if ttl > 0 and runtime.state is ModelState.READY:
            idle = 0.0 if runtime.in_flight else now - runtime.last_used
            ttl_left = max(0.0, ttl - idle)
        container = runtime.container
        return cls(
            model_id=runtime.model_id, state=runtime.state,
            container_id=container.id if container else None,
            container_name=container.name if container else None,
            image=image, base_url=container.base_url if container else None,
            in_flight=runtime.in_flight, waiting=waiting,
            uptime_s=(now - runtime.ready_since) if runtime.ready_since and container else None,
            ttl_s=ttl, ttl_left_s=ttl_left, failure=runtime.failure,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
