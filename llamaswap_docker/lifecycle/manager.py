"""``ModelManager``: the one place where models start, swap, serve and stop.

Requests ``acquire`` a model and hold a ``Lease`` while they are served. A single pump task
admits waiters whose model is ready and runs one *operation* at a time — bring a model up
(evicting what cannot coexist, after their in-flight requests finish), or unload one (TTL,
API) — so the engine never sees two swaps racing.

Fairness: requests are queued FIFO; while a swap is pending, the models it evicts admit no new
requests (they queue behind it), and when a model comes up every request queued for it is
admitted together (ABAB arrives, AABB is served).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from loguru import logger

from llamaswap_docker.config import Config
from llamaswap_docker.errors import (
    ConcurrencyLimitExceeded,
    LlamaswapError,
    ModelNotFound,
    ModelStartFailed,
    ModelStopped,
)
from llamaswap_docker.lifecycle.health import HealthOutcome, wait_until_healthy
from llamaswap_docker.lifecycle.model import ModelRuntime, ModelState, ModelStatus
from llamaswap_docker.lifecycle.scheduler import models_to_evict
from llamaswap_docker.runtime import ContainerRef, Containers, ContainerSpec, ContainerState, ensure_image
from llamaswap_docker.runtime.events import ContainerEvent, EventWatcher

__all__ = ["LastOutput", "Lease", "ModelManager"]

#: How often idle models are checked against their TTL.
TTL_CHECK_INTERVAL_S = 0.5
#: Inspections (0.1 s apart) after a failed upstream call before calling the container alive.
UPSTREAM_FAILURE_RECHECKS = 5
#: Death reasons remembered for requests still in flight on a dead container.
MAX_DEATH_REASONS = 256
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


class Lease:
    """A request's hold on a ready model; ``release()`` when the response is finished."""

    def __init__(self, manager: "ModelManager", runtime: ModelRuntime, container: ContainerRef) -> None:
        # The container is fixed at admission: if it dies later, this lease still names the one
        # the request was admitted to (and its death reason).
        self._manager = manager
        self._runtime = runtime
        self.model_id = runtime.model_id
        self.container = container
        self.base_url: str = container.base_url or ""
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._manager._release(self._runtime)


def _key_header(container: ContainerRef) -> dict[str, str] | None:
    """The container's API key as a header, for health paths a server guards too."""
    return {"Authorization": container.authorization} if container.authorization else None


@dataclass(eq=False)
class _Waiter:
    model_id: str
    #: Resolved with the container the request is admitted to.
    future: asyncio.Future[ContainerRef]


@dataclass(eq=False)
class _Unload:
    model_ids: tuple[str, ...]
    reason: str
    future: asyncio.Future[None] | None = None
    #: Set for TTL unloads: skip a model that was used again since the TTL expired.
    idle_for: float | None = None
    #: Set for forced unloads: cuts the requests in flight on the given models.
    cut: Callable[[list[str]], object] | None = None


@dataclass(eq=False)
class _BringUp:
    model_id: str


@dataclass
class _Tasks:
    pump: asyncio.Task[None] | None = None
    ttl: asyncio.Task[None] | None = None
    busy: asyncio.Task[None] | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)


