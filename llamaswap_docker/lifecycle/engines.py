"""Several Docker engines behind one proxy (``engines:``): connections, health, choice.

Each engine is a slot: its connection, its ``Containers`` (network, routing, the address its
published ports are reached at) and the instance's owner record on it. A config without
``engines:`` has one slot named "" built from the proxy's one engine, and nothing here
watches it (behaviour as before).

With ``engines:``, every engine is pinged every ``CHECK_INTERVAL_S`` with a short deadline.
One that stops answering is marked down and the orchestrator is told (its models fail at
once); one that is down is connected to again on the same clock, and when it answers its
owner record is claimed again and the orchestrator is told (its containers are adopted or
reaped, as at a restart). An engine that is down when the proxy starts is simply one that
has not come back yet: the others serve meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from loguru import logger

from llamaswap_docker.config import Config, EngineConfig
from llamaswap_docker.errors import EngineUnreachable, LlamaswapError
from llamaswap_docker.lifecycle.placement import Need
from llamaswap_docker.runtime import Containers, Engine, resolve_routing
from llamaswap_docker.runtime.owner import InstanceOwned, Owner, claim_instance, release_instance

__all__ = ["CHECK_INTERVAL_S", "EngineSet", "EngineSlot", "on_engines"]

#: Seconds between two looks at each engine (a ping when up, a connection attempt when down).
CHECK_INTERVAL_S = 1.0
#: Seconds a ping may take before the engine counts as gone.
PING_TIMEOUT_S = 2.0
#: Seconds a connection attempt may take (an ssh:// engine opens an ssh session).
CONNECT_TIMEOUT_S = 15.0


def on_engines(config: Config, needs: dict[str, Need]) -> dict[str, Need]:
    """Models' needs with their ``engine:`` pins, and GPUs the config names (``gpus: [0]``)
    qualified by engine as placement knows them: the pinned engine's, else the first's."""
    first = next(iter(config.engines), "")
    pinned_needs = {}
    for model_id, need in needs.items():
        model = config.models.get(model_id)
        engine = model.engine if model is not None and model.engine else ""
        gpus = tuple(gpu if gpu.startswith(tuple(f"{e}:" for e in config.engines))
                     else f"{engine or first}:{gpu}" for gpu in need.pinned)
        pinned_needs[model_id] = replace(need, engine=engine, pinned=gpus)
    return pinned_needs


@dataclass
class EngineSlot:
    """One engine: how to reach it, and whether it answers."""

    name: str
    settings: EngineConfig | None  # None: the one engine of a config without engines:
    engine: Engine | None = None
    containers: Containers | None = None
    owner: Owner | None = None
    up: bool = False
    #: Connection attempts made (a late one's result is dropped).
    attempt: int = 0
    #: Wall-clock time of the last change between up and down, and why it is down.
    since: float = 0.0
    reason: str = "not connected yet"

    @property
    def label(self) -> str:
        return self.name or "default"

    def down_error(self) -> EngineUnreachable:
        when = time.strftime("%H:%M:%S", time.localtime(self.since)) if self.since else "start"
        return EngineUnreachable(
            f"engine {self.label!r} is not reachable (since {when}: {self.reason}); its models "
            "come back when it answers again")


class EngineSet:
    """The proxy's engines, by name, first the one models go to unless told otherwise."""

    def __init__(self, slots: list[EngineSlot], config: Config, listen: str = "") -> None:
        self.slots = {slot.name: slot for slot in slots}
        self.config = config
        self.listen = listen
        #: Whether engines are watched (``engines:`` given); one plain engine is not.
        self.watched = bool(config.engines)
        #: This proxy as the owner of the instance on every engine (one record each).
        self._me: Owner | None = None
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, config: Config, listen: str = "") -> "EngineSet":
        """The ``engines:`` of ``config``, none connected yet (``connect_all``)."""
        return cls([EngineSlot(name, settings) for name, settings in config.engines.items()],
                   config, listen)

    # -- what the lifecycle asks -------------------------------------------------------------

    def up(self) -> list[EngineSlot]:
        return [slot for slot in self.slots.values() if slot.up]

    def slot(self, name: str) -> EngineSlot:
        try:
            return self.slots[name]
        except KeyError:
            raise EngineUnreachable(f"engine {name!r} is not one the proxy started with "
                                    "(engines: changed by a reload): restart the proxy to use "
                                    "it") from None

    def containers(self, name: str) -> Containers:
        """The engine's containers.

        Raises:
            EngineUnreachable: the engine is down (the message names it).
        """
        slot = self.slot(name)
        if not slot.up or slot.containers is None:
            raise slot.down_error()
        return slot.containers

    def choose(self, pinned: str | None, placed: str | None = None) -> str:
        """The engine a start goes to: the model's ``engine:``, else where placement put it,
        else the first engine that answers (the first one when none does)."""
        if pinned is not None:
            return pinned
        if placed:
            return placed
        for slot in self.slots.values():
            if slot.up:
                return slot.name
        return next(iter(self.slots))

    def to_json(self) -> list[dict[str, object]]:
        """Every engine and whether it answers (``/api/hardware``, the UI)."""
        return [{"name": slot.label, "up": slot.up,
                 "host": slot.settings.host if slot.settings else None,
                 "address": slot.containers.address if slot.containers else None,
                 "since": slot.since or None, "reason": None if slot.up else slot.reason}
                for slot in self.slots.values()]

    # -- connections ---------------------------------------------------------------------------

    def connect(self, slot: EngineSlot) -> None:
        """Connect to the slot's engine and claim the instance there (blocking: a thread).

        Raises:
            LlamaswapError: it does not answer, or another live proxy owns the instance there.
        """
        settings = slot.settings
        assert settings is not None, "the single engine is connected by the caller"
        with self._lock:
            slot.attempt += 1
            mine = slot.attempt
            # One owner (one token) on every engine, made before the first claim: engines are
            # claimed side by side, and a reconnect must find its own record as its own.
            if self._me is None:
                self._me = Owner.current(self.listen)
            me = self._me
        engine = Engine.of_entry(settings)
        try:
            docker = self.config.docker
            owner = claim_instance(engine, docker.instance, self.listen, me)
            routing = resolve_routing(docker.routing, engine)
            containers = Containers(engine, docker.instance, docker.network, routing,
                                    slot.name, settings.address, settings.bind)
            containers.ensure_network()
            with self._lock:
                # An attempt that outlived its deadline at start-up must not replace a later
                # one's connection.
                if slot.attempt != mine:
                    raise LlamaswapError("a later connection attempt replaced this one")
                slot.engine, slot.owner, slot.containers = engine, owner, containers
        except BaseException:
            engine.close()
            raise

    def connect_all(self) -> None:
        """Connect to every engine once, at start-up (blocking): one that does not answer is
        left down and retried by ``watch``; one owned by another live proxy stops the start.

        Raises:
            InstanceOwned: another live proxy owns the instance on one of the engines.
        """
        # Side by side, each within CONNECT_TIMEOUT_S: a machine that is off (no answer at
        # all) must not hold the start for a client timeout; its attempt is left to end alone.
        results: dict[str, BaseException | None] = {}

        def attempt(name: str, slot: EngineSlot) -> None:
            try:
                self.connect(slot)
            except BaseException as exc:  # noqa: BLE001 - judged below
                results[name] = exc
            else:
                results[name] = None

        # Daemon threads: one still waiting on a silent machine must not hold the exit either.
        threads = [threading.Thread(target=attempt, args=(name, slot), daemon=True,
                                    name=f"llamaswap-connect-{name}")
                   for name, slot in self.slots.items()]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for name, slot in self.slots.items():
            if name not in results:
                with self._lock:
                    slot.attempt += 1  # its late result is dropped
                self._mark(slot, False, f"no answer within {CONNECT_TIMEOUT_S:.0f}s")
                continue
            error = results[name]
            if isinstance(error, InstanceOwned):
                self.release()
                raise error
            if isinstance(error, LlamaswapError):
                self._mark(slot, False, _reason(error))
            elif error is not None:
                raise error
            else:
                self._mark(slot, True, "")

    def release(self) -> None:
        """Give the instance up on every engine and close the connections (at shutdown)."""
        for slot in self.slots.values():
            if slot.settings is None:
                continue  # the caller's engine: the caller releases it
            if slot.engine is not None and slot.owner is not None and slot.up:
                release_instance(slot.engine, self.config.docker.instance, slot.owner)
            if slot.engine is not None:
                slot.engine.close()
            slot.engine = slot.containers = slot.owner = None
            slot.up = False

    # -- watching ------------------------------------------------------------------------------

    def watch(self, on_lost: Callable[[EngineSlot], None],
              on_back: Callable[[EngineSlot], Awaitable[None]]) -> None:
        """Look at every engine on a clock until ``stop``: ``on_lost`` when one stops
        answering (at once), ``on_back`` when one answers again (awaited before the next look
        at it)."""
        if self.watched and self._task is None:
            self._task = asyncio.ensure_future(self._watch(on_lost, on_back))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - cancelled, as asked
                pass
            self._task = None

    async def _watch(self, on_lost: Callable[[EngineSlot], None],
                     on_back: Callable[[EngineSlot], Awaitable[None]]) -> None:
        await asyncio.gather(*(self._watch_one(slot, on_lost, on_back)
                               for slot in self.slots.values()))

    async def _watch_one(self, slot: EngineSlot, on_lost: Callable[[EngineSlot], None],
                         on_back: Callable[[EngineSlot], Awaitable[None]]) -> None:
        # A connection attempt that outlived its deadline (an ssh:// host that does not
        # answer) is waited for again, not started anew: attempts never pile up.
        attempt: asyncio.Future[None] | None = None
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            if slot.up:
                # Twice before calling it gone: a busy engine may miss one deadline (a refused
                # connection fails both at once).
                reason = await self._ping(slot) and await self._ping(slot)
                if reason is not None:
                    self._mark(slot, False, reason)
                    on_lost(slot)
                continue
            if attempt is None:
                attempt = _in_daemon_thread(self._reconnect, slot)
            done, _ = await asyncio.wait({attempt}, timeout=CONNECT_TIMEOUT_S)
            if not done:
                slot.reason = f"no answer within {CONNECT_TIMEOUT_S:.0f}s"
                continue
            finished, attempt = attempt, None
            try:
                finished.result()
            except LlamaswapError as exc:
                if _reason(exc) != slot.reason:
                    logger.bind(engine=slot.label, reason=_reason(exc)).info(
                        "engine still down")
                slot.reason = _reason(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - keep trying; say what went wrong
                logger.opt(exception=exc).bind(engine=slot.label).warning(
                    "connecting to the engine failed: {}", exc)
                slot.reason = f"{type(exc).__name__}: {exc}"
                continue
            self._mark(slot, True, "")
            try:
                await on_back(slot)
            except Exception as exc:  # noqa: BLE001 - the engine stays in use; say what failed
                logger.opt(exception=exc).bind(engine=slot.label).error(
                    "taking the engine back failed: {}", exc)

    def _reconnect(self, slot: EngineSlot) -> None:
        old = slot.engine
        slot.engine = slot.containers = None
        if old is not None:
            old.close()
        self.connect(slot)

    async def _ping(self, slot: EngineSlot) -> str | None:
        """None when the engine answers, else why not."""
        engine = slot.engine
        if engine is None:
            return "not connected"
        try:
            await asyncio.wait_for(asyncio.to_thread(engine.ping, PING_TIMEOUT_S),
                                   PING_TIMEOUT_S + 1)
        except asyncio.TimeoutError:
            return f"no answer to a ping within {PING_TIMEOUT_S:.0f}s"
        except LlamaswapError as exc:
            return _reason(exc)
        return None

    def _mark(self, slot: EngineSlot, up: bool, reason: str) -> None:
        slot.up, slot.reason, slot.since = up, reason, time.time()
        log = logger.bind(engine=slot.label, host=slot.settings.host if slot.settings else "-")
        if up:
            log.info("engine up")
        else:
            log.bind(reason=reason.splitlines()[0][:300] if reason else "-").warning("engine down")


def _reason(error: LlamaswapError) -> str:
    """Why an engine is down, without the advice on starting a local engine (this one is
    remote, or known to be down)."""
    return error.fault if isinstance(error, EngineUnreachable) else error.message


def _in_daemon_thread(function: Callable[[EngineSlot], None],
                      slot: EngineSlot) -> asyncio.Future[None]:
    """``function(slot)`` in a daemon thread of its own, as a future of the running loop: a
    connection to a silent machine may take the client's whole timeout, and the loop's
    executor is joined at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            function(slot)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, daemon=True, name=f"llamaswap-connect-{slot.label}").start()
    return future
