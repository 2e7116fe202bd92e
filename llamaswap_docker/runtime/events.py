"""Follow the engine's event stream for our containers, in a thread, reconnecting when it drops.

A model container that dies or is OOM-killed outside our control must be noticed at once, not
at the next request. The engine's ``/events`` stream is read in a worker thread (docker-py is
blocking) and stopped by closing it from shutdown. When the stream ends — the engine restarted,
the socket dropped — the watcher reconnects with ``since`` set to the last event it saw, so
nothing that happened meanwhile is missed, and tells its owner to re-check its containers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from llamaswap_docker.runtime import labels
from llamaswap_docker.runtime.engine import Engine, close_stream

__all__ = ["ContainerEvent", "EventWatcher"]

#: Seconds between reconnection attempts while the engine is unreachable.
RECONNECT_DELAY_S = 1.0


@dataclass(frozen=True)
class ContainerEvent:
    """A lifecycle event of one of our containers."""

    action: str  # "die", "oom", "destroy"...
    container_id: str
    name: str
    model_id: str
    exit_code: int | None
    time_ns: int

    @classmethod
    def from_engine(cls, event: dict[str, Any]) -> "ContainerEvent":
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        exit_code = attributes.get("exitCode")
        return cls(
            action=event.get("Action") or event.get("status", ""),
            container_id=actor.get("ID") or event.get("id", ""),
            name=attributes.get("name", ""),
            model_id=attributes.get(labels.MODEL, ""),
            exit_code=int(exit_code) if exit_code not in (None, "") else None,
            time_ns=int(event.get("timeNano") or int(event.get("time", time.time())) * 10**9),
        )


class EventWatcher:
    """Reads container events of one instance and hands them to ``on_event`` (in its thread).

    ``on_reconnect`` is called (in the thread) after the stream was re-established, so the owner
    can compare its view with the engine's.
    """

    WATCHED_ACTIONS = ("die", "oom", "kill", "destroy")

    def __init__(
        self,
        engine: Engine,
        instance: str,
        on_event: Callable[[ContainerEvent], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self.engine = engine
        self.instance = instance
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.should_exit = False
        self.connected = threading.Event()
        self._stream: Any = None
        self._lock = threading.Lock()
        self._last_seen_s: float | None = None
        self._thread = threading.Thread(target=self._run, name="llamaswap-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def interrupt(self) -> None:
        """Drop the current stream (as an engine restart would); the watcher reconnects."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            close_stream(stream)

    def stop(self, timeout: float = 5.0) -> None:
        self.should_exit = True
        self.interrupt()
        self._thread.join(timeout)

    def _run(self) -> None:
        first = True
        last_seen_ns = 0
        while not self.should_exit:
            stream = None
            try:
                since = self._last_seen_s if self._last_seen_s is not None else time.time()
                stream = self.engine.client.api.events(
                    since=int(since),
                    filters={
                        "type": "container",
                        "label": labels.instance_filters(self.instance)["label"],
                        "event": list(self.WATCHED_ACTIONS),
                    },
                    decode=True,
                )
                # From now on a reconnect replays from here, even if no event ever comes.
                self._last_seen_s = since
                with self._lock:
                    self._stream = stream
                if self.should_exit:
                    return
                self.connected.set()
                if not first:
                    logger.bind(instance=self.instance).info("engine event stream reconnected")
                    self.on_reconnect()
                first = False
                for raw in stream:
                    try:
                        event = ContainerEvent.from_engine(raw)
                    except (TypeError, ValueError) as exc:
                        logger.bind(error=str(exc)).warning("ignoring a malformed engine event")
                        continue
                    if event.time_ns <= last_seen_ns:
                        continue  # replayed after a reconnect: already handled
                    last_seen_ns = event.time_ns
                    self._last_seen_s = event.time_ns / 1e9
                    try:
                        self.on_event(event)
                    except Exception as exc:  # noqa: BLE001 - one bad event must not end the stream
                        logger.opt(exception=exc).error("handling an engine event failed")
            except Exception as exc:  # noqa: BLE001 - engine away: retry until told to stop
                if not self.should_exit:
                    logger.bind(error=str(exc)[:200]).warning("engine event stream failed")
            finally:
                self.connected.clear()
                with self._lock:
                    self._stream = None
                if stream is not None:
                    try:
                        close_stream(stream)
                    except Exception:  # noqa: BLE001 - already broken
                        pass
            if not self.should_exit:
                logger.bind(instance=self.instance).warning("engine event stream ended, reconnecting")
                time.sleep(RECONNECT_DELAY_S)
