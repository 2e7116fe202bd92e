"""Live events for ``GET /api/events``: publish from the loop, one bounded queue per reader.

A slow subscriber never slows the proxy: when its queue is full the event is dropped for it
and counted, and the reader is told how many it missed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["EventBus", "Subscription"]

#: Events a subscriber may have waiting before new ones are dropped for it.
QUEUE_LIMIT = 1000


class Subscription:
    """One reader's queue of ``(type, data)`` events."""

    def __init__(self, bus: "EventBus", limit: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(limit)
        self.dropped = 0

    def offer(self, event: tuple[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def close(self) -> None:
        self._bus.subscribers.discard(self)


class EventBus:
    """Fan-out of events to the subscribers of the moment (none: publishing is nearly free)."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.subscribers: set[Subscription] = set()
        self._limit = limit

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, self._limit)
        self.subscribers.add(subscription)
        return subscription

    def publish(self, kind: str, data: Any) -> None:
        """Send an event to every subscriber (call on the event loop)."""
        if not self.subscribers:
            return
        event = (kind, {**data, "time": time.time()} if isinstance(data, dict) else data)
        for subscription in list(self.subscribers):
            subscription.offer(event)
