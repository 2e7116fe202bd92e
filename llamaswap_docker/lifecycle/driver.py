"""The container driver: the async face of ``runtime/`` for the lifecycle, with deadlines.

Every engine call runs in a worker thread under a deadline, so a hung engine fails the one
operation that called it (with a message saying which call) instead of holding it forever.
Starting a model is one call here: image, create, start, health; a start that fails or is
cancelled removes the container it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from loguru import logger

from llamaswap_docker.config import Config
from llamaswap_docker.errors import EngineError, LlamaswapError, ModelStartFailed
from llamaswap_docker.lifecycle.engines import EngineSet
from llamaswap_docker.lifecycle.health import HealthOutcome, wait_until_healthy
from llamaswap_docker.lifecycle.placement import Placement
from llamaswap_docker.runtime import (
    ContainerRef,
    Containers,
    ContainerSpec,
    ContainerState,
    PullProgress,
    ensure_image,
)

__all__ = ["ENGINE_CALL_TIMEOUT_S", "ContainerDriver", "LastOutput"]

T = TypeVar("T")

#: Deadline of one engine call (inspect, create, start, logs); stops add their stopTimeout.
ENGINE_CALL_TIMEOUT_S = 120.0
#: Deadline of preparing an image (a pull of tens of GB included).
IMAGE_TIMEOUT_S = 6 * 3600.0
#: Deadline of putting a server to sleep (vLLM offloads its weights to CPU RAM meanwhile).
SLEEP_TIMEOUT_S = 120.0
#: Log lines of a failed container quoted in its error.
LOG_TAIL_LINES = 15
#: Output lines kept of each model's last container once it is gone (``logs MODEL``).
LAST_OUTPUT_LINES = 1000


@dataclass(frozen=True)
class LastOutput:
    """What a model's previous container wrote, kept after its removal."""

    container_name: str
    reason: str  # why it was stopped
    stopped_at: float  # epoch seconds
    text: str


def key_header(container: ContainerRef) -> dict[str, str] | None:
    """The container's API key as a header, for health paths a server guards too."""
    return {"Authorization": container.authorization} if container.authorization else None


