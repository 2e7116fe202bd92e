"""The scheduler: pure decisions about which model runs, who waits and what stops.

No I/O, no asyncio, no clock: the orchestrator feeds it events (a request arrives or leaves,
a lease is released, a container is ready, failed, stopped or died, a TTL tick, an unload, a
reload) with the time they happened, and executes the decisions each event returns (admit a
waiter, fail one, start or stop a model, cut requests, finish an unload).

Rules, after llama-swap's router and wave 1:

* What a start evicts, and on which GPUs the model goes, is the placement policy's answer
  (``lifecycle/placement.py``, ``routing.router.use``): ``group`` (llama-swap's groups, the
  default: ``swap: true`` runs one member at a time, ``exclusive: true`` stops the other
  groups' models except ``persistent`` groups' members, models in no group share an implicit
  swap + exclusive group), ``matrix`` (llama-swap's swap matrix) or ``fit`` (GPU memory). A
  start's GPUs are reserved from the moment it runs until its container stops; a start that
  cannot fit at all fails its waiters at once. Queued starts are taken by
  ``routing.scheduler.settings.fifo.priority`` (higher first), then in arrival order.
* Requests are served FIFO per model. While an operation drains a model (it is being evicted
  or unloaded) that model admits no new request; its requests queue behind the operation, and
  when a model comes up every request queued for it is admitted together (ABAB → AABB).
* Operations (bring a model up, unload models) run concurrently unless they conflict: they
  touch a common model, or one's target would evict a model the other touches. Conflicting
  operations keep their order.
* An eviction waits for the evicted models' in-flight requests (drain-before-evict) unless the
  unload is forced. A bring-up whose target nobody waits for any more, while another model is
  waited for, gives way (abandoned). Concurrent cold requests for one model start it once.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from llamaswap_docker.errors import (
    InsufficientGpuMemory,
    LlamaswapError,
    ModelNotFound,
    ModelStartFailed,
    ModelStopped,
)
from llamaswap_docker.lifecycle import outcomes
from llamaswap_docker.lifecycle.model import ModelRuntime, ModelState
from llamaswap_docker.lifecycle.placement import (
    NO_GPU,
    RECENT_REQUESTS,
    Device,
    GroupFlags,
    Holder,
    Need,
    NoFit,
    Placement,
    Plan,
    Policy,
    View,
    config_placement,
    models_to_evict,
    policy_for,
)
from llamaswap_docker.runtime import ContainerRef

__all__ = [
    "Admit", "Cut", "Decision", "Fail", "Finished", "GroupRules", "Note", "Placed", "Remove",
    "Scheduler", "Sleep", "Start", "Stop", "Wake", "models_to_evict",
]


class GroupRules(Protocol):
    """What the scheduler needs of the config."""

    def group_of(self, model_id: str) -> tuple[str, GroupFlags]: ...

    def effective_ttl(self, model_id: str) -> int: ...

    def sleep_mode(self, model_id: str) -> int: ...

    def sleep_ttl(self, model_id: str) -> int: ...


# -- decisions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admit:
    """Serve waiter ``waiter`` on ``container`` (its lease is counted already)."""
    waiter: int
    model_id: str
    container: ContainerRef


@dataclass(frozen=True)
class Fail:
    waiter: int
    model_id: str
    error: LlamaswapError


@dataclass(frozen=True)
class Start:
    model_id: str
    evicted: tuple[str, ...] = ()  # what was stopped or put to sleep to make room
    #: The GPUs it goes on (None: as the config says, the GPUs being unknown or unused).
    placement: Placement | None = None


@dataclass(frozen=True)
class Placed:
    """A placement decision, for the log and the ``placement`` event."""
    model_id: str
    policy: str
    placement: Placement | None
    need: Need
    evicted: tuple[str, ...]
    why: str
    free_before: tuple[tuple[str, int], ...] = ()
    fits: bool = True  # False: it cannot fit even with every evictable model gone


@dataclass(frozen=True)
class Stop:
    """Stop and remove the model's container; ``evicted_for`` names the model it makes room for."""
    model_id: str
    reason: str
    evicted_for: str | None = None


@dataclass(frozen=True)
class Sleep:
    """Put the model's server to sleep (vLLM ``/sleep?level=N``) instead of stopping it."""
    model_id: str
    level: int
    evicted_for: str


