"""Noticing that a model's container died outside our control, and saying how.

Two sources: the engine's event stream (a ``die`` event, or a gap in the stream after which
every ready container is checked), and the hop, when an upstream call fails. Either way the
container is inspected, the reason (exit code, OOM kill, log tail) is kept for the requests
that were in flight on it, and the orchestrator is told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from llamaswap_docker.lifecycle.driver import ContainerDriver
from llamaswap_docker.lifecycle.model import ModelRuntime, ModelState
from llamaswap_docker.runtime import ContainerRef, Containers
from llamaswap_docker.runtime.events import ContainerEvent, EventWatcher

__all__ = ["DeathWatch"]

#: Looks (0.1 s apart) after a failed upstream call before calling the container alive.
UPSTREAM_FAILURE_LOOKS = 5
#: States whose container dying is news (a starting or stopping one is reported by its task).
_WATCHED = (ModelState.READY, ModelState.ASLEEP)
#: Death reasons remembered for requests still in flight on a dead container.
MAX_DEATH_REASONS = 256


class DeathWatch:
    """Turns engine events and failed upstream calls into ``on_death(container_id, reason)``."""

    def __init__(self, driver: ContainerDriver, models: Callable[[], dict[str, ModelRuntime]],
                 on_death: Callable[[str, str], None]) -> None:
        self._driver = driver
        self._models = models
        self._on_death = on_death
        self._reasons: dict[str, str] = {}
        self.events: EventWatcher | None = None
        #: The event watcher of each engine, by name ("" for the one engine).
        self.watchers: dict[str, EventWatcher] = {}

    def start(self, containers: Containers,
              spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """Follow the engine's events; ``spawn`` runs a coroutine on the loop (from any thread)."""
        name = containers.engine_name
        watcher = EventWatcher(
            containers.engine, containers.instance,
            on_event=lambda event: spawn(self._on_event(event)),
            on_reconnect=lambda: spawn(self._resync(name)),
        )
        self.watchers[name] = watcher
        self.events = self.events or watcher
        watcher.start()

    async def forget(self, engine: str) -> None:
        """Stop following an engine that went away (a new watcher follows it when back)."""
        watcher = self.watchers.pop(engine, None)
        if watcher is not None:
            if self.events is watcher:
                self.events = next(iter(self.watchers.values()), None)
            await asyncio.to_thread(watcher.stop)

    async def stop(self) -> None:
        for engine in list(self.watchers):
            await self.forget(engine)

    async def upstream_failed(self, container: ContainerRef) -> str | None:
        """After a failed upstream call: how the container died, or None while it runs."""
        if container.id in self._reasons:
            return self._reasons[container.id]
        # A dying container may still be listed as running for a moment: look again.
        reason = await self._driver.death(container, looks=UPSTREAM_FAILURE_LOOKS)
        if reason is not None:
            self.died(container.id, reason)
        return reason

    def died(self, container_id: str, reason: str) -> None:
        self._reasons[container_id] = reason
        while len(self._reasons) > MAX_DEATH_REASONS:
            self._reasons.pop(next(iter(self._reasons)))
        self._on_death(container_id, reason)

    async def _on_event(self, event: ContainerEvent) -> None:
        if event.action == "die":
            await self._check(event.container_id)

    async def _resync(self, engine: str = "") -> None:
        """After an event-stream gap: any container we think is up but is not, died."""
        for runtime in list(self._models().values()):
            if (runtime.container is not None and runtime.state in _WATCHED
                    and runtime.container.engine == engine):
                await self._check(runtime.container.id)

    async def _check(self, container_id: str) -> None:
        for runtime in list(self._models().values()):
            ref = runtime.container
            if ref is not None and ref.id == container_id and runtime.state in _WATCHED:
                reason = await self._driver.death(ref)
                if reason is not None:
                    self.died(ref.id, reason)
