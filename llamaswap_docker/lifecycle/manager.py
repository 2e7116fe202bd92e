"""``ModelManager``, the orchestrator: feeds the scheduler and carries out its decisions.

Requests ``acquire`` a model and hold a ``Lease`` while they are served. Every event — a
request arriving or leaving, a lease released, a container ready, failed, stopped or dead, a
TTL tick, an unload, a reload — goes to the pure ``Scheduler``; its decisions are executed
here: futures answered at once, starts and stops run as tasks through the ``ContainerDriver``,
whose outcomes come back as events. Operations that do not conflict run side by side.

The manager is the ``Orchestrator`` the effects report to (``lifecycle/effects.py``), and
keeps the GPU inventory (``lifecycle/inventory.py``) and each model's memory need
(``lifecycle/need.py``) that placement plans with; each placement is logged and sent as a
``placement`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx
from loguru import logger

from llamaswap_docker.config import Config
from llamaswap_docker.errors import (
    ConcurrencyLimitExceeded,
    LlamaswapError,
    ModelNotFound,
    ModelStopped,
)
from llamaswap_docker.lifecycle.deaths import DeathWatch
from llamaswap_docker.lifecycle.driver import ContainerDriver, LastOutput
from llamaswap_docker.lifecycle.effects import Effects, EngineEffects
from llamaswap_docker.lifecycle.engines import EngineSet, EngineSlot, on_engines
from llamaswap_docker.lifecycle.inventory import Inventories, Inventory
from llamaswap_docker.lifecycle.model import Lease, ModelRuntime, ModelState, ModelStatus
from llamaswap_docker.lifecycle.need import MeasuredNeeds, needs_of, with_bytes
from llamaswap_docker.lifecycle.outcomes import Outcome, Stopped
from llamaswap_docker.lifecycle.placement import Placement, format_bytes
from llamaswap_docker.lifecycle.scheduler import (
    Admit, Cut, Decision, Fail, Finished, Note, Placed, Remove, Scheduler, Sleep, Start, Stop,
    Wake,
)
from llamaswap_docker.observe import EventBus, Metrics
from llamaswap_docker.runtime import ContainerRef, Containers, ContainerSpec

__all__ = ["LastOutput", "Lease", "ModelManager"]

#: How often idle models are checked against their TTL.
TTL_CHECK_INTERVAL_S = 0.5


class ModelManager:
    """Starts, swaps and stops the configured models' containers."""

    def __init__(self, config: Config, containers: Containers | None, http: httpx.AsyncClient,
                 events: EventBus | None = None, engines: EngineSet | None = None) -> None:
        self.config = config
        #: Live events (``GET /api/events``): model states, swaps, pulls.
        self.events = events or EventBus()
        #: Set by the app once it exists: load times and failures for ``/metrics``.
        self.metrics: Metrics | None = None
        #: Each model's last removed container's output (``logs MODEL`` after a swap).
        self.last_output: dict[str, LastOutput] = {}
        #: Called with the base URL of each container that stopped or died: the app drops the
        #: data plane's connection pool for it (each start publishes another port).
        self.on_container_gone: Callable[[str], object] | None = None
        #: Called with the models of an engine that went away and why: the app cuts their
        #: requests in flight (streams get an error event).
        self.on_engine_lost: Callable[[list[str], str], object] | None = None
        self._published: tuple[tuple[str, str, str | None], ...] = ()
        self.containers = containers
        #: Several engines (``engines:``); None: ``containers`` is the one engine's.
        self.engines = engines
        self.driver = ContainerDriver(containers, http, engines)
        self.scheduler = Scheduler(config.models, config)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        #: Forced unloads' cut callbacks, by operation id.
        self._cuts: dict[int, Callable[[list[str]], object]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.deaths = DeathWatch(self.driver, lambda: self.models, self._died)
        self.effects: Effects = EngineEffects(self, self.driver)
        #: The engine's GPUs, and what loads measured of each spec's need.
        self.inventory: Inventory | Inventories = (
            Inventory(containers.engine if containers is not None else None) if engines is None
            else Inventories({slot.name: slot.engine for slot in engines.slots.values()}))
        self.measured = MeasuredNeeds(config.store.path)
        #: Starts, stops, sleeps and wakes in progress (a measurement needs a start alone).
        self._gpu_work = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = False
        self.should_exit = False

    @property
    def models(self) -> dict[str, ModelRuntime]:
        return self.scheduler.models

    # -- the orchestrator the effects report to ------------------------------------------------

    def report(self, outcome: Outcome) -> None:
        # Read before the scheduler forgets it: the container that stopped.
        gone = self.container_of(outcome.model_id) if isinstance(outcome, Stopped) else None
        self._apply(self.scheduler.handle(outcome))
        if gone is not None and gone.base_url and self.on_container_gone is not None:
            self.on_container_gone(gone.base_url)

    def container_of(self, model_id: str) -> ContainerRef | None:
        runtime = self.models.get(model_id)
        return runtime.container if runtime is not None else None

    def abandonable(self, model_id: str) -> bool:
        return self.scheduler.abandonable(model_id)

    # -- lifecycle of the manager --------------------------------------------------------------

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
        """Prepare the network, adopt or reap our leftover containers, start the TTL clock."""
        self._loop = asyncio.get_running_loop()
        if self.engines is None:
            assert self.containers is not None
            await self.driver.call("preparing the network", self.containers.ensure_network)
            self.deaths.start(self.containers, self._from_thread)
            await self._adopt("")
        else:
            for slot in self.engines.up():  # a down one is taken in when it answers
                assert slot.containers is not None
                self.deaths.start(slot.containers, self._from_thread)
                await self._adopt(slot.name)
        await self.inventory.discover(self.config, self.scheduler.placed)
        await self._plan_with_inventory(self.config)
        for model_id, model in self.config.models.items():
            spec = ContainerSpec.from_model(model_id, model)
            for containers in self.driver.all_up()[:1]:
                for warning in await asyncio.to_thread(containers.host_path_warnings, spec):
                    logger.bind(model=model_id).warning(warning)
        self._spawn(self._ttl_loop())
        if self.engines is not None:
            self.engines.watch(self._engine_lost, self._engine_back)
        self.started = True
        for name in self.config.hooks.on_startup.preload:
            self.load_in_background(self.resolve(name))

    def reject_waiters(self, reason: str = "the proxy is shutting down") -> None:
        """Fail every queued request now (on SIGTERM), so shutdown does not wait on them."""
        self.should_exit = True
        self._apply(self.scheduler.reject_all(reason))

    async def shutdown(self, keep_containers: bool = False) -> None:
        """Stop the tasks, fail queued requests, and stop and remove every owned container."""
        self.should_exit = True
        if self.engines is not None:
            await self.engines.stop()
        await self.deaths.stop()
        while self._tasks:  # tasks may spawn tasks as they end: until none is left
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task
        self.reject_waiters()
        for future in self._futures.values():  # unloads still queued: their callers get an answer
            if not future.done():
                future.set_exception(ModelStopped("the proxy is shutting down"))
        self._futures.clear()
        if keep_containers:
            logger.info("shutdown: keeping model containers for the next start to adopt")
            return
        owned = []
        for containers in self.driver.all_up():
            owned += await self.driver.call("listing containers", containers.list_owned)
        await asyncio.gather(*(self.effects.stop_ref(ref, "proxy shutdown") for ref in owned))
        for runtime in self.models.values():
            runtime.state, runtime.container, runtime.draining = ModelState.STOPPED, None, False

    # -- requests ------------------------------------------------------------------------------

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
        if limit and runtime.in_flight + self.scheduler.waiting(model_id) >= limit:
            raise ConcurrencyLimitExceeded(
                f"model {model_id!r} already has {limit} requests in flight (concurrencyLimit)",
                retry_after=1,
            )
        container = self.scheduler.admit_now(model_id)
        return Lease(self._release, model_id, container) if container is not None else None

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
        if self.should_exit:
            raise ModelStopped("the proxy is shutting down")
        future: asyncio.Future[ContainerRef] = asyncio.get_running_loop().create_future()
        waiter, decisions = self.scheduler.enqueue(model_id)
        self._futures[waiter] = future
        self._apply(decisions)
        try:
            container = await future
        except asyncio.CancelledError:
            # The client left: drop its place in the queue, or give back an admission that
            # raced with the cancellation.
            if self._futures.pop(waiter, None) is not None:
                self._apply(self.scheduler.leave(waiter))
            elif future.done() and not future.cancelled() and future.exception() is None:
                self._release(model_id)
            raise
        return Lease(self._release, model_id, container)

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

    async def _unload_now(self, model_ids: list[str], reason: str,
                          cut: Callable[[list[str]], object] | None = None) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op, decisions = self.scheduler.unload(model_ids, reason, force=cut is not None)
        self._futures[op] = future
        if cut is not None:
            self._cuts[op] = cut
        self._apply(decisions)
        await future

    def _release(self, model_id: str) -> None:
        self._apply(self.scheduler.release(model_id, time.monotonic()))

    # -- deaths --------------------------------------------------------------------------------

    async def report_upstream_failure(self, lease: Lease) -> str | None:
        """Check the container after a failed upstream call: how it died, or None (it runs)."""
        return await self.deaths.upstream_failed(lease.container)

    def _died(self, container_id: str, reason: str) -> None:
        self._apply(self.scheduler.died(container_id, reason))

    # -- engines -------------------------------------------------------------------------------

    def containers_for(self, container: ContainerRef) -> Containers:
        """The containers of the engine ``container`` runs on (logs, stats).

        Raises:
            EngineUnreachable: that engine is down.
        """
        return self.driver.on(container.engine)

    async def _adopt(self, engine: str) -> None:
        """Adopt (or reap) the instance's containers on ``engine``: at start-up, and when an
        engine that went away answers again (a model that runs elsewhere meanwhile, or is
        being started, keeps that; its old container is reaped)."""
        def taken(model_id: str) -> bool:
            runtime = self.models.get(model_id)
            return runtime is not None and (
                runtime.container is not None or self.scheduler.busy(model_id)
                or runtime.state not in (ModelState.STOPPED, ModelState.FAILED))

        for ref, asleep in await self.driver.adoptable(self.config, engine, taken):
            if taken(ref.model_id):  # started meanwhile (adoption asks the model's health)
                await self.effects.stop_ref(ref, "the model runs elsewhere now")
                continue
            # Wherever it was placed (its labels): placement is not in the spec hash.
            devices = tuple(f"{engine}:{d}" if engine else d for d in ref.devices or ())
            placement = Placement(devices, ref.vram, engine) if devices else None
            self.scheduler.adopt(ref.model_id, ref, time.monotonic(), asleep=asleep,
                                 placement=placement)
            self.models[ref.model_id].failure = None

    def _engine_lost(self, slot: EngineSlot) -> None:
        """An engine stopped answering: its models fail now, their requests are cut."""
        reason = slot.down_error().message
        lost = [runtime for runtime in self.models.values() if runtime.container is not None
                and runtime.container.engine == slot.name
                and runtime.state in (ModelState.READY, ModelState.ASLEEP)]
        self._spawn(self.deaths.forget(slot.name))
        if isinstance(self.inventory, Inventories):
            self.inventory.reconnected(slot.name, None)
        for runtime in lost:
            assert runtime.container is not None
            self.deaths.died(runtime.container.id, reason)
        models = [runtime.model_id for runtime in lost]
        logger.bind(engine=slot.label, models=",".join(models) or "-").warning(
            "engine gone: its models failed")
        if models and self.on_engine_lost is not None:
            self.on_engine_lost(models, reason)
        self._spawn(self._plan_with_inventory(self.config))

    async def _engine_back(self, slot: EngineSlot) -> None:
        """An engine answers again: follow its events, adopt or reap its containers."""
        assert slot.containers is not None
        self.deaths.start(slot.containers, self._from_thread)
        await self._adopt(slot.name)
        if isinstance(self.inventory, Inventories):
            self.inventory.reconnected(slot.name, slot.engine)
            await self.inventory.discover_one(slot.name, self.config, self.scheduler.placed)
        await self._plan_with_inventory(self.config)
        adopted = [m for m, r in self.models.items()
                   if r.container is not None and r.container.engine == slot.name]
        logger.bind(engine=slot.label, adopted=",".join(adopted) or "-").info(
            "engine back: its containers adopted")
        self.publish_status()

    # -- status --------------------------------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        """A snapshot of every configured model, sorted by id."""
        now = time.monotonic()
        return [
            ModelStatus.of(self.models[m], self.config.models[m].image,
                           self.config.effective_ttl(m), self.scheduler.waiting(m), now)
            for m in sorted(self.models) if m in self.config.models  # not: being removed
        ]

    def describe_progress(self, model_id: str) -> str:
        """One line on where a waiting request stands, for loading feedback."""
        self._runtime(model_id)
        return self.scheduler.progress(model_id)

    async def apply_config(self, config: Config) -> None:
        """Switch to a reloaded config: stop removed models, restart changed ones when idle.

        Models whose container spec is unchanged keep running untouched. A changed model's
        container is drained (new requests wait) and stopped; its next request starts the
        new spec.
        """
        old = self.config
        if config.docker != old.docker:
            logger.warning("config reload: the docker: block changed; restart the proxy to apply it")
        if config.engines != old.engines:
            logger.warning("config reload: engines: changed; restart the proxy to apply it")
        changed, removed, added = self.driver.changes(old, config)
        logger.bind(changed=",".join(changed) or "-", removed=",".join(removed) or "-",
                    added=",".join(added) or "-").info("config reloaded")
        for model_id in added:
            self.scheduler.add_model(model_id)
        self.config = self.scheduler.rules = config
        await self._plan_with_inventory(config)
        if removed:
            self._apply(self.scheduler.remove_models(removed))
            try:
                await self._unload_now(removed, "removed from config")
            finally:
                for model_id in removed:
                    self.scheduler.forget(model_id)
        if changed:
            await self._unload_now(changed, "config changed")

    # -- executing decisions -------------------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Admit):
                future = self._futures.pop(decision.waiter, None)
                if future is None or future.done():  # its client left as it was admitted
                    self._release(decision.model_id)
                else:
                    future.set_result(decision.container)
            elif isinstance(decision, Fail):
                self._answer(decision.waiter, decision.error)
            elif isinstance(decision, Finished):
                self._cuts.pop(decision.operation, None)
                self._answer(decision.operation,
                             LlamaswapError(decision.error) if decision.error else None)
            elif isinstance(decision, Start):
                self._spawn(self._start(decision))
            elif isinstance(decision, Stop):
                self._spawn(self._on_gpus(self.effects.stop, decision))
            elif isinstance(decision, Sleep):
                self._spawn(self._on_gpus(self.effects.sleep, decision))
            elif isinstance(decision, Wake):
                self._spawn(self._on_gpus(self.effects.wake, decision))
            elif isinstance(decision, Placed):
                self._placed(decision)
            elif isinstance(decision, Remove):
                logger.bind(model=decision.container.model_id, container=decision.container.name
                            ).warning("container died: {}", decision.reason)
                if decision.container.base_url and self.on_container_gone is not None:
                    self.on_container_gone(decision.container.base_url)
                self._spawn(self.effects.stop_ref(decision.container, "container died"))
            elif isinstance(decision, Cut):
                cut = self._cuts.get(decision.operation)
                if cut is not None:
                    cut(list(decision.model_ids))
            elif isinstance(decision, Note):
                logger.bind(**dict(decision.fields)).info(decision.message)
        if self.events.subscribers:
            self.publish_status()

    def status_event(self) -> dict[str, Any]:
        """The data of a ``modelStatus`` event: every configured model's status."""
        return {"models": [{**s.to_json(self.config.models[s.model_id]),
                            **self.placement_of(s.model_id)} for s in self.status()]}

    # -- placement -------------------------------------------------------------------------------

    def placement_of(self, model_id: str) -> dict[str, Any]:
        """``/running``'s placement fields: the need, where it came from, the GPUs."""
        need = self.scheduler.needs.get(model_id)
        placement = self.scheduler.placements().get(model_id)
        runtime = self.models.get(model_id)
        container = runtime.container if runtime is not None else None
        model = self.config.models.get(model_id)
        # The engine it runs on; before it runs, the one it is pinned to (None: not chosen yet).
        engine = (container.engine if container is not None
                  else model.engine if model is not None else None)
        return {
            "engine": "default" if self.engines is None else engine,
            "need_bytes": need.bytes if need is not None else None,
            "need_source": need.source if need is not None else "none",
            "gpus": list(placement.devices) if placement is not None else [],
        }

    def hardware(self) -> dict[str, Any]:
        """``GET /api/hardware``: the GPU inventory and what is placed on each GPU."""
        states = {m: r.state.value for m, r in self.models.items()}
        data = self.inventory.to_json(self.config.router, self.scheduler.placements(), states)
        if self.engines is not None:
            data["engines"] = self.engines.to_json()
        return data

    async def _plan_with_inventory(self, config: Config) -> None:
        """Give the scheduler the GPUs and every model's need (estimates read files: a thread)."""
        devices = self.inventory.devices()
        needs = await asyncio.to_thread(needs_of, config, devices, self.measured)
        if config.engines:
            needs = on_engines(config, needs)
        self._apply(self.scheduler.set_inventory(devices, needs))
        if config.router == "fit" and not devices and any(n.uses_gpu for n in needs.values()):
            logger.bind(reason=self.inventory.report.reason or "-").warning(
                "routing.router.use is fit but no GPU was found: models that need one will "
                "fail; declare docker.gpus")

    def _placed(self, decision: Placed) -> None:
        """One line and one ``placement`` event per decision."""
        placement = decision.placement
        free = {gpu: format_bytes(value) for gpu, value in decision.free_before}
        fields = {"model": decision.model_id, "policy": decision.policy,
                  "gpus": placement.label if placement is not None else "-",
                  "need": decision.need.describe(),
                  "free_before": ",".join(f"{g}:{v}" for g, v in free.items()) or "-",
                  "evicted": ",".join(decision.evicted) or "-", "why": decision.why}
        if decision.fits:
            logger.bind(**fields).info("placement")
        else:
            logger.bind(**fields).warning("placement: does not fit")
        self.events.publish("placement", {
            "model": decision.model_id, "policy": decision.policy,
            "gpus": list(placement.devices) if placement is not None else [],
            "need_bytes": decision.need.bytes, "need_source": decision.need.source,
            "free_before": dict(decision.free_before), "evicted": list(decision.evicted),
            "why": decision.why, "fits": decision.fits})

    async def _on_gpus(self, effect: Callable[[Any], Any], decision: Decision) -> None:
        """Carry out a start, stop, sleep or wake; then look at the GPUs again (found ones)."""
        self._gpu_work += 1
        try:
            await effect(decision)
        finally:
            self._gpu_work -= 1
        if self.inventory.live and not self.should_exit:
            await self.inventory.look(self.config, lambda: self.scheduler.placed)
            self.scheduler.devices = self.inventory.devices()

    async def _start(self, decision: Start) -> None:
        """Start a model; alone on its GPUs with a quick inventory, measure what it used."""
        placement = decision.placement
        before = None
        if placement is not None and self.inventory.quick and self._gpu_work == 0:
            await self.inventory.look(self.config, lambda: self.scheduler.placed)
            before = self.inventory.used(placement.devices)
        started_alone = self._gpu_work == 0  # (the look above may have let others begin)
        await self._on_gpus(self.effects.start, decision)
        runtime = self.models.get(decision.model_id)
        if (before is None or placement is None or not started_alone or runtime is None
                or runtime.state is not ModelState.READY or self._gpu_work):
            return
        after = self.inventory.used(placement.devices)
        if after is None or after <= before:
            return
        model = self.config.models.get(decision.model_id)
        if model is None or model.vram is not None:
            return
        spec_hash = ContainerSpec.from_model(decision.model_id, model).spec_hash
        await asyncio.to_thread(self.measured.remember, spec_hash, decision.model_id,
                                after - before)
        need = self.scheduler.needs.get(decision.model_id)
        if need is not None:
            self.scheduler.needs[decision.model_id] = with_bytes(need, after - before, "measured")
        logger.bind(model=decision.model_id, gpus=placement.label,
                    measured=format_bytes(after - before)).info("GPU memory need measured")

    def publish_status(self) -> None:
        """A ``modelStatus`` event, when a model's state or container changed since the last."""
        # Read from the runtimes first: this runs after every step (lease releases included)
        # while anyone listens, and most steps change nothing worth a full status.
        key = tuple((m, runtime.state.value, runtime.container.id if runtime.container else None)
                    for m, runtime in sorted(self.models.items()) if m in self.config.models)
        if key != self._published:
            self._published = key
            self.events.publish("modelStatus", self.status_event())

    def _answer(self, key: int, error: LlamaswapError | None) -> None:
        future = self._futures.pop(key, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    # -- helpers -------------------------------------------------------------------------------

    def _runtime(self, model_id: str) -> ModelRuntime:
        try:
            return self.models[model_id]
        except KeyError:
            raise ModelNotFound(f"model {model_id!r} is not configured") from None

    def _from_thread(self, coroutine: Any) -> None:
        """Schedule a coroutine on the manager's loop from a worker thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coroutine.close()
            return
        loop.call_soon_threadsafe(self._spawn, coroutine)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
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
                self._apply(self.scheduler.tick(time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - TTLs must keep working after any one error
                logger.opt(exception=exc).error("ttl check failed: {}", exc)

