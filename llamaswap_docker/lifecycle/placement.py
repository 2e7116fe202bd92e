"""Placement: which running models a start evicts, and on which GPUs the model runs.

The scheduler asks one ``Policy`` (as llama-swap's scheduler asks its ``Swapper``), picked by
``routing.router.use``:

* ``group`` (the default): llama-swap's groups. ``swap: true`` runs one member at a time,
  ``exclusive: true`` stops the other groups' models except ``persistent`` groups' members;
  models in no group share an implicit swap + exclusive group. GPUs are the config's.
* ``matrix``: llama-swap's swap matrix (``config/matrix.py``): the lowest-cost set holding the
  model, ties to the set defined first. GPUs are the config's.
* ``fit``: the model goes on the GPU (or the number of GPUs its ``gpus`` asks for) where its
  memory need fits after evicting the idle models whose reload would cost least: each one's
  GiB times how often it was asked for among the last ``RECENT_REQUESTS`` requests (a model
  nobody asked for lately costs nothing to lose); ties evict the fewest models, then the
  least recently used, then leave the GPU with the least memory free (large holes stay whole
  for large models). Busy models (requests in flight or waiting, or starting) are evicted
  only when idle ones cannot make room, and then after their requests finish; ``persistent``
  groups' models never. Groups given in the config still apply; models in no group are
  limited by memory alone. A model that cannot fit even with every evictable model gone
  gets ``NoFit``. (Evicting the fewest models, least recently used first, loads 1.5× the
  GiB of the offline optimum on ``benchmarks/bench_placement.py``'s Zipf trace and 1.7× on
  its agent trace; weighing reloads by recent use, 1.2× on both.)

Everything here is pure: the scheduler builds a ``View`` (the GPUs, what holds them, the
target's ``Need``) and gets a ``Plan`` or a ``NoFit`` back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DEFAULT_GROUP", "Device", "FitPolicy", "GroupPolicy", "Holder", "MatrixPolicy", "Need",
    "NoFit", "Placement", "Plan", "Policy", "View", "format_bytes", "models_to_evict",
    "policy_for",
]

#: The implicit group of models in no group (``config.DEFAULT_GROUP_ID``).
DEFAULT_GROUP = "(default)"
#: Requests a model's recent use is counted over (the scheduler keeps the window).
RECENT_REQUESTS = 1000
#: Above this many candidates on a GPU the exact search for the cheapest evictions is replaced
#: by a greedy one (2**12 subsets per GPU set is still quick; more models on one GPU is rare).
_EXACT_LIMIT = 12


class GroupFlags(Protocol):
    swap: bool
    exclusive: bool
    persistent: bool


class GroupLookup(Protocol):
    def group_of(self, model_id: str) -> tuple[str, GroupFlags]: ...


def format_bytes(value: int | None) -> str:
    """``18.0 GiB``; ``whole GPU`` for an unknown need."""
    if value is None:
        return "whole GPU"
    return f"{value / (1 << 30):.1f} GiB"


def models_to_evict(target: str, loaded: Iterable[str], rules: GroupLookup) -> set[str]:
    """The models in ``loaded`` that must stop before ``target`` may start (llama-swap's
    groups; models in no group share a swap + exclusive group; on one engine: a model
    pinned to another engine is not evicted)."""
    target_group, flags = rules.group_of(target)
    # Groups share one machine's memory: models pinned to other engines are not evicted.
    engine_of = getattr(rules, "engine_of", lambda model_id: None)
    target_engine = engine_of(target)
    evict: set[str] = set()
    for model_id in loaded:
        if model_id == target:
            continue
        if target_engine is not None and engine_of(model_id) not in (None, target_engine):
            continue
        group, other_flags = rules.group_of(model_id)
        if group == target_group:
            if flags.swap:
                evict.add(model_id)
        elif flags.exclusive and not other_flags.persistent:
            evict.add(model_id)
    return evict


def _explicit_group_evictions(target: str, loaded: Iterable[str], rules: GroupLookup) -> set[str]:
    """``models_to_evict`` for the groups the config names: a model in no group neither
    evicts nor is evicted by group rules (under ``fit`` memory alone limits it)."""
    target_group, _ = rules.group_of(target)
    if target_group == DEFAULT_GROUP:
        return set()
    return {m for m in models_to_evict(target, loaded, rules)
            if rules.group_of(m)[0] != DEFAULT_GROUP}


# -- what placement sees -----------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """One GPU as placement sees it: what models may use of it."""

    id: str  # the index (or UUID) a container selects it by
    memory: int  # bytes
    engine: str = ""  # "" is the proxy's one engine (room for several)
    name: str = ""


@dataclass(frozen=True)
class Need:
    """What a model asks of the GPUs."""

    #: Bytes in all (split evenly over its GPUs); None: unknown (it takes whole GPUs).
    bytes: int | None = None
    #: declared (``vram``), estimated (GGUF, vLLM flags), measured (after a load), unknown
    #: (a GPU model none of these covers), none (no GPU: placement leaves it alone).
    source: str = "none"
    #: GPUs asked for (``gpus: N``); None: not said (``fit``: one; others: every GPU).
    count: int | None = None
    #: Exactly these GPUs (``gpus: [0, 1]``, or where an asleep container already is).
    pinned: tuple[str, ...] = ()
    #: Every GPU (``gpus: all``).
    every: bool = False
    #: The engine it is pinned to (``engine:``); "": any (the GPUs of one engine).
    engine: str = ""

    @property
    def uses_gpu(self) -> bool:
        return self.source != "none"

    def per_device(self, devices: int) -> int | None:
        return None if self.bytes is None else math.ceil(self.bytes / max(devices, 1))

    def describe(self) -> str:
        if not self.uses_gpu:
            return "no GPU"
        return f"{format_bytes(self.bytes)} ({self.source})"


NO_GPU = Need()


@dataclass(frozen=True)
class Placement:
    """Where a model runs: an engine and its GPUs, with the bytes it holds on each."""

    devices: tuple[str, ...]
    per_device: int | None  # None: the whole of each GPU (an unknown need)
    engine: str = ""

    @property
    def label(self) -> str:
        """``0,1``: the devices as the container's label and ``LLAMASWAP_DEVICES`` give them."""
        return ",".join(self.devices)


