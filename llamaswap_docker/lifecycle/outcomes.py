"""What carrying out a decision came to: the events effects report back to the scheduler.

The scheduler decides (``Start``, ``Stop``, ``Sleep``, ``Wake``, ``Remove``); the effects carry
the decision out against the engine and report one of these through the orchestrator, which
feeds it to ``Scheduler.handle`` and applies the decisions that follow. Neither side calls the
other: effects know only the ``Orchestrator`` interface (``lifecycle/effects.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.runtime import ContainerRef

__all__ = [
    "Created", "Outcome", "Ready", "SleepFailed", "Slept", "StartAbandoned", "StartFailed",
    "StopFailed", "Stopped", "WakeFailed",
]


@dataclass(frozen=True)
class Created:
    """The starting model's container exists (a status can show it)."""
    model_id: str
    container: ContainerRef


@dataclass(frozen=True)
class Ready:
    """The model answers its health check (started or woken) in ``container``."""
    model_id: str
    container: ContainerRef
    at: float


@dataclass(frozen=True)
class StartFailed:
    model_id: str
    error: LlamaswapError


@dataclass(frozen=True)
class StartAbandoned:
    """Nobody waited for the model any more: its start was given up (container removed)."""
    model_id: str


@dataclass(frozen=True)
class Stopped:
    """The model's container is stopped and removed."""
    model_id: str


@dataclass(frozen=True)
class StopFailed:
    model_id: str
    message: str


@dataclass(frozen=True)
class Slept:
    model_id: str
    at: float


@dataclass(frozen=True)
class SleepFailed:
    model_id: str
    reason: str


@dataclass(frozen=True)
class WakeFailed:
    model_id: str
    reason: str


Outcome = (Created | Ready | StartFailed | StartAbandoned | Stopped | StopFailed | Slept
           | SleepFailed | WakeFailed)
