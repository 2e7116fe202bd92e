"""The requests in flight (holding a model's lease), so they can be listed and cut.

Each hop registers itself once admitted and leaves in its ``finally``. Cutting one (``cut``)
records why and cancels its task: the hop's one cleanup path releases the lease and closes the
upstream connection, and the client gets an error in its dialect (in-band on a stream).

Stalled clients are found by one watchdog task, not by a timer per write: a hop marks when a
write to its client starts and ends (two attribute stores), and the watchdog cuts any request
whose write has been waiting longer than its ``stallTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llamaswap_docker.observe import EventBus

__all__ = ["InFlight", "InFlightRequests", "STALL_CHECK_INTERVAL_S"]

#: How often the watchdog looks for stalled clients (a cut comes at most this much late).
STALL_CHECK_INTERVAL_S = 0.5


@dataclass(eq=False, slots=True)
class InFlight:
    """One admitted request."""

    id: str
    model_id: str
    path: str
    client: tuple[str, int] | None
    task: asyncio.Task[Any] | None
    #: Seconds a write to the client may wait before the request is cut.
    stall_timeout: float
    started: float = field(default_factory=time.monotonic)
    #: Body bytes relayed to the client so far.
    bytes: int = 0
    #: The response's headers went out (an error can then only be sent in-band).
    responded: bool = False
    #: When the write to the client now waiting began (None: not writing).
    writing_since: float | None = None
    #: Why it was cut (unload with force, a cancel, a stalled client); None while it runs.
    cut: str | None = None
    #: The client stalled: nothing more can be written to it.
    stalled: bool = False

    def snapshot(self) -> dict[str, Any]:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        return {"id": self.id, "model": self.model_id, "path": self.path, "client": client,
                "elapsed_s": round(time.monotonic() - self.started, 3), "bytes": self.bytes}


class InFlightRequests:
    """The registry the hop keeps and the management API reads."""

    def __init__(self, events: EventBus | None = None) -> None:
        #: ``inflight`` events (upsert, remove) for ``GET /api/events``.
        self.events = events or EventBus()
        self._by_id: dict[str, InFlight] = {}
        self._ids = itertools.count(1)
        self._watchdog: asyncio.Task[None] | None = None

    def add(self, model_id: str, path: str, client: tuple[str, int] | None,
            stall_timeout: float) -> InFlight:
        entry = InFlight(f"r{next(self._ids)}", model_id, path, client, asyncio.current_task(),
                         stall_timeout)
        self._by_id[entry.id] = entry
        if self.events.subscribers:
            self.events.publish("inflight", {"op": "upsert", "request": entry.snapshot(),
                                             "total": len(self._by_id)})
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_stalls(), name="llamaswap-stalls")
        return entry

    def remove(self, entry: InFlight) -> None:
        self._by_id.pop(entry.id, None)
        if self.events.subscribers:
            self.events.publish("inflight", {"op": "remove", "id": entry.id,
                                             "total": len(self._by_id)})

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

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(STALL_CHECK_INTERVAL_S)
            now = time.monotonic()
            for entry in list(self._by_id.values()):
                since = entry.writing_since
                if since is not None and now - since > entry.stall_timeout and entry.cut is None:
                    entry.stalled = True  # the hop logs the cut, with this reason
                    self.cut(entry.id, f"the client accepted no bytes for "
                                       f"{entry.stall_timeout:g}s (stallTimeout)")