@dataclass(frozen=True)
class Holder:
    """A model holding GPU memory (running, starting, or stopping)."""

    model_id: str
    placement: Placement
    busy: bool = False  # requests in flight or waiting, or it is starting
    persistent: bool = False
    last_used: float = 0.0
    recent: int = 0  # requests for it among the last RECENT_REQUESTS

    def reload_cost(self, capacity: dict[str, int]) -> int:
        """What losing it costs: the bytes a reload brings back, times its recent use."""
        return self.recent * sum(_held(self.placement, capacity.get(d, 0))
                                 for d in self.placement.devices)


@dataclass(frozen=True)
class View:
    """What a policy sees when it plans one start."""

    occupied: tuple[str, ...]  # models with an awake container, or being brought up
    need: Need = NO_GPU  # the target's
    devices: tuple[Device, ...] = ()
    holders: tuple[Holder, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Evict these, then start the model with this placement (None: as the config says)."""

    evict: frozenset[str]
    placement: Placement | None = None
    why: str = ""
    #: Free bytes per GPU before the start (the GPUs placement looked at).
    free_before: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class NoFit:
    """The model cannot fit even with every evictable model stopped."""

    need: Need
    largest_free: int  # the most one GPU could offer it (every evictable model gone)
    gpu: str | None  # which GPU that is
    free_now: int  # the most one GPU has free now
    reason: str = ""

    @property
    def message(self) -> str:
        gpus = len(self.need.pinned) or (self.need.count or 1)
        split = f" over {gpus} GPUs" if gpus > 1 else ""
        where = f" on GPU {self.gpu}" if self.gpu is not None else ""
        text = (f"it needs {format_bytes(self.need.bytes)}{split} of GPU memory "
                f"({self.need.source}); the largest free memory is "
                f"{format_bytes(self.free_now)} now, {format_bytes(self.largest_free)}{where} with "
                "every evictable model stopped")
        return text + (f" ({self.reason})" if self.reason else "")


class Policy(Protocol):
    """A router: what a start evicts, and where the model goes."""

    name: str

    def excludes(self, target: str, others: Collection[str]) -> set[str]:
        """The models of ``others`` that may not run beside ``target`` by the rules alone
        (memory apart): two operations conflict when one would evict what the other touches."""
        ...

    def plan(self, target: str, view: View) -> Plan | NoFit: ...


def config_placement(need: Need, devices: Sequence[Device]) -> Placement | None:
    """Where the config puts a model (``gpus``: a list, a count of the first GPUs, or every
    GPU), memory unchecked; None when the GPUs are unknown or it uses none."""
    devices = _one_engine(need, devices)
    if not need.uses_gpu or not devices:
        return None
    if need.pinned:
        chosen = need.pinned
    elif need.every or need.count is None:
        chosen = tuple(d.id for d in devices)
    else:
        chosen = tuple(d.id for d in devices[:need.count])
    return Placement(chosen, need.per_device(len(chosen)), devices[0].engine)


def _one_engine(need: Need, devices: Sequence[Device]) -> Sequence[Device]:
    """The GPUs a model the config places may use: its engine's, else the first engine's
    (a model's GPUs are on one machine)."""
    if not devices:
        return devices
    engine = need.engine or devices[0].engine
    return [d for d in devices if d.engine == engine]


class GroupPolicy:
    """llama-swap's groups (the default)."""

    name = "group"

    def __init__(self, rules: GroupLookup) -> None:
        self.rules = rules

    def excludes(self, target: str, others: Collection[str]) -> set[str]:
        return models_to_evict(target, others, self.rules)

    def plan(self, target: str, view: View) -> Plan:
        evict = models_to_evict(target, view.occupied, self.rules)
        group, flags = self.rules.group_of(target)
        why = f"group {group!r} (swap={str(flags.swap).lower()}, " \
              f"exclusive={str(flags.exclusive).lower()})"
        return Plan(frozenset(evict), config_placement(view.need, view.devices), why)


class MatrixPolicy:
    """llama-swap's swap matrix."""

    name = "matrix"

    def __init__(self, program: Any, costs: dict[str, int]) -> None:
        self.program = program
        self.costs = costs

    def excludes(self, target: str, others: Collection[str]) -> set[str]:
        return set(self.program.solve(target, sorted(others), self.costs).evict)

    def plan(self, target: str, view: View) -> Plan:
        decision = self.program.solve(target, list(view.occupied), self.costs)
        if decision.set_name:
            why = (f"matrix set {decision.set_name!r} ({decision.dsl}) cost "
                   f"{decision.total_cost}")
        else:
            why = "matrix: in no set, it runs alone"
        return Plan(frozenset(decision.evict), config_placement(view.need, view.devices), why)


@dataclass(frozen=True)
class _Choice:
    """One way to place the target: on ``devices``, evicting ``evict``."""

    key: tuple[Any, ...]
    devices: tuple[str, ...]
    per_device: int | None
    evict: tuple[Holder, ...]


class FitPolicy:
    """GPU memory: place where the need fits after the cheapest evictions of idle models."""

    name = "fit"

    def __init__(self, rules: GroupLookup) -> None:
        self.rules = rules

    def excludes(self, target: str, others: Collection[str]) -> set[str]:
        return _explicit_group_evictions(target, others, self.rules)

    def plan(self, target: str, view: View) -> Plan | NoFit:
        forced = _explicit_group_evictions(target, view.occupied, self.rules)
        why = [f"group {self.rules.group_of(target)[0]!r} evicts {','.join(sorted(forced))}"
               ] if forced else []
        need = view.need
        if not need.uses_gpu:
            return Plan(frozenset(forced), None, "; ".join(why) or "uses no GPU")
        devices = {d.id: d for d in view.devices}
        capacity = {d.id: d.memory for d in view.devices}
        holders = [h for h in view.holders if h.model_id != target and h.model_id not in forced]
        used = dict.fromkeys(capacity, 0)
        fixed = dict.fromkeys(capacity, 0)  # what persistent models hold: never freed
        for holder in holders:
            for device in holder.placement.devices:
                if device in used:
                    held = _held(holder.placement, capacity[device])
                    used[device] += held
                    if holder.persistent:
                        fixed[device] += held
        free_now = {d: capacity[d] - used[d] for d in capacity}
        candidates, reason = self._device_sets(need, view.devices)
        possible = [s for s in candidates
                    if all(_fits(need.per_device(len(s)), capacity[d] - fixed[d], capacity[d])
                           for d in s)]
        if not possible:
            best = max(capacity, key=lambda d: (capacity[d] - fixed[d], -_order(d, devices)),
                       default=None)
            return NoFit(need, capacity[best] - fixed[best] if best else 0, best,
                         max(free_now.values(), default=0),
                         reason or ("no GPU is large enough" if candidates else ""))
        choices = [self._cheapest(s, need.per_device(len(s)), holders, capacity, free_now,
                                  _order(s[0], devices)) for s in possible]
        choice = min(choices, key=lambda c: c.key)
        evicted = {h.model_id for h in choice.evict}
        on = ",".join(choice.devices)
        need_text = format_bytes(choice.per_device)
        if evicted:
            freed = {d: sum(_held(h.placement, capacity[d]) for h in choice.evict
                            if d in h.placement.devices) for d in choice.devices}
            why.append(f"needs {need_text} on GPU {on} ({self._free_text(choice, free_now)} free)"
                       f": evicting {','.join(sorted(evicted))} frees "
                       f"{format_bytes(sum(freed.values()))}")
        else:
            why.append(f"fits on GPU {on}: needs {need_text}, "
                       f"{self._free_text(choice, free_now)} free")
        placement = Placement(choice.devices, choice.per_device,
                              devices[choice.devices[0]].engine)
        return Plan(frozenset(forced | evicted), placement, "; ".join(why),
                    tuple(sorted(free_now.items(), key=lambda kv: _order(kv[0], devices))))

    @staticmethod
    def _free_text(choice: _Choice, free_now: dict[str, int]) -> str:
        return "+".join(format_bytes(free_now[d]) for d in choice.devices)

    @staticmethod
    def _device_sets(need: Need, devices: Sequence[Device]
                     ) -> tuple[list[tuple[str, ...]], str]:
        """The GPU sets the model may go on, and why there are none."""
        if need.engine:
            devices = [d for d in devices if d.engine == need.engine]
        ids = [d.id for d in devices]
        if not ids:
            return [], "no GPU in the inventory (declare docker.gpus, or check GET /api/hardware)"
        engines = {d.id: d.engine for d in devices}
        if len(set(engines.values())) > 1 and not need.pinned:
            # A model's GPUs are on one machine: the sets of each engine, in order.
            sets: list[tuple[str, ...]] = []
            reasons = []
            for engine in dict.fromkeys(engines.values()):
                found, reason = FitPolicy._device_sets(
                    need, [d for d in devices if d.engine == engine])
                sets += found
                reasons.append(reason)
            return sets, "" if sets else "; ".join(r for r in reasons if r)
        if need.pinned:
            missing = [gpu for gpu in need.pinned if gpu not in ids]
            if missing:
                return [], f"GPU {','.join(missing)} is not in the inventory ({','.join(ids)})"
            return [tuple(need.pinned)], ""
        if need.every:
            return [tuple(ids)], ""
        count = need.count or 1
        if count > len(ids):
            return [], f"it asks for {count} GPUs and the inventory has {len(ids)}"
        return list(itertools.combinations(ids, count)), ""

    def eviction_key(self, subset: tuple[Holder, ...], capacity: dict[str, int]
                     ) -> tuple[Any, ...]:
        """How bad evicting ``subset`` is (lower is better): busy models, then the reloads'
        expected cost, then how many, then how recently used."""
        recency = tuple(sorted((h.last_used for h in subset), reverse=True))
        return (sum(h.busy for h in subset), sum(h.reload_cost(capacity) for h in subset),
                len(subset), recency)

    def _cheapest(self, devices: tuple[str, ...], per_device: int | None,
                  holders: list[Holder], capacity: dict[str, int], free_now: dict[str, int],
                  order: int) -> _Choice:
        """The cheapest evictions that make room on ``devices`` (``eviction_key``); the
        choice's key orders choices across GPU sets."""
        deficit = {d: (capacity[d] if per_device is None else per_device) - free_now[d]
                   for d in devices}
        leftover = sum(max(-v, 0) for v in deficit.values())
        if all(v <= 0 for v in deficit.values()):
            return _Choice((*self.eviction_key((), capacity), leftover, order), devices,
                           per_device, ())
        movable = sorted((h for h in holders if not h.persistent
                          and any(d in devices for d in h.placement.devices)),
                         key=lambda h: (h.busy, h.last_used, h.model_id))

        def frees(subset: Iterable[Holder]) -> bool:
            left = dict(deficit)
            for holder in subset:
                for device in holder.placement.devices:
                    if device in left:
                        left[device] -= _held(holder.placement, capacity[device])
            return all(v <= 0 for v in left.values())

        def key(subset: tuple[Holder, ...]) -> tuple[Any, ...]:
            return self.eviction_key(subset, capacity)

        best: tuple[Holder, ...] | None = None
        best_key: tuple[Any, ...] | None = None
        if len(movable) <= _EXACT_LIMIT:
            enough: list[frozenset[str]] = []  # sets that make room: their supersets cost more
            for size in range(1, len(movable) + 1):
                for subset in itertools.combinations(movable, size):
                    names = frozenset(h.model_id for h in subset)
                    if any(found <= names for found in enough) or not frees(subset):
                        continue
                    enough.append(names)
                    subset_key = key(subset)
                    if best_key is None or subset_key < best_key:
                        best, best_key = subset, subset_key
        else:
            chosen: list[Holder] = []
            for holder in sorted(movable, key=lambda h: key((h,))):
                chosen.append(holder)
                if frees(chosen):
                    break
            for holder in sorted(chosen, key=lambda h: key((h,)), reverse=True):
                if frees([h for h in chosen if h is not holder]):
                    chosen.remove(holder)
            best = tuple(chosen)
        assert best is not None and frees(best), "the no-fit check admitted an impossible set"
        freed = 0
        for holder in best:
            for device in holder.placement.devices:
                if device in deficit:
                    freed += _held(holder.placement, capacity[device])
        return _Choice((*key(best), freed - sum(max(v, 0) for v in deficit.values()), order),
                       devices, per_device, best)


def _held(placement: Placement, capacity: int) -> int:
    return capacity if placement.per_device is None else placement.per_device


def _fits(per_device: int | None, room: int, capacity: int) -> bool:
    """Whether a per-GPU need fits in ``room`` (an unknown need wants the GPU to itself)."""
    return room >= capacity if per_device is None else per_device <= room


def _order(device: str, devices: dict[str, Device]) -> int:
    return list(devices).index(device) if device in devices else len(devices)


def policy_for(rules: Any) -> Policy:
    """The policy ``routing.router.use`` names (``group`` for rules that say nothing)."""
    router = getattr(rules, "router", "group")
    if router == "matrix":
        program = rules.matrix_program
        if program is None:  # a config that failed to compile never loads; be safe anyway
            raise ValueError("the matrix router needs a compiled swap matrix")
        return MatrixPolicy(program, rules.evict_costs())
    if router == "fit":
        return FitPolicy(rules)
    return GroupPolicy(rules)