@dataclass(frozen=True)
class Wake:
    """Wake the asleep model's server (vLLM ``/wake_up``)."""
    model_id: str
    evicted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Remove:
    """Remove a container that died (the model is no longer counted as running)."""
    container: ContainerRef
    reason: str  # how it died


@dataclass(frozen=True)
class Cut:
    """End the requests in flight on these models now (forced unload ``operation``)."""
    operation: int
    model_ids: tuple[str, ...]


@dataclass(frozen=True)
class Finished:
    """An unload operation ended (``error`` None: done)."""
    operation: int
    error: str | None = None


@dataclass(frozen=True)
class Note:
    """A line for the log."""
    message: str
    fields: tuple[tuple[str, str], ...] = ()


Decision = Admit | Fail | Start | Stop | Sleep | Wake | Remove | Cut | Finished | Note | Placed


# -- operations --------------------------------------------------------------------------------

@dataclass(eq=False)
class _Operation:
    id: int
    #: The model a bring-up brings up; None for an unload.
    target: str | None
    #: Unload: the models to stop. Bring-up: the models it evicts (known once it runs).
    models: tuple[str, ...] = ()
    reason: str = ""
    force: bool = False
    #: TTL unloads: skip a model used again within this many seconds of ``at``.
    idle_for: float | None = None
    at: float = 0.0
    phase: str = "queued"  # queued → draining → stopping → starting (bring-up) → done
    stopping: set[str] = field(default_factory=set)
    #: Bring-up: where the target goes, reserved from the moment the operation runs.
    placement: Placement | None = None

    def touches(self) -> set[str]:
        return set(self.models) | ({self.target} if self.target else set())


@dataclass(frozen=True)
class _Flags:
    swap: bool
    exclusive: bool
    persistent: bool


#: A model a reload removed: in no group, never evicted by another.
_REMOVED = _Flags(swap=False, exclusive=False, persistent=True)


class _Groups:
    """``group_of`` answers, remembered: rules are read on every step, and a config's lookups
    are not free."""

    def __init__(self, rules: GroupRules) -> None:
        self._rules = rules
        self._seen: dict[str, tuple[str, GroupFlags]] = {}

    def group_of(self, model_id: str) -> tuple[str, GroupFlags]:
        found = self._seen.get(model_id)
        if found is None:
            try:
                found = self._rules.group_of(model_id)
            except KeyError:  # removed by a reload, still being unloaded: it conflicts with none
                found = (f"(removed) {model_id}", _REMOVED)
            self._seen[model_id] = found
        return found

    def engine_of(self, model_id: str) -> str | None:
        """The engine the model is pinned to (None: any, or rules without engines)."""
        engine_of = getattr(self._rules, "engine_of", None)
        return engine_of(model_id) if engine_of is not None else None

    def effective_ttl(self, model_id: str) -> int:
        return self._rules.effective_ttl(model_id)

    def sleep_mode(self, model_id: str) -> int:
        return self._rules.sleep_mode(model_id)

    def sleep_ttl(self, model_id: str) -> int:
        return self._rules.sleep_ttl(model_id)

    # What the policies read of the config; rules that predate them answer "group".
    @property
    def router(self) -> str:
        return getattr(self._rules, "router", "group")

    @property
    def matrix_program(self) -> Any:
        return getattr(self._rules, "matrix_program", None)

    def evict_costs(self) -> dict[str, int]:
        costs = getattr(self._rules, "evict_costs", None)
        return costs() if costs is not None else {}

    def priority(self, model_id: str) -> int:
        priority = getattr(self._rules, "priority", None)
        try:
            return priority(model_id) if priority is not None else 0
        except KeyError:  # removed by a reload
            return 0


