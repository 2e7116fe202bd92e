"""Carrying out the scheduler's engine decisions: start, stop, sleep, wake, remove.

``Effects`` is the interface the orchestrator calls for each decision (as llama-swap's
scheduler calls its ``Effects``); ``EngineEffects`` carries them out through the container
driver. Each runs as a task; its outcome goes back as an event (``lifecycle/outcomes.py``)
through the ``Orchestrator`` interface, which ``ModelManager`` implements: this module never
sees the manager nor the scheduler. Swaps and pulls are reported as live events, load times
and failures to the Prometheus counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from loguru import logger

from llamaswap_docker.config import Config
from llamaswap_docker.errors import (
    EngineError,
    ImageNotFound,
    ImagePullFailed,
    LlamaswapError,
)
from llamaswap_docker.lifecycle.driver import ContainerDriver, LastOutput
from llamaswap_docker.lifecycle.outcomes import (
    Created,
    Outcome,
    Ready,
    SleepFailed,
    Slept,
    StartAbandoned,
    StartFailed,
    StopFailed,
    Stopped,
    WakeFailed,
)
from llamaswap_docker.lifecycle.scheduler import Sleep, Start, Stop, Wake
from llamaswap_docker.observe import EventBus, Metrics
from llamaswap_docker.runtime import ContainerRef, PullProgress

__all__ = ["Effects", "EngineEffects", "Orchestrator"]


class Orchestrator(Protocol):
    """What carrying out decisions needs of the orchestrator (``ModelManager``)."""

    config: Config  # the current one (a reload replaces it)
    events: EventBus
    metrics: Metrics | None
    #: Each model's last removed container's output (``logs MODEL`` after a swap).
    last_output: dict[str, LastOutput]

    def report(self, outcome: Outcome) -> None:
        """Feed an outcome to the scheduler and apply the decisions that follow."""
        ...

    def container_of(self, model_id: str) -> ContainerRef | None: ...

    def abandonable(self, model_id: str) -> bool:
        """Whether a start may be given up (nobody waits for it, others wait)."""
        ...


class Effects(Protocol):
    """The engine side of the scheduler's decisions."""

    async def start(self, decision: Start) -> None: ...

    async def stop(self, decision: Stop) -> None: ...

    async def sleep(self, decision: Sleep) -> None: ...

    async def wake(self, decision: Wake) -> None: ...

    async def stop_ref(self, ref: ContainerRef, reason: str) -> None: ...