class ContainerDriver:
    """Starts, inspects and stops model containers for the orchestrator."""

    def __init__(self, containers: Containers | None, http: httpx.AsyncClient,
                 engines: EngineSet | None = None) -> None:
        self.containers = containers
        self.http = http
        #: Several engines (``engines:``); None: ``containers`` is the one engine's.
        self.engines = engines

    def on(self, engine: str) -> Containers:
        """The containers of the engine named ``engine``.

        Raises:
            EngineUnreachable: that engine is down (the message names it).
        """
        if self.engines is None:
            assert self.containers is not None
            return self.containers
        return self.engines.containers(engine)

    def all_up(self) -> list[Containers]:
        """The containers of every engine that answers (the one engine without ``engines:``)."""
        if self.engines is None:
            assert self.containers is not None
            return [self.containers]
        return [slot.containers for slot in self.engines.up() if slot.containers is not None]

    async def call(self, what: str, function: Callable[..., T], *args: Any,
                   timeout: float = ENGINE_CALL_TIMEOUT_S) -> T:
        """Run a blocking runtime call in a thread, bounded by ``timeout`` seconds.

        On a timeout the operation fails at once; the thread itself ends when docker-py's own
        socket timeout (60 s per read) gives up on the engine.
        """
        try:
            return await asyncio.wait_for(asyncio.to_thread(function, *args), timeout)
        except asyncio.TimeoutError:
            raise EngineError(f"{what}: the Docker engine did not answer within {timeout:.0f}s") from None

    async def start(self, model_id: str, config: Config, abandon: Callable[[], bool],
                    on_created: Callable[[ContainerRef], None],
                    on_pull: Callable[[PullProgress], None] | None = None,
                    placement: Placement | None = None) -> ContainerRef | None:
        """Bring the model's container up (on ``placement``'s GPUs, when given) and wait until
        it is healthy.

        Returns:
            The ready container, or None when the start was abandoned (container removed).

        Raises:
            LlamaswapError: the start failed, in a message naming the model (the container,
                if any, is removed first).
        """
        try:
            return await self._start(model_id, config, abandon, on_created, on_pull, placement)
        except ModelStartFailed:
            raise
        except LlamaswapError as exc:
            raise type(exc)(f"model {model_id!r} failed to start: {exc.message}") from exc
        except Exception as exc:  # noqa: BLE001 - any failure must reach the waiters as one
            logger.opt(exception=exc).error("unexpected error starting {}", model_id)
            raise ModelStartFailed(
                f"model {model_id!r} failed to start: {type(exc).__name__}: {exc}") from exc

    async def _start(self, model_id: str, config: Config, abandon: Callable[[], bool],
                     on_created: Callable[[ContainerRef], None],
                     on_pull: Callable[[PullProgress], None] | None,
                     placement: Placement | None) -> ContainerRef | None:
        model = config.models[model_id]
        # A new API key for each start: only the proxy can use the model's server.
        spec = ContainerSpec.from_model(model_id, model).with_new_key()
        name = ""
        if self.engines is not None:
            name = self.engines.choose(model.engine, placement.engine if placement else None)
        if placement is not None:
            # Placement qualifies GPU ids by engine (box2:0); the engine knows them bare.
            devices = tuple(d.removeprefix(f"{name}:") if name else d for d in placement.devices)
            spec = spec.with_gpus(devices, placement.per_device)
        created: ContainerRef | None = None
        containers = self.on(name)
        try:
            engine = containers.engine
            what = f"preparing image for {model_id}"
            await self.call(what, engine.run_sync, what, ensure_image, engine, spec.image,
                            config.docker.pull_policy, on_pull, timeout=IMAGE_TIMEOUT_S)
            creating = asyncio.ensure_future(self.call(f"creating {model_id}", containers.create, spec))
            try:
                created = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # The engine creates it anyway: keep hold of it so the cleanup below removes it.
                with contextlib.suppress(Exception):
                    created = await creating
                raise
            on_created(created)
            created = await self.call(f"starting {model_id}", containers.start, created.id, spec.port)
            on_created(created)
            container = created
            health_url = f"{container.base_url}{model.health_path}" if model.health_path else None
            health_timeout = config.health_timeout(model_id)
            outcome, state = await wait_until_healthy(
                self.http, health_url, health_timeout,
                lambda: self.state(container.id, container.engine),
                abandon=abandon, headers=key_header(container),
            )
            if outcome is None:
                return container
            if outcome == HealthOutcome.ABANDONED:
                await self.stop(container, config, "start abandoned")
                created = None
                return None
            if outcome == HealthOutcome.EXITED:
                reason = await self.death_reason(container, state)
            else:
                tail = await self.logs_tail(container)
                reason = (
                    f"container {container.name} did not pass its health check "
                    f"({health_url}) within healthCheckTimeout={health_timeout}s"
                    + (f"; last log lines:\n{tail}" if tail else "")
                )
            raise ModelStartFailed(f"model {model_id!r} failed to start: {reason}")
        except BaseException:
            # Remove the failed container first, so a client that gets the error finds it gone.
            if created is not None:
                try:
                    await asyncio.shield(self.stop(created, config, "start failed"))
                except Exception as exc:  # noqa: BLE001 - already failing; keep the first error
                    logger.bind(model=model_id).error("could not remove the failed container: {}", exc)
            raise

    async def stop(self, ref: ContainerRef, config: Config, reason: str) -> LastOutput:
        """Stop and remove the container; its last output is returned, for ``logs MODEL``."""
        # A model removed by a config reload no longer has its own stopTimeout/unloadTimeout.
        timeout = (config.stop_timeout(ref.model_id) if ref.model_id in config.models
                   else config.default_stop_timeout)
        started = time.monotonic()
        if self.engines is not None and not self.engines.slot(ref.engine).up:
            # Nothing to ask a engine that is gone: when it is back, its leftovers are adopted
            # or reaped as at a start.
            logger.bind(model=ref.model_id, container=ref.name, engine=ref.engine,
                        reason=reason).info("container left to its engine's return")
            return LastOutput(ref.name, reason, time.time(), "")
        output = await self.call(f"stopping {ref.name}", self.on(ref.engine).stop, ref.id, timeout,
                                 LAST_OUTPUT_LINES, timeout=timeout + ENGINE_CALL_TIMEOUT_S)
        logger.bind(model=ref.model_id, container=ref.name, reason=reason,
                    seconds=f"{time.monotonic() - started:.2f}").info("container stopped and removed")
        return LastOutput(ref.name, reason, time.time(), output)

    async def sleep(self, ref: ContainerRef, level: int) -> None:
        """Put the server to sleep (vLLM: ``POST /sleep?level=N``) and check it is asleep.

        Raises:
            LlamaswapError: it answered otherwise, or not in time.
        """
        await self._control(ref, "POST", f"/sleep?level={level}", SLEEP_TIMEOUT_S)
        if not await self.is_sleeping(ref):
            raise LlamaswapError(f"{ref.name} answered /sleep but /is_sleeping says it is awake")

    async def wake(self, ref: ContainerRef, config: Config) -> None:
        """Wake the server (``POST /wake_up``) and check it is awake, within healthCheckTimeout.

        Raises:
            LlamaswapError: it answered otherwise, or not in time.
        """
        timeout = (config.health_timeout(ref.model_id) if ref.model_id in config.models
                   else config.health_check_timeout)
        await self._control(ref, "POST", "/wake_up", timeout)
        if await self.is_sleeping(ref):
            raise LlamaswapError(f"{ref.name} answered /wake_up but /is_sleeping says it sleeps")

    async def is_sleeping(self, ref: ContainerRef) -> bool:
        response = await self._control(ref, "GET", "/is_sleeping", ENGINE_CALL_TIMEOUT_S)
        try:
            return bool(response.json()["is_sleeping"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LlamaswapError(f"{ref.name}: /is_sleeping answered {response.text[:200]!r}") from exc

    async def _control(self, ref: ContainerRef, method: str, path: str,
                       timeout: float) -> httpx.Response:
        try:
            response = await self.http.request(method, f"{ref.base_url}{path}", timeout=timeout,
                                               headers=key_header(ref))
        except httpx.HTTPError as exc:
            raise LlamaswapError(f"{method} {path} on {ref.name} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise LlamaswapError(
                f"{method} {path} on {ref.name} answered {response.status_code}: {response.text[:200]}")
        return response

    async def state(self, container_id: str, engine: str = "") -> ContainerState | None:
        return await self.call(f"inspecting {container_id[:12]}", self.on(engine).state,
                               container_id)

    async def logs_tail(self, ref: ContainerRef) -> str:
        return await self.call(f"reading logs of {ref.name}", self.on(ref.engine).logs_tail, ref.id,
                               LOG_TAIL_LINES)

    async def death(self, ref: ContainerRef, looks: int = 1) -> str | None:
        """How the container died, or None while it runs (after ``looks`` looks, 0.1 s apart)."""
        for look in range(looks):
            state = await self.state(ref.id, ref.engine)
            if state is None or not state.running:
                return await self.death_reason(ref, state)
            if look + 1 < looks:
                await asyncio.sleep(0.1)
        return None

    async def death_reason(self, ref: ContainerRef, state: ContainerState | None) -> str:
        tail = await self.logs_tail(ref)
        what = state.describe() if state is not None else "was removed"
        return f"container {ref.name} {what}" + (f"; last log lines:\n{tail}" if tail else "")

    @staticmethod
    def changes(old: Config, new: Config) -> tuple[list[str], list[str], list[str]]:
        """A reload's models: (changed container spec, removed, added)."""
        changed = [m for m in old.models if m in new.models
                   and (ContainerSpec.from_model(m, old.models[m]).spec_hash
                        != ContainerSpec.from_model(m, new.models[m]).spec_hash
                        or old.models[m].engine != new.models[m].engine)]
        removed = [m for m in old.models if m not in new.models]
        added = [m for m in new.models if m not in old.models]
        return changed, removed, added

    async def adoptable(self, config: Config, engine: str = "",
                        taken: Callable[[str], bool] = lambda model_id: False,
                        ) -> list[tuple[ContainerRef, bool]]:
        """The instance's leftover containers on ``engine`` that can be adopted, each with
        whether it is asleep (sleepMode); the rest are removed (and those of models
        ``taken`` says already run elsewhere)."""
        adopt: dict[str, tuple[ContainerRef, bool]] = {}
        for ref in await self.call("listing containers", self.on(engine).list_owned):
            log = logger.bind(container=ref.name, model=ref.model_id)
            # A duplicate is refused before its health is asked: it goes either way.
            refusal = ("duplicate container for the model" if ref.model_id in adopt
                       else "the model runs elsewhere now" if taken(ref.model_id)
                       else await self.adoption_refusal(ref, config))
            asleep = False
            if refusal is None and config.models[ref.model_id].sleep_mode:
                try:
                    asleep = await self.is_sleeping(ref)
                except LlamaswapError as exc:
                    refusal = f"cannot tell whether it sleeps: {exc.message}"
            if refusal is None:
                adopt[ref.model_id] = (ref, asleep)
                log.bind(asleep=asleep, gpus=",".join(ref.devices) if ref.devices else "-"
                         ).info("adopted running container")
            else:
                log.bind(reason=refusal).info("reaping container")
                await self.stop(ref, config, refusal)
        return list(adopt.values())

    async def adoption_refusal(self, ref: ContainerRef, config: Config) -> str | None:
        """Why a leftover container cannot be adopted, or None when it can."""
        model = config.models.get(ref.model_id)
        if model is None:
            return "model no longer configured"
        if model.engine is not None and model.engine != ref.engine:
            return f"the model is pinned to engine {model.engine!r} now"
        if ref.spec_hash != ContainerSpec.from_model(ref.model_id, model).spec_hash:
            return "config changed (spec hash differs)"
        if ref.status != "running" or ref.base_url is None:
            return f"container is {ref.status}"
        if model.health_path:
            try:
                response = await self.http.get(f"{ref.base_url}{model.health_path}", timeout=5,
                                               headers=key_header(ref))
            except httpx.HTTPError as exc:
                return f"health check failed: {exc!r}"
            if response.status_code != 200:
                return f"health check answered {response.status_code}"
        return None
