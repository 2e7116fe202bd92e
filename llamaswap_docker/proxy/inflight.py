"""The requests in flight (holding a model's lease), so they can be listed and cut.

Each hop registers itself once admitted and leaves in its ``finally``. Cutting one (``cut``)
records why and cancels its task: the hop's one cleanup path releases the lease and closes the
upstream connection, and the client gets an error in its dialect (in-band on a stream).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InFlight", "InFlightRequests"]


@dataclass(eq=False)
class InFlight:
    """One admitted request."""

    id: str
    model_id: str
    path: str
    client: str
    task: asyncio.Task[Any] | None
    started: float = field(default_factory=time.monotonic)
    #: Body bytes relayed to the client so far.
    bytes: int = 0
    #: The response's headers went out (an error can then only be sent in-band).
    responded: bool = False
    #: Why it was cut (unload with force, a cancel, a stalled client); None while it runs.
    cut: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model_id, "path": self.path, "client": self.client,
                "elapsed_s": round(time.monotonic() - self.started, 3), "bytes": self.bytes}


class InFlightRequests:
    """The registry the hop keeps and the management API reads."""

    def __init__(self) -> None:
        self._by_id: dict[str, InFlight] = {}
        self._ids = itertools.count(1)

    def add(self, model_id: str, path: str, client: str) -> InFlight:
        entry = InFlight(f"r{next(self._ids)}", model_id, path, client, asyncio.current_task())
        self._by_id[entry.id] = entry
        return entry

    def remove(self, entry: InFlight) -> None:
        self._by_id.pop(entry.id, None)

    def list(self) -> list[InFlight]:
        return sorted(self._by_id.values(), key=lambda entry: entry.started)

    def cut(self, request_id: str, reason: str) -> bool:
        """Cut one request; False when no such request is in flight."""
        entry = self._by_id.get(request_id)
        if entry is None or entry.task is None:
            return False
        if entry.cut is None:
            entry.cut = reason
            entry.task.cancel()
        return True

    def cut_models(self, model_ids: Iterable[str], reason: str) -> int:
        """Cut every request in flight on these models; how many were."""
        wanted = set(model_ids)
        victims = [e.id for e in self._by_id.values() if e.model_id in wanted]
        return sum(self.cut(request_id, reason) for request_id in victims)