class EngineEffects:
    """``Effects`` through the container driver."""

    def __init__(self, orchestrator: Orchestrator, driver: ContainerDriver) -> None:
        self._host = orchestrator
        self._driver = driver

    async def start(self, decision: Start) -> None:
        model_id = decision.model_id
        log = logger.bind(model=model_id, image=self._host.config.models[model_id].image)
        if decision.placement is not None:
            log = log.bind(gpus=decision.placement.label)
        log.info("model starting")
        started = self._swap_started(decision)
        try:
            container = await self._driver.start(
                model_id, self._host.config,
                abandon=lambda: self._host.abandonable(model_id),
                on_created=lambda ref: self._host.report(Created(model_id, ref)),
                on_pull=self._pull_reporter(model_id),
                placement=decision.placement)
        except asyncio.CancelledError:
            self._host.report(StartAbandoned(model_id))
            raise
        except LlamaswapError as error:
            log.bind(error=error.message.splitlines()[0]).error("model start failed")
            self._swap_ended(model_id, started, error)
            self._host.report(StartFailed(model_id, error))
            return
        if container is None:
            log.info("start abandoned: no request waits for the model any more")
            self._swap_ended(model_id, started, "abandoned")
            self._host.report(StartAbandoned(model_id))
            return
        log.bind(container=container.name,
                 seconds=f"{time.monotonic() - started:.2f}").info("model ready")
        self._swap_ended(model_id, started, None)
        self._host.report(Ready(model_id, container, time.monotonic()))

    def _swap_started(self, decision: Start | Wake) -> float:
        self._host.events.publish("swap", {"phase": "start", "model": decision.model_id,
                                           "evicted": list(decision.evicted),
                                           "wake": isinstance(decision, Wake)})
        return time.monotonic()

    def _swap_ended(self, model_id: str, started: float,
                    failure: LlamaswapError | str | None) -> None:
        seconds = time.monotonic() - started
        metrics = self._host.metrics
        if metrics is not None:
            if failure is None:
                metrics.load(model_id, seconds)
            elif isinstance(failure, LlamaswapError):
                metrics.load_failed(model_id, _failure_kind(failure))
        error = failure.message if isinstance(failure, LlamaswapError) else failure
        self._host.events.publish("swap", {"phase": "end", "model": model_id,
                                           "ok": failure is None, "seconds": round(seconds, 3),
                                           "error": error})

    def _pull_reporter(self, model_id: str) -> Callable[[PullProgress], None]:
        """Pull progress (from the engine thread) as ``pull`` events, at most 4 a second."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(progress: PullProgress) -> None:
            now = time.monotonic()
            if now - last[0] < 0.25 and progress.fraction != 1.0:
                return
            last[0] = now
            data = {"model": model_id, "image": progress.image, "status": progress.status,
                    "layer": progress.layer, "fraction": progress.fraction}
            loop.call_soon_threadsafe(self._host.events.publish, "pull", data)

        return report

    async def stop(self, decision: Stop) -> None:
        ref = self._host.container_of(decision.model_id)
        try:
            if ref is not None:
                await self.stop_ref(ref, decision.reason)
        except Exception as exc:  # noqa: BLE001 - the scheduler decides what fails with it
            logger.bind(model=decision.model_id).error("stop failed: {}", _describe(exc))
            self._host.report(StopFailed(decision.model_id, _describe(exc)))
            return
        self._host.report(Stopped(decision.model_id))

    async def sleep(self, decision: Sleep) -> None:
        ref = self._host.container_of(decision.model_id)
        log = logger.bind(model=decision.model_id, level=decision.level,
                          reason=f"swapping to {decision.evicted_for}")
        started = time.monotonic()
        try:
            if ref is None:
                raise LlamaswapError("the container is gone")
            await self._driver.sleep(ref, decision.level)
        except Exception as exc:  # noqa: BLE001 - any failure: the scheduler stops it instead
            self._host.report(SleepFailed(decision.model_id, _describe(exc)))
            return
        log.bind(seconds=f"{time.monotonic() - started:.2f}").info("model asleep")
        self._host.report(Slept(decision.model_id, time.monotonic()))

    async def wake(self, decision: Wake) -> None:
        model_id = decision.model_id
        ref = self._host.container_of(model_id)
        started = self._swap_started(decision)
        try:
            if ref is None:
                raise LlamaswapError("the container is gone")
            await self._driver.wake(ref, self._host.config)
        except Exception as exc:  # noqa: BLE001 - any failure: the scheduler starts it cold
            self._swap_ended(model_id, started, f"wake failed: {_describe(exc)}")
            self._host.report(WakeFailed(model_id, _describe(exc)))
            return
        logger.bind(model=model_id, container=ref.name,
                    seconds=f"{time.monotonic() - started:.2f}").info("model awake")
        self._swap_ended(model_id, started, None)
        self._host.report(Ready(model_id, ref, time.monotonic()))

    async def stop_ref(self, ref: ContainerRef, reason: str) -> None:
        """Stop and remove a container, keeping its last output for ``logs MODEL``."""
        output = await self._driver.stop(ref, self._host.config, reason)
        self._host.last_output[ref.model_id] = output


def _failure_kind(error: LlamaswapError) -> str:
    """A load failure's ``reason`` label: a few kinds, never a free-form message."""
    if isinstance(error, (ImageNotFound, ImagePullFailed)):
        return "image"
    if isinstance(error, EngineError):  # unreachable engines included (a subclass)
        return "engine"
    if "did not pass its health check" in error.message:
        return "health_timeout"
    if " exited with code " in error.message or "was removed" in error.message:
        return "exited"
    return "other"


def _describe(exc: Exception) -> str:
    return exc.message if isinstance(exc, LlamaswapError) else f"{type(exc).__name__}: {exc}"