class Scheduler:
    """The models' states, the queue and the operations; every event returns decisions."""

    def __init__(self, model_ids: Iterable[str], rules: GroupRules) -> None:
        self.rules = rules
        self.models: dict[str, ModelRuntime] = {m: ModelRuntime(m) for m in model_ids}
        #: The GPUs placement may use (the inventory), and each model's need of them.
        self.devices: tuple[Device, ...] = ()
        self.needs: dict[str, Need] = {}
        #: Where each model with a container runs (starts in flight: their operation's).
        self.placed: dict[str, Placement] = {}
        #: The last requests' models, and how many each has among them (fit weighs evictions
        #: by it).
        self._recent: deque[str] = deque(maxlen=RECENT_REQUESTS)
        self._recent_counts: dict[str, int] = {}
        #: Waiting requests, oldest first: waiter id → model id.
        self.waiters: dict[int, str] = {}
        self.pending: list[_Operation] = []
        #: Models a reload removed, still being unloaded: not subject to any rule any more.
        self.retired: set[str] = set()
        self.running: list[_Operation] = []
        self._ids = itertools.count(1)
        self._out: list[Decision] = []
        #: Queued bring-ups' footprints during one launch pass, by operation id.
        self._footprints: dict[int, set[str]] = {}

    @property
    def rules(self) -> GroupRules:
        return self._groups

    @rules.setter
    def rules(self, rules: GroupRules) -> None:
        """A new config (a reload): group lookups start afresh, the router is chosen anew."""
        self._groups = _Groups(rules)
        self.policy: Policy = policy_for(self._groups)
        #: Only fit weighs models' recent use: the other routers keep the request path as it was.
        self._counting = self.policy.name == "fit"

    def set_inventory(self, devices: Iterable[Device], needs: dict[str, Need]) -> list[Decision]:
        """The GPUs (found or declared) and the models' needs changed: plan with these."""
        self.devices, self.needs = tuple(devices), dict(needs)
        for model_id, runtime in self.models.items():
            need = self.needs.get(model_id, NO_GPU)
            if runtime.container is not None and model_id not in self.placed and need.uses_gpu:
                # Adopted from a proxy that recorded no placement: where the config puts it.
                placement = config_placement(need, self.devices)
                if placement is not None:
                    self.placed[model_id] = placement
        return self._step() if (self.waiters or self.pending) else []

    # -- queries -----------------------------------------------------------------------------

    def admissible(self, model_id: str) -> bool:
        runtime = self.models[model_id]
        # ``_state``: read on every request's admission, without the property's call.
        return (runtime._state is ModelState.READY and not runtime.draining
                and runtime.container is not None and runtime.container.base_url is not None)

    def placements(self) -> dict[str, Placement]:
        """Where each model is placed: where it runs, or where a start in progress puts it."""
        placed = dict(self.placed)
        for op in self.running:
            if op.target is not None and op.placement is not None:
                placed[op.target] = op.placement
        return placed

    def waiting(self, model_id: str) -> int:
        return sum(1 for m in self.waiters.values() if m == model_id)

    def abandonable(self, target: str) -> bool:
        """A bring-up nobody waits for any more, while another model is waited for."""
        return self.waiting(target) == 0 and any(m != target for m in self.waiters.values())

    def progress(self, model_id: str) -> str:
        """One line on where a waiting request for the model stands."""
        if self.models[model_id].state is ModelState.STARTING:
            return f"starting {model_id}…"
        draining = sorted(m for m, r in self.models.items() if r.draining and r.container)
        if draining:
            return f"waiting for {', '.join(draining)} to finish before swapping to {model_id}…"
        if self.models[model_id].state is ModelState.READY:
            return f"{model_id} is ready"
        return f"queued for {model_id}…"

    def busy(self, model_id: str) -> bool:
        """Whether an operation (queued or running) will touch the model."""
        return any(model_id in op.touches() for op in (*self.running, *self.pending))

    # -- events ------------------------------------------------------------------------------

    def admit_now(self, model_id: str) -> ContainerRef | None:
        """Admit a request at once when its model is ready (the fast path): its container."""
        if not self.admissible(model_id):
            return None
        runtime = self.models[model_id]
        runtime.in_flight += 1
        if self._counting:
            self._count_request(model_id)
        return runtime.container

    def _count_request(self, model_id: str) -> None:
        recent, counts = self._recent, self._recent_counts
        if len(recent) == RECENT_REQUESTS:
            counts[recent[0]] -= 1  # falls out of the window as this one comes in
        recent.append(model_id)
        counts[model_id] = counts.get(model_id, 0) + 1

    def enqueue(self, model_id: str) -> tuple[int, list[Decision]]:
        if self._counting:
            self._count_request(model_id)
        waiter = next(self._ids)
        self.waiters[waiter] = model_id
        return waiter, self._step()

    def leave(self, waiter: int) -> list[Decision]:
        """A queued request left (client gone) before it was admitted."""
        self.waiters.pop(waiter, None)
        return self._step()

    def release(self, model_id: str, now: float) -> list[Decision]:
        runtime = self.models.get(model_id)
        if runtime is not None:
            runtime.in_flight -= 1
            runtime.last_used = now
        if not (self.waiters or self.running or self.pending):
            return []  # the common case on the request path: nothing waits on a release
        return self._step()

    def unload(self, model_ids: Iterable[str], reason: str, force: bool = False,
               idle_for: float | None = None, now: float = 0.0) -> tuple[int, list[Decision]]:
        op = _Operation(next(self._ids), None, tuple(model_ids), reason, force, idle_for, now)
        self.pending.append(op)
        return op.id, self._step()

    def handle(self, outcome: outcomes.Outcome) -> list[Decision]:
        """An effect's outcome, reported back: the decisions that follow."""
        if isinstance(outcome, outcomes.Created):
            self.created(outcome.model_id, outcome.container)
            return []
        if isinstance(outcome, outcomes.Ready):
            return self.ready(outcome.model_id, outcome.container, outcome.at)
        if isinstance(outcome, outcomes.StartFailed):
            return self.start_failed(outcome.model_id, outcome.error)
        if isinstance(outcome, outcomes.StartAbandoned):
            return self.start_abandoned(outcome.model_id)
        if isinstance(outcome, outcomes.Stopped):
            return self.stopped(outcome.model_id)
        if isinstance(outcome, outcomes.StopFailed):
            return self.stop_failed(outcome.model_id, outcome.message)
        if isinstance(outcome, outcomes.Slept):
            return self.slept(outcome.model_id, outcome.at)
        if isinstance(outcome, outcomes.SleepFailed):
            return self.sleep_failed(outcome.model_id, outcome.reason)
        if isinstance(outcome, outcomes.WakeFailed):
            return self.wake_failed(outcome.model_id, outcome.reason)
        raise TypeError(f"not an outcome: {outcome!r}")

    def created(self, model_id: str, container: ContainerRef) -> None:
        """The starting model's container exists (so a status shows it)."""
        self.models[model_id].container = container

    def ready(self, model_id: str, container: ContainerRef, now: float) -> list[Decision]:
        for op in self.running:
            if op.target == model_id and op.phase == "starting" and op.placement is not None:
                self.placed[model_id] = op.placement
        runtime = self.models[model_id]
        runtime.state, runtime.container, runtime.failure = ModelState.READY, container, None
        runtime.ready_since = runtime.last_used = now
        runtime.draining = False
        self._end_bring_up(model_id)
        return self._step()

    def start_failed(self, model_id: str, error: LlamaswapError) -> list[Decision]:
        runtime = self.models[model_id]
        runtime.state, runtime.container, runtime.failure = ModelState.FAILED, None, error.message
        self._fail_waiters(model_id, error)
        self._end_bring_up(model_id)
        return self._step()

    def start_abandoned(self, model_id: str) -> list[Decision]:
        runtime = self.models[model_id]
        runtime.state, runtime.container = ModelState.STOPPED, None
        self._end_bring_up(model_id)
        return self._step()

    def stopped(self, model_id: str) -> list[Decision]:
        runtime = self.models.get(model_id)
        if runtime is not None:
            runtime.state, runtime.container, runtime.ready_since = ModelState.STOPPED, None, None
            runtime.draining = False
        self.placed.pop(model_id, None)
        self._stop_done(model_id)
        return self._step()

    def slept(self, model_id: str, now: float) -> list[Decision]:
        """An evicted model is asleep: its container runs on, holding no GPU memory."""
        runtime = self.models[model_id]
        runtime.state, runtime.asleep_since, runtime.draining = ModelState.ASLEEP, now, False
        runtime.ready_since = None
        self._stop_done(model_id)
        return self._step()

    def sleep_failed(self, model_id: str, reason: str) -> list[Decision]:
        """It would not sleep: stop it instead (the eviction goes on)."""
        self._out.append(Note("sleep failed, stopping the container instead",
                              (("model", model_id), ("reason", reason))))
        evicted_for = next((op.target for op in self.running if model_id in op.stopping), None)
        self._out.append(Stop(model_id, f"sleep failed: {reason}", evicted_for))
        return self._step()

    def wake_failed(self, model_id: str, reason: str) -> list[Decision]:
        """It would not wake: stop its container and start the model cold."""
        self._out.append(Note("wake failed, falling back to a cold start",
                              (("model", model_id), ("reason", reason))))
        for op in self.running:
            if op.target == model_id and op.phase == "starting":
                op.phase = "stopping"
                op.stopping.add(model_id)
                self.models[model_id].state = ModelState.STOPPING
                self._out.append(Stop(model_id, f"wake failed: {reason}", model_id))
        return self._step()

    def stop_failed(self, model_id: str, message: str) -> list[Decision]:
        """The container would not stop: it stays recorded (a later operation tries again), and
        the operation that stopped it fails."""
        runtime = self.models[model_id]
        runtime.state, runtime.failure = ModelState.FAILED, f"stop failed: {message}"
        for op in [op for op in self.running if model_id in op.stopping]:
            self._drop(op)
            if op.target is not None:
                self._fail_waiters(op.target, ModelStartFailed(
                    f"model {op.target!r} could not be brought up: stopping {model_id} failed: "
                    f"{message}"))
            else:
                self._out.append(Finished(op.id, f"stopping {model_id} failed: {message}"))
        return self._step()

    def died(self, container_id: str, reason: str) -> list[Decision]:
        """A ready model's container stopped outside our control: the model failed."""
        stopping = {m for op in self.running for m in op.stopping}
        for runtime in self.models.values():
            ref = runtime.container
            if runtime.model_id in stopping:
                continue  # we are stopping it: its end is ours, not a death
            if ref is not None and ref.id == container_id and runtime.state in (
                    ModelState.READY, ModelState.ASLEEP):
                runtime.state, runtime.container = ModelState.FAILED, None
                runtime.failure, runtime.draining = reason, False
                self.placed.pop(runtime.model_id, None)
                self._out.append(Remove(ref, reason))
        return self._step()

    def tick(self, now: float) -> list[Decision]:
        """TTL: unload ready models idle for their ``ttl`` and asleep ones asleep for their
        ``sleepTTL`` (none in flight, none waiting)."""
        for model_id, runtime in self.models.items():
            if (model_id in self.retired or runtime.in_flight or self.waiting(model_id)
                    or self.busy(model_id)):
                continue
            if runtime.state is ModelState.READY:
                ttl, since, what = self.rules.effective_ttl(model_id), runtime.last_used, "idle"
            elif runtime.state is ModelState.ASLEEP and runtime.asleep_since is not None:
                ttl, since, what = self.rules.sleep_ttl(model_id), runtime.asleep_since, "asleep"
            else:
                continue
            if ttl > 0 and now - since >= ttl:
                name = "ttl" if what == "idle" else "sleepTTL"
                self._out.append(Note(f"{name} expired, unloading",
                                      (("model", model_id), (name, str(ttl)))))
                self.pending.append(_Operation(next(self._ids), None, (model_id,),
                                               f"{what} for {ttl}s ({name})", idle_for=ttl, at=now))
        return self._step()

    def adopt(self, model_id: str, container: ContainerRef, now: float,
              asleep: bool = False, placement: Placement | None = None) -> None:
        """A container found at start-up, where it was placed (its labels say)."""
        if placement is not None:
            self.placed[model_id] = placement
        runtime = self.models[model_id]
        runtime.state, runtime.container = ModelState.READY, container
        runtime.ready_since = runtime.last_used = now
        if asleep:
            runtime.state, runtime.asleep_since, runtime.ready_since = ModelState.ASLEEP, now, None

    def add_model(self, model_id: str) -> None:
        self.models.setdefault(model_id, ModelRuntime(model_id))

    def remove_models(self, model_ids: Iterable[str]) -> list[Decision]:
        """Models a reload removed: their waiters fail (the orchestrator then unloads them)."""
        for model_id in model_ids:
            self.retired.add(model_id)
            self._fail_waiters(model_id, ModelNotFound(
                f"model {model_id!r} was removed from the config"))
        return self._step()

    def forget(self, model_id: str) -> None:
        """Drop a removed model once its container is gone."""
        if self.models.get(model_id) is not None and self.models[model_id].container is None:
            self.models.pop(model_id)
            self.retired.discard(model_id)

    def reject_all(self, reason: str) -> list[Decision]:
        for waiter, model_id in list(self.waiters.items()):
            self._out.append(Fail(waiter, model_id, ModelStopped(reason)))
        self.waiters.clear()
        return self._flush()

    # -- the step ----------------------------------------------------------------------------

    def _step(self) -> list[Decision]:
        """Apply the rules until nothing changes; return what to do."""
        progress = True
        while progress:
            self._admit()
            progress = self._queue_bring_ups()
            progress = self._launch() or progress
            for op in list(self.running):
                progress = self._advance(op) or progress
        return self._flush()

    def _flush(self) -> list[Decision]:
        out, self._out = self._out, []
        return out

    def _admit(self) -> None:
        # A forced unload waiting its turn wins over new admissions: it would have to cut them.
        forced = {m for op in self.pending if op.force for m in op.models}
        for waiter, model_id in list(self.waiters.items()):
            if self.admissible(model_id) and model_id not in forced:
                runtime = self.models[model_id]
                runtime.in_flight += 1
                del self.waiters[waiter]
                assert runtime.container is not None
                self._out.append(Admit(waiter, model_id, runtime.container))

    def _queue_bring_ups(self) -> bool:
        queued = False
        for model_id in dict.fromkeys(self.waiters.values()):
            if not any(op.target == model_id for op in (*self.pending, *self.running)):
                self._queue(_Operation(next(self._ids), model_id))
                queued = True
        return queued

    def _queue(self, op: _Operation) -> None:
        """Queue a bring-up before the first queued one of strictly lower priority (llama-swap's
        fifo: higher priority first, equal priorities in arrival order)."""
        assert op.target is not None
        priority = self.rules.priority(op.target)
        if priority:
            for index, other in enumerate(self.pending):
                if other.target is not None and self.rules.priority(other.target) < priority:
                    self.pending.insert(index, op)
                    return
        self.pending.append(op)

    def _launch(self) -> bool:
        launched = False
        held: list[_Operation] = []  # earlier operations still queued: a later one keeps behind
        self._footprints.clear()
        for op in list(self.pending):
            if any(self._conflict(op, other) for other in (*self.running, *held)):
                held.append(op)
                continue
            self.pending.remove(op)
            self.running.append(op)
            self._begin(op)
            self._footprints.clear()  # what the others would evict may have changed
            launched = True
        return launched

    def _footprint(self, op: _Operation) -> set[str]:
        """The models an operation touches; for a queued bring-up, what it would evict now
        (planned once per launch pass: a plan is not free)."""
        if op.phase != "queued" or op.target is None:
            return op.touches()
        known = self._footprints.get(op.id)
        if known is None:
            plan = self._plan(op.target)
            known = {op.target} | (set(plan.evict) if isinstance(plan, Plan) else set())
            self._footprints[op.id] = known
        return known

    def _conflict(self, a: _Operation, b: _Operation) -> bool:
        touched_a, touched_b = self._footprint(a), self._footprint(b)
        if touched_a & touched_b:
            return True
        return bool(
            (a.target and self.policy.excludes(a.target, touched_b))
            or (b.target and self.policy.excludes(b.target, touched_a))
        )

    def _plan(self, target: str) -> Plan | NoFit:
        return self.policy.plan(target, self._view(target))

    def _view(self, target: str) -> View:
        """What the policy sees: the occupied models, the GPUs and what holds them, the need."""
        occupied = [m for m in self._occupied() if m != target]  # (its own start runs already)
        need = self.needs.get(target, NO_GPU)
        runtime = self.models.get(target)
        if (runtime is not None and runtime.state is ModelState.ASLEEP
                and runtime.container is not None and target in self.placed):
            # It wakes in the container it sleeps in: on the same GPUs.
            need = replace(need, pinned=self.placed[target].devices)
        if not self.devices:
            return View(tuple(occupied), need)
        starting = {op.target: op.placement for op in self.running
                    if op.target is not None and op.phase != "queued"}
        holders = []
        for model_id in occupied:
            placement = (starting[model_id] if model_id in starting
                         else self.placed.get(model_id))
            if placement is None:
                continue
            held = self.models[model_id]
            holders.append(Holder(
                model_id, placement,
                busy=bool(held.in_flight or self.waiting(model_id) or held.draining
                          or model_id in starting),
                persistent=self.rules.group_of(model_id)[1].persistent,
                last_used=held.last_used, recent=self._recent_counts.get(model_id, 0)))
        return View(tuple(occupied), need, self.devices, tuple(holders))

    def _occupied(self) -> list[str]:
        """Models holding a container (and awake), or being brought up."""
        starting = {op.target for op in self.running if op.target}
        return [m for m, r in self.models.items()
                if ((r.container is not None and r.state is not ModelState.ASLEEP)
                    or m in starting) and m not in self.retired]

    def _begin(self, op: _Operation) -> None:
        if op.target is not None:
            target = self.models.get(op.target)
            if target is None or self.admissible(op.target) or not self.waiting(op.target):
                self._drop(op)  # ready (its waiters are admitted), removed, or nobody waits
                return
            plan = self._plan(op.target)
            if isinstance(plan, NoFit):
                self._fail_waiters(op.target, InsufficientGpuMemory(
                    f"model {op.target!r} does not fit on the GPUs: {plan.message}"))
                self._out.append(Placed(op.target, self.policy.name, None, plan.need, (),
                                        plan.message, fits=False))
                self._drop(op)
                return
            evict = set(plan.evict)
            if target.container is not None and target.state is ModelState.FAILED:
                # its container would not stop earlier: stop it before starting a new one
                evict.add(op.target)
            op.models = tuple(sorted(evict))
            op.placement = plan.placement
            self._out.append(Placed(op.target, self.policy.name, plan.placement,
                                    self.needs.get(op.target, NO_GPU),
                                    tuple(m for m in op.models if m != op.target), plan.why,
                                    plan.free_before))
            if any(self.models[m].in_flight for m in evict):
                self._out.append(Note("swap: waiting for in-flight requests of evicted models",
                                      (("model", op.target), ("evict", ",".join(op.models)))))
        else:
            targets = [m for m in op.models if m in self.models
                       and self.models[m].container is not None]
            if op.idle_for is not None:  # a TTL unload skips a model used again since
                targets = [m for m in targets if not self.models[m].in_flight
                           and not self.waiting(m)
                           and op.at - self.models[m].last_used >= op.idle_for]
            op.models = tuple(targets)
            if op.force and targets:
                self._out.append(Cut(op.id, op.models))
        for model_id in op.models:
            self.models[model_id].draining = True
        op.phase = "draining"

    def _advance(self, op: _Operation) -> bool:
        if op.phase == "draining":
            if any(self.models[m].in_flight for m in op.models):
                if op.target is not None and self.abandonable(op.target):
                    self._out.append(Note("swap abandoned: no request waits for the model any more",
                                          (("model", op.target),)))
                    self._drop(op)
                    return True
                return False
            op.phase = "stopping"
            for model_id in op.models:
                runtime = self.models[model_id]
                if runtime.container is None:
                    runtime.state, runtime.draining = ModelState.STOPPED, False
                    continue
                level = self.rules.sleep_mode(model_id) if op.target else 0
                awake = runtime.state is ModelState.READY
                if runtime.state is not ModelState.ASLEEP:  # asleep, it holds no GPU memory
                    runtime.state = ModelState.STOPPING
                op.stopping.add(model_id)
                if op.target and level and awake:  # evicted, and it can sleep: no new container
                    self._out.append(Sleep(model_id, level, op.target))
                else:
                    reason = f"swapping to {op.target}" if op.target else op.reason
                    self._out.append(Stop(model_id, reason, op.target))
            return True
        if op.phase == "stopping" and not op.stopping:
            if op.target is None:
                self._out.append(Finished(op.id))
                self._drop(op)
            elif not self.waiting(op.target):
                self._drop(op)  # everyone waiting for it left meanwhile
            else:
                op.phase = "starting"
                runtime = self.models[op.target]
                asleep = runtime.state is ModelState.ASLEEP and runtime.container is not None
                runtime.state, runtime.failure = ModelState.STARTING, None
                if asleep:
                    self._out.append(Wake(op.target, op.models))
                else:
                    runtime.container = None
                    self._out.append(Start(op.target, tuple(m for m in op.models
                                                            if m != op.target), op.placement))
            return True
        return False

    def _stop_done(self, model_id: str) -> None:
        """The model's stop (or sleep) that an operation waited for is over."""
        for op in self.running:
            op.stopping.discard(model_id)

    def _end_bring_up(self, model_id: str) -> None:
        for op in [op for op in self.running if op.target == model_id and op.phase == "starting"]:
            self._drop(op)

    def _drop(self, op: _Operation) -> None:
        """End an operation: the models it drained admit requests again (unless stopped)."""
        if op in self.running:
            self.running.remove(op)
        for model_id in op.models:
            runtime = self.models.get(model_id)
            if runtime is not None and not any(model_id in o.models for o in self.running):
                runtime.draining = False

    def _fail_waiters(self, model_id: str, error: LlamaswapError) -> None:
        for waiter, waited in list(self.waiters.items()):
            if waited == model_id:
                del self.waiters[waiter]
                self._out.append(Fail(waiter, model_id, error))