class ModelManager:
    """Starts, swaps and stops the configured models' containers."""

    def __init__(self, config: Config, containers: Containers, http: httpx.AsyncClient) -> None:
        self.config = config
        self.containers = containers
        self.http = http
        self.models: dict[str, ModelRuntime] = {m: ModelRuntime(m) for m in config.models}
        self._waiters: list[_Waiter] = []
        self._unloads: deque[_Unload] = deque()
        self._wake = asyncio.Event()
        self._released = asyncio.Event()
        self._tasks = _Tasks()
        #: Why a container died, kept for requests that were in flight on it.
        self._death_reasons: dict[str, str] = {}
        #: Each model's last removed container's output (bounded by ``LAST_OUTPUT_LINES``).
        self.last_output: dict[str, LastOutput] = {}
        self._events: EventWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = False
        self.should_exit = False

    # -- public API ----------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """Model id for a model id or alias.

        Raises:
            ModelNotFound: neither a model nor an alias.
        """
        model_id = self.config.resolve(name)
        if model_id is None:
            raise ModelNotFound(
                f"model {name!r} is not configured; GET /v1/models lists the models you can use"
            )
        return model_id

    async def startup(self) -> None:
        """Prepare the network, adopt or reap our leftover containers, start the pump."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.containers.ensure_network)
        self._events = EventWatcher(
            self.containers.engine, self.containers.instance,
            on_event=lambda event: self._from_thread(self._on_event(event)),
            on_reconnect=lambda: self._from_thread(self._resync()),
        )
        self._events.start()
        await self._reconcile()
        for model_id, model in self.config.models.items():
            spec = ContainerSpec.from_model(model_id, model)
            for warning in await asyncio.to_thread(self.containers.host_path_warnings, spec):
                logger.bind(model=model_id).warning(warning)
        self._tasks.pump = asyncio.create_task(self._pump(), name="llamaswap-pump")
        self._tasks.ttl = asyncio.create_task(self._ttl_loop(), name="llamaswap-ttl")
        self.started = True
        for name in self.config.hooks.on_startup.preload:
            model_id = self.resolve(name)
            self._spawn(self._preload(model_id))

    def reject_waiters(self, reason: str = "the proxy is shutting down") -> None:
        """Fail every queued request now (on SIGTERM), so shutdown does not wait on them."""
        self.should_exit = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(ModelStopped(reason))
        self._waiters.clear()

    async def shutdown(self, keep_containers: bool = False) -> None:
        """Stop the pump, fail queued requests, and stop and remove every owned container."""
        self.should_exit = True
        if self._events is not None:
            await asyncio.to_thread(self._events.stop)
        for task in (self._tasks.pump, self._tasks.ttl, self._tasks.busy, *self._tasks.background):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._tasks.pump, self._tasks.ttl, self._tasks.busy, *self._tasks.background):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        self.reject_waiters()
        if keep_containers:
            logger.info("shutdown: keeping model containers for the next start to adopt")
            return
        owned = await asyncio.to_thread(self.containers.list_owned)
        await asyncio.gather(*(self._stop_ref(ref, "proxy shutdown") for ref in owned))
        for runtime in self.models.values():
            runtime.state, runtime.container, runtime.draining = ModelState.STOPPED, None, False

    def try_acquire(self, model_id: str) -> Lease | None:
        """Admit one request now if the model is ready; None when it would have to wait.

        Raises:
            ModelNotFound: unknown model.
            ConcurrencyLimitExceeded: ``concurrencyLimit`` requests already in flight or queued.
        """
        runtime = self._runtime(model_id)
        model = self.config.models.get(model_id)
        if model is None:  # removed by a config reload since the request was resolved
            raise ModelNotFound(f"model {model_id!r} is not configured")
        limit = model.concurrency_limit
        if limit and runtime.in_flight + self._waiting(model_id) >= limit:
            raise ConcurrencyLimitExceeded(
                f"model {model_id!r} already has {limit} requests in flight (concurrencyLimit)",
                retry_after=1,
            )
        if self._admissible(runtime):
            assert runtime.container is not None
            runtime.in_flight += 1
            return Lease(self, runtime, runtime.container)
        return None

    async def acquire(self, model_id: str) -> Lease:
        """Wait until ``model_id`` is ready and admit one request to it.

        Raises:
            ModelNotFound: unknown model.
            ConcurrencyLimitExceeded: ``concurrencyLimit`` requests already in flight or queued.
            ModelStartFailed: the container could not be started.
        """
        lease = self.try_acquire(model_id)
        if lease is not None:
            return lease
        runtime = self.models[model_id]
        if self.should_exit:
            raise ModelStopped("the proxy is shutting down")
        waiter = _Waiter(model_id, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._wake.set()
        try:
            container = await waiter.future
        except asyncio.CancelledError:
            # The client left: drop its place in the queue, or give back an admission that
            # raced with the cancellation.
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release(runtime)
            self._wake.set()
            raise
        return Lease(self, runtime, container)

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str) -> AsyncIterator[Lease]:
        """``acquire`` as a context manager that always releases."""
        held = await self.acquire(model_id)
        try:
            yield held
        finally:
            held.release()

    async def load(self, model_id: str) -> None:
        """Bring a model up without serving a request (preload, ``/api/models/load``)."""
        async with self.lease(model_id):
            pass

    def load_in_background(self, model_id: str) -> None:
        """``load`` without waiting for it; failures are logged."""
        self._runtime(model_id)
        self._spawn(self._preload(model_id))

    async def unload(self, model_ids: Iterable[str] | None = None, reason: str = "unload requested",
                     cut: Callable[[list[str]], object] | None = None) -> None:
        """Stop the given models (all when None) once their in-flight requests finish.

        ``cut`` (a forced unload) ends those requests instead of waiting: it is called at once,
        and again when the unload runs, for requests admitted meanwhile.
        """
        targets = list(self.models if model_ids is None else model_ids)
        for model_id in targets:
            self._runtime(model_id)
        if cut is not None:
            cut(targets)
        await self._unload_now(targets, reason, cut)

    async def report_upstream_failure(self, lease: Lease) -> str | None:
        """Check the container after a failed upstream call; if it died, say how.

        Returns:
            A reason ("container … exited with code 137 (OOM-killed) …") when the container is
            no longer running (the model is marked failed), None when it still runs.
        """
        if lease.container.id in self._death_reasons:
            return self._death_reasons[lease.container.id]
        # A dying container may still be listed as running for a moment: look twice.
        for _ in range(UPSTREAM_FAILURE_RECHECKS):
            state = await asyncio.to_thread(self.containers.state, lease.container.id)
            if state is None or not state.running:
                break
            await asyncio.sleep(0.1)
        else:
            return None
        reason = await self._death_reason(lease.container, state)
        await self.container_died(lease.container.id, reason)
        return reason

    async def container_died(self, container_id: str, reason: str) -> None:
        """A container stopped outside our control: mark its model failed and remove it."""
        for runtime in self.models.values():
            if runtime.container is not None and runtime.container.id == container_id:
                if runtime.state in (ModelState.STOPPING, ModelState.STARTING):
                    return  # we are stopping it, or the start path reports it
                logger.bind(model=runtime.model_id, container=runtime.container.name).warning(
                    "container died: {}", reason
                )
                ref = runtime.container
                self._death_reasons[container_id] = reason
                while len(self._death_reasons) > MAX_DEATH_REASONS:
                    self._death_reasons.pop(next(iter(self._death_reasons)))
                runtime.state, runtime.container = ModelState.FAILED, None
                runtime.failure, runtime.draining = reason, False
                self._spawn(self._stop_ref(ref, "container died"))
                self._wake.set()
                return

    def status(self) -> list[ModelStatus]:
        """A snapshot of every configured model, sorted by id."""
        now = time.monotonic()
        snapshot = []
        for model_id in sorted(self.models):
            if model_id not in self.config.models:
                continue  # being removed by a config reload
            runtime = self.models[model_id]
            ttl = self.config.effective_ttl(model_id)
            ttl_left = None
            if ttl > 0 and runtime.state is ModelState.READY:
                idle = 0.0 if runtime.in_flight else now - runtime.last_used
                ttl_left = max(0.0, ttl - idle)
            container = runtime.container
            snapshot.append(ModelStatus(
                model_id=model_id,
                state=runtime.state,
                container_id=container.id if container else None,
                container_name=container.name if container else None,
                image=self.config.models[model_id].image,
                base_url=container.base_url if container else None,
                in_flight=runtime.in_flight,
                waiting=self._waiting(model_id),
                uptime_s=(now - runtime.ready_since) if runtime.ready_since and container else None,
                ttl_s=ttl,
                ttl_left_s=ttl_left,
                failure=runtime.failure,
            ))
        return snapshot

    def describe_progress(self, model_id: str) -> str:
        """One line on where a waiting request stands, for loading feedback."""
        runtime = self._runtime(model_id)
        if runtime.state is ModelState.STARTING:
            return f"starting {model_id}…"
        draining = [m for m, r in self.models.items() if r.draining and r.container]
        if draining:
            return f"waiting for {', '.join(sorted(draining))} to finish before swapping to {model_id}…"
        if runtime.state is ModelState.READY:
            return f"{model_id} is ready"
        return f"queued for {model_id}…"

    async def apply_config(self, config: Config) -> None:
        """Switch to a reloaded config: stop removed models, restart changed ones when idle.

        Models whose container spec is unchanged keep running untouched. A changed model's
        container is drained (new requests wait) and stopped; its next request starts the
        new spec.
        """
        old = self.config
        if config.docker != old.docker:
            logger.warning("config reload: the docker: block changed; restart the proxy to apply it")
        changed = [
            m for m in old.models
            if m in config.models and ContainerSpec.from_model(m, old.models[m]).spec_hash
            != ContainerSpec.from_model(m, config.models[m]).spec_hash
        ]
        removed = [m for m in old.models if m not in config.models]
        added = [m for m in config.models if m not in old.models]
        logger.bind(changed=",".join(changed) or "-", removed=",".join(removed) or "-",
                    added=",".join(added) or "-").info("config reloaded")
        for model_id in added:
            self.models[model_id] = ModelRuntime(model_id)
        self.config = config
        if removed:
            for waiter in [w for w in self._waiters if w.model_id in removed]:
                if not waiter.future.done():
                    waiter.future.set_exception(ModelNotFound(
                        f"model {waiter.model_id!r} was removed from the config"))
            try:
                await self._unload_now(removed, "removed from config")
            finally:
                for model_id in removed:
                    if self.models.get(model_id) and self.models[model_id].container is None:
                        self.models.pop(model_id, None)
        if changed:
            await self._unload_now(changed, "config changed")

    async def _unload_now(self, model_ids: list[str], reason: str,
                          cut: Callable[[list[str]], object] | None = None) -> None:
        """Queue an unload behind the current operation and wait until it is done."""
        operation = _Unload(tuple(model_ids), reason, asyncio.get_running_loop().create_future(),
                            cut=cut)
        self._unloads.append(operation)
        self._wake.set()
        assert operation.future is not None
        await operation.future

    def _from_thread(self, coroutine: Any) -> None:
        """Schedule a coroutine on the manager's loop from a worker thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coroutine.close()
            return
        loop.call_soon_threadsafe(self._spawn, coroutine)

    async def _on_event(self, event: ContainerEvent) -> None:
        if event.action != "die":
            return
        for runtime in self.models.values():
            ref = runtime.container
            if ref is not None and ref.id == event.container_id and runtime.state is ModelState.READY:
                state = await asyncio.to_thread(self.containers.state, ref.id)
                reason = await self._death_reason(ref, state)
                await self.container_died(ref.id, reason)

    async def _resync(self) -> None:
        """After an event-stream gap: any container we think is up but is not, died."""
        for runtime in list(self.models.values()):
            ref = runtime.container
            if ref is None or runtime.state is not ModelState.READY:
                continue
            state = await asyncio.to_thread(self.containers.state, ref.id)
            if state is None or not state.running:
                await self.container_died(ref.id, await self._death_reason(ref, state))

    # -- the pump ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._admit()
            if self._tasks.busy is None:
                operation = self._next_operation()
                if operation is not None:
                    self._tasks.busy = asyncio.create_task(self._run(operation))

    def _admit(self) -> None:
        for waiter in list(self._waiters):
            runtime = self.models[waiter.model_id]
            if waiter.future.done():
                self._waiters.remove(waiter)
            elif self._admissible(runtime):
                assert runtime.container is not None
                runtime.in_flight += 1
                waiter.future.set_result(runtime.container)
                self._waiters.remove(waiter)

    def _next_operation(self) -> _Unload | _BringUp | None:
        if self._unloads:
            return self._unloads.popleft()
        for waiter in self._waiters:
            if not waiter.future.done():
                return _BringUp(waiter.model_id)
        return None

    async def _run(self, operation: _Unload | _BringUp) -> None:
        # Operations run one at a time: none is draining a model when the next begins.
        for runtime in self.models.values():
            runtime.draining = False
        try:
            if isinstance(operation, _BringUp):
                await self._bring_up(operation.model_id)
            else:
                await self._unload(operation)
        except Exception as exc:  # noqa: BLE001 - the pump must survive any one operation
            logger.opt(exception=exc).error("operation failed: {}", exc)
            if isinstance(operation, _Unload):
                if operation.future and not operation.future.done():
                    operation.future.set_exception(exc)
            else:
                # Whatever went wrong (an evicted model that would not stop, an engine timeout),
                # the requests waiting for this model get an answer instead of a retry loop.
                model_id = operation.model_id
                message = exc.message if isinstance(exc, LlamaswapError) else f"{type(exc).__name__}: {exc}"
                error = ModelStartFailed(f"model {model_id!r} could not be brought up: {message}")
                runtime = self.models.get(model_id)
                if runtime is not None and runtime.state is not ModelState.READY:
                    runtime.state, runtime.failure = ModelState.FAILED, error.message
                self._fail_waiters(model_id, error)
            for runtime in self.models.values():
                if runtime.state is ModelState.READY:
                    runtime.draining = False
        finally:
            self._tasks.busy = None
            self._wake.set()

    async def _bring_up(self, target: str) -> None:
        runtime = self.models[target]
        if runtime.state is ModelState.READY:
            return
        # A model a reload is removing is being stopped by that reload: not ours to evict.
        loaded = [m for m, r in self.models.items()
                  if r.container is not None and m in self.config.models]
        evict = models_to_evict(target, loaded, self.config)
        if evict:
            for model_id in evict:
                self.models[model_id].draining = True
            log = logger.bind(model=target, evict=",".join(sorted(evict)))
            if any(self.models[m].in_flight for m in evict):
                log.info("swap: waiting for in-flight requests of evicted models")
            drained = await self._drain(evict, abandon_if_unwanted=target)
            if not drained:
                log.info("swap abandoned: no request waits for the model any more")
                for model_id in evict:
                    self.models[model_id].draining = False
                return
            await asyncio.gather(*(self._stop(m, f"swapping to {target}") for m in evict))
        if self._waiting(target) == 0:
            return
        await self._start(target)

    async def _unload(self, operation: _Unload) -> None:
        targets = [m for m in operation.model_ids if self.models[m].container is not None]
        if operation.idle_for is not None:
            now = time.monotonic()
            targets = [
                m for m in targets
                if not self.models[m].in_flight and not self._waiting(m)
                and now - self.models[m].last_used >= operation.idle_for
            ]
        for model_id in targets:
            self.models[model_id].draining = True
        if operation.cut is not None and targets:  # forced: no waiting for in-flight requests
            operation.cut(targets)
        await self._drain(targets)
        await asyncio.gather(*(self._stop(m, operation.reason) for m in targets))
        if operation.future and not operation.future.done():
            operation.future.set_result(None)

    async def _drain(self, model_ids: Iterable[str], abandon_if_unwanted: str | None = None) -> bool:
        """Wait until the models have no request in flight; False if the wait was abandoned."""
        model_ids = list(model_ids)
        while any(self.models[m].in_flight for m in model_ids):
            if abandon_if_unwanted and self._abandonable(abandon_if_unwanted):
                return False
            self._released.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=0.5)
        return True

    def _abandonable(self, target: str) -> bool:
        """A load nobody waits for any more, while another model is waited for."""
        return self._waiting(target) == 0 and any(
            w.model_id != target and not w.future.done() for w in self._waiters
        )

    # -- starting and stopping -----------------------------------------------------------------

    async def _start(self, model_id: str) -> None:
        runtime = self.models[model_id]
        model = self.config.models[model_id]
        # A new API key for each start: only the proxy can use the model's server.
        spec = ContainerSpec.from_model(model_id, model).with_new_key()
        log = logger.bind(model=model_id, image=spec.image)
        runtime.state, runtime.failure = ModelState.STARTING, None
        started = time.monotonic()
        log.info("model starting")
        try:
            await self.containers.engine.run(
                f"preparing image for {model_id}",
                ensure_image, self.containers.engine, spec.image, self.config.docker.pull_policy,
            )
            creating = asyncio.ensure_future(asyncio.to_thread(self.containers.create, spec))
            try:
                runtime.container = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # The engine creates it anyway: keep hold of it so the cleanup below removes it.
                with contextlib.suppress(Exception):
                    runtime.container = await creating
                raise
            runtime.container = await asyncio.to_thread(
                self.containers.start, runtime.container.id, spec.port
            )
            container = runtime.container
            log = log.bind(container=container.name)
            health_url = f"{container.base_url}{model.health_path}" if model.health_path else None
            outcome, state = await wait_until_healthy(
                self.http,
                health_url,
                self.config.health_check_timeout,
                lambda: asyncio.to_thread(self.containers.state, container.id),
                abandon=lambda: self._abandonable(model_id),
                headers=_key_header(container),
            )
            if outcome is None:
                runtime.state, runtime.ready_since = ModelState.READY, time.monotonic()
                runtime.draining = False
                runtime.last_used = runtime.ready_since
                log.bind(seconds=f"{runtime.ready_since - started:.2f}").info("model ready")
                return
            if outcome == HealthOutcome.ABANDONED:
                log.info("start abandoned: no request waits for the model any more")
                await self._stop(model_id, "start abandoned")
                return
            if outcome == HealthOutcome.EXITED:
                reason = await self._death_reason(container, state)
            else:
                tail = await asyncio.to_thread(self.containers.logs_tail, container.id, LOG_TAIL_LINES)
                reason = (
                    f"container {container.name} did not pass its health check "
                    f"({health_url}) within healthCheckTimeout={self.config.health_check_timeout}s"
                    + (f"; last log lines:\n{tail}" if tail else "")
                )
            raise ModelStartFailed(f"model {model_id!r} failed to start: {reason}")
        except Exception as exc:  # noqa: BLE001 - any failure must answer the waiters
            if isinstance(exc, ModelStartFailed):
                error: LlamaswapError = exc
            elif isinstance(exc, LlamaswapError):
                error = type(exc)(f"model {model_id!r} failed to start: {exc.message}")
            else:
                logger.opt(exception=exc).error("unexpected error starting {}", model_id)
                error = ModelStartFailed(f"model {model_id!r} failed to start: {type(exc).__name__}: {exc}")
            log.bind(error=error.message.splitlines()[0]).error("model start failed")
            # Remove the failed container first, so a client that gets the error finds it gone;
            # the waiters are answered whatever the removal does.
            try:
                if runtime.container is not None:
                    ref = runtime.container
                    await self._stop_ref(ref, "start failed")
                    runtime.container = None
            except Exception as stop_error:  # noqa: BLE001 - already failing; keep the first error
                logger.bind(model=model_id).error("could not remove the failed container: {}",
                                                  stop_error)
            finally:
                runtime.state, runtime.failure = ModelState.FAILED, error.message
                self._fail_waiters(model_id, error)
        except asyncio.CancelledError:
            if runtime.container is not None:
                ref, runtime.container = runtime.container, None
                await asyncio.shield(self._stop_ref(ref, "start cancelled"))
            runtime.state = ModelState.STOPPED
            raise

    async def _stop(self, model_id: str, reason: str) -> None:
        runtime = self.models[model_id]
        if runtime.container is None:
            runtime.state, runtime.draining = ModelState.STOPPED, False
            return
        runtime.state = ModelState.STOPPING
        try:
            await self._stop_ref(runtime.container, reason)
        except Exception as exc:
            # The container is still recorded: a later swap or unload tries again.
            message = exc.message if isinstance(exc, LlamaswapError) else f"{type(exc).__name__}: {exc}"
            runtime.state, runtime.failure = ModelState.FAILED, f"stop failed: {message}"
            raise
        finally:
            runtime.draining = False
        runtime.state, runtime.container = ModelState.STOPPED, None
        runtime.ready_since = None

    async def _stop_ref(self, ref: ContainerRef, reason: str) -> None:
        # A model removed by a config reload no longer has its own stopTimeout.
        timeout = self.config.stop_timeout(ref.model_id) if ref.model_id in self.config.models else (
            self.config.docker.stop_timeout
        )
        started = time.monotonic()
        output = await asyncio.to_thread(self.containers.stop, ref.id, timeout, LAST_OUTPUT_LINES)
        # Kept for `llamaswap-docker logs MODEL` after the container is gone (a swap, a crash).
        self.last_output[ref.model_id] = LastOutput(ref.name, reason, time.time(), output)
        logger.bind(model=ref.model_id, container=ref.name, reason=reason,
                    seconds=f"{time.monotonic() - started:.2f}").info("container stopped and removed")

    async def _death_reason(self, ref: ContainerRef, state: ContainerState | None) -> str:
        tail = await asyncio.to_thread(self.containers.logs_tail, ref.id, LOG_TAIL_LINES)
        what = state.describe() if state is not None else "was removed"
        return f"container {ref.name} {what}" + (f"; last log lines:\n{tail}" if tail else "")

    # -- adoption ------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Adopt our running, healthy, up-to-date containers; stop and remove the rest."""
        owned = await asyncio.to_thread(self.containers.list_owned)
        for ref in owned:
            log = logger.bind(container=ref.name, model=ref.model_id)
            reason = await self._adoption_refusal(ref)
            if reason is None:
                runtime = self.models[ref.model_id]
                runtime.state, runtime.container = ModelState.READY, ref
                runtime.ready_since = runtime.last_used = time.monotonic()
                log.info("adopted running container")
            else:
                log.bind(reason=reason).info("reaping container")
                await self._stop_ref(ref, reason)

    async def _adoption_refusal(self, ref: ContainerRef) -> str | None:
        """Why ``ref`` cannot be adopted, or None when it can."""
        if ref.model_id not in self.models:
            return "model no longer configured"
        if self.models[ref.model_id].container is not None:
            return "duplicate container for the model"
        model = self.config.models[ref.model_id]
        if ref.spec_hash != ContainerSpec.from_model(ref.model_id, model).spec_hash:
            return "config changed (spec hash differs)"
        if ref.status != "running" or ref.base_url is None:
            return f"container is {ref.status}"
        if model.health_path:
            try:
                response = await self.http.get(f"{ref.base_url}{model.health_path}", timeout=5,
                                               headers=_key_header(ref))
            except httpx.HTTPError as exc:
                return f"health check failed: {exc!r}"
            if response.status_code != 200:
                return f"health check answered {response.status_code}"
        return None

    # -- helpers -------------------------------------------------------------------------------

    def _runtime(self, model_id: str) -> ModelRuntime:
        try:
            return self.models[model_id]
        except KeyError:
            raise ModelNotFound(f"model {model_id!r} is not configured") from None

    @staticmethod
    def _admissible(runtime: ModelRuntime) -> bool:
        return (
            runtime.state is ModelState.READY
            and not runtime.draining
            and runtime.container is not None
            and runtime.container.base_url is not None
        )

    def _waiting(self, model_id: str) -> int:
        return sum(1 for w in self._waiters if w.model_id == model_id and not w.future.done())

    def _fail_waiters(self, model_id: str, error: LlamaswapError) -> None:
        for waiter in list(self._waiters):
            if waiter.model_id == model_id:
                if not waiter.future.done():
                    waiter.future.set_exception(error)
                self._waiters.remove(waiter)

    def _release(self, runtime: ModelRuntime) -> None:
        runtime.in_flight -= 1
        runtime.last_used = time.monotonic()
        self._released.set()  # a drain waits for this
        if self._waiters:  # only a queued request can be admitted now (no pump wake-up else)
            self._wake.set()

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("background task failed: {}",
                                                         task.exception())

    async def _preload(self, model_id: str) -> None:
        try:
            await self.load(model_id)
        except LlamaswapError as exc:
            logger.bind(model=model_id).error("preload failed: {}", exc.message)

    async def _ttl_loop(self) -> None:
        while True:
            await asyncio.sleep(TTL_CHECK_INTERVAL_S)
            try:
                self._expire_idle_models()
            except Exception as exc:  # noqa: BLE001 - TTLs must keep working after any one error
                logger.opt(exception=exc).error("ttl check failed: {}", exc)

    def _expire_idle_models(self) -> None:
        now = time.monotonic()
        queued = {m for op in self._unloads for m in op.model_ids}
        for model_id, runtime in self.models.items():
            if model_id not in self.config.models:
                continue  # being removed by a config reload
            ttl = self.config.effective_ttl(model_id)
            if (
                ttl > 0
                and runtime.state is ModelState.READY
                and not runtime.in_flight
                and not runtime.draining
                and not self._waiting(model_id)
                and model_id not in queued
                and now - runtime.last_used >= ttl
            ):
                logger.bind(model=model_id, ttl=ttl).info("ttl expired, unloading")
                self._unloads.append(_Unload((model_id,), f"idle for {ttl}s (ttl)", idle_for=ttl))
                self._wake.set()
