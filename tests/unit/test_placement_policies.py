"""The placement policies without an engine: each router's rules, table by table, through the
pure scheduler with synthetic GPU inventories; then random event sequences under ``fit``
checked against "the needs placed on a GPU never exceed its memory"."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from llamaswap_docker.config import load_config_text
from llamaswap_docker.errors import InsufficientGpuMemory, ModelStartFailed
from llamaswap_docker.lifecycle import ModelState, Scheduler
from llamaswap_docker.lifecycle.need import needs_of
from llamaswap_docker.lifecycle.placement import (
    Device, FitPolicy, Holder, Need, NoFit, Placement, Plan, View, config_placement,
)
from llamaswap_docker.lifecycle.scheduler import (
    Admit, Decision, Fail, Placed, Sleep, Start, Stop, Wake,
)
from llamaswap_docker.runtime import ContainerRef

GiB = 1 << 30


def config_of(models: dict[str, Any], gpus: list[int] | None = None, router: str = "fit",
              groups: dict[str, Any] | None = None, **top: Any) -> Any:
    document: dict[str, Any] = {
        "models": {m: {"image": "x", **spec} for m, spec in models.items()}, **top}
    routing = document.setdefault("routing", {})
    routing["router"] = {"use": router, **({"settings": {"groups": groups}} if groups else {})}
    if gpus is not None:
        document["docker"] = {"gpus": [{"id": i, "memory": f"{gib}GiB"}
                                       for i, gib in enumerate(gpus)]}
    return load_config_text(yaml.safe_dump(document))


def ref(model_id: str, n: int = 0) -> ContainerRef:
    return ContainerRef(id=f"{model_id}-{n}", name=f"c-{model_id}-{n}", model_id=model_id,
                        instance="t", spec_hash="h", status="running",
                        base_url=f"http://{model_id}:8080")


@dataclass
class Run:
    """Carries out the scheduler's decisions as the orchestrator does, minus the engine, and
    keeps where every container is (placed by a Start, gone at its stop)."""

    config: Any
    scheduler: Scheduler = field(init=False)
    now: float = 0.0
    leases: list[str] = field(default_factory=list)
    admitted: dict[int, str] = field(default_factory=dict)
    failed: dict[int, Exception] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)
    stopping: set[str] = field(default_factory=set)
    sleeping: set[str] = field(default_factory=set)
    waking: set[str] = field(default_factory=set)
    log: list[Decision] = field(default_factory=list)
    #: Containers on GPUs: model → its placement (a Start creates one, a stop ends it).
    on_gpus: dict[str, Placement] = field(default_factory=dict)
    starts: int = 0

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.config.models, self.config)
        self.devices = tuple(Device(g.id, g.memory) for g in self.config.docker.gpus or ())
        self.apply(self.scheduler.set_inventory(self.devices, needs_of(self.config, self.devices)))

    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.log.append(d)
            if isinstance(d, Admit):
                self.admitted[d.waiter] = d.model_id
                self.leases.append(d.model_id)
            elif isinstance(d, Fail):
                self.failed[d.waiter] = d.error
            elif isinstance(d, Start):
                self.starting.add(d.model_id)
                self.starts += 1
                if d.placement is not None:
                    self.on_gpus[d.model_id] = d.placement
            elif isinstance(d, Stop):
                self.sleeping.discard(d.model_id)
                self.stopping.add(d.model_id)
            elif isinstance(d, Sleep):
                self.sleeping.add(d.model_id)
            elif isinstance(d, Wake):
                self.waking.add(d.model_id)
        self.check_memory()

    def check_memory(self) -> None:
        """Under fit, the needs placed on a GPU never exceed its memory."""
        if self.config.router != "fit":
            return
        for device in self.devices:
            held = sum(device.memory if p.per_device is None else p.per_device
                       for p in self.on_gpus.values() if device.id in p.devices)
            assert held <= device.memory, (device, self.on_gpus)

    def request(self, model_id: str) -> int:
        if self.scheduler.admit_now(model_id) is not None:
            self.leases.append(model_id)
            return 0
        waiter, decisions = self.scheduler.enqueue(model_id)
        self.apply(decisions)
        return waiter

    def release(self, model_id: str) -> None:
        self.leases.remove(model_id)
        self.now += 1
        self.apply(self.scheduler.release(model_id, self.now))

    def ready(self, model_id: str) -> None:
        self.starting.discard(model_id)
        self.now += 1
        self.apply(self.scheduler.ready(model_id, ref(model_id, self.starts), self.now))

    def start_fails(self, model_id: str) -> None:
        self.starting.discard(model_id)
        self.on_gpus.pop(model_id, None)
        self.apply(self.scheduler.start_failed(model_id, ModelStartFailed(f"{model_id} broke")))

    def stopped(self, model_id: str) -> None:
        self.stopping.discard(model_id)
        self.on_gpus.pop(model_id, None)
        self.apply(self.scheduler.stopped(model_id))

    def slept(self, model_id: str) -> None:
        self.sleeping.discard(model_id)
        self.on_gpus.pop(model_id, None)  # asleep, it holds no GPU memory
        self.apply(self.scheduler.slept(model_id, self.now))

    def woke(self, model_id: str) -> None:
        self.waking.discard(model_id)
        container = self.scheduler.models[model_id].container
        assert container is not None
        self.on_gpus[model_id] = self.scheduler.placed[model_id]
        self.apply(self.scheduler.ready(model_id, container, self.now))

    def up(self, *model_ids: str) -> None:
        """Bring models up one after the other and leave them idle."""
        for model_id in model_ids:
            self.request(model_id)
            for m in sorted(self.stopping):
                self.stopped(m)
            self.ready(model_id)
            self.release(model_id)

    def gpus(self, model_id: str) -> tuple[str, ...] | None:
        placement = self.on_gpus.get(model_id)
        return placement.devices if placement else None


def starts(run: Run) -> list[str]:
    return [d.model_id for d in run.log if isinstance(d, Start)]


def stops(run: Run) -> list[str]:
    return [d.model_id for d in run.log if isinstance(d, Stop)]


def placed(run: Run, model_id: str) -> Placed:
    return [d for d in run.log if isinstance(d, Placed) and d.model_id == model_id][-1]


# -- fit: the policy on synthetic inventories ---------------------------------------------------

def view(devices: dict[str, int], holders: list[tuple[Any, ...]], need: Need) -> View:
    """``holders``: (model, gpus "0,1", GiB per GPU, last used, busy, persistent[, recent
    requests])."""
    return View(
        occupied=tuple(h[0] for h in holders),
        need=need,
        devices=tuple(Device(d, gib * GiB) for d, gib in devices.items()),
        holders=tuple(Holder(h[0], Placement(tuple(h[1].split(",")), h[2] * GiB), h[4], h[5],
                             h[3], *h[6:]) for h in holders))


class NoGroups:
    def group_of(self, model_id: str) -> tuple[str, Any]:
        return "(default)", type("F", (), {"swap": True, "exclusive": True, "persistent": False})


FIT = FitPolicy(NoGroups())


@pytest.mark.parametrize(("name", "devices", "holders", "need", "gpus", "evict"), [
    ("empty GPUs: the first", {"0": 24, "1": 24}, [], Need(10 * GiB, "declared"), ("0",), set()),
    ("the cheapest reload: a model asked for less", {"0": 24},
     [("a", "0", 12, 5, False, False, 1), ("b", "0", 12, 1, False, False, 9)],
     Need(12 * GiB, "declared"), ("0",), {"a"}),
    ("two small ones rarely asked for rather than a large one asked for often", {"0": 24},
     [("big", "0", 12, 1, False, False, 50), ("s1", "0", 6, 2, False, False, 3),
      ("s2", "0", 6, 3, False, False, 2)], Need(12 * GiB, "declared"), ("0",), {"s1", "s2"}),
    ("a model nobody asked for lately goes first", {"0": 24},
     [("old", "0", 20, 9, False, False, 0), ("hot", "0", 4, 1, False, False, 40)],
     Need(20 * GiB, "declared"), ("0",), {"old"}),
    ("best fit: the GPU left with least free", {"0": 24, "1": 24},
     [("a", "0", 12, 1, False, False)], Need(10 * GiB, "declared"), ("0",), set()),
    ("no room on one GPU: the other", {"0": 24, "1": 24},
     [("a", "0", 20, 1, False, False)], Need(10 * GiB, "declared"), ("1",), set()),
    ("fewest evictions", {"0": 24},
     [("a", "0", 12, 1, False, False), ("b", "0", 6, 0, False, False),
      ("c", "0", 6, 0.5, False, False)], Need(12 * GiB, "declared"), ("0",), {"a"}),
    ("ties: least recently used first", {"0": 24},
     [("a", "0", 10, 5, False, False), ("b", "0", 10, 1, False, False)],
     Need(14 * GiB, "declared"), ("0",), {"b"}),
    ("ties across GPUs: the least recently used", {"0": 24, "1": 24},
     [("a", "0", 20, 5, False, False), ("b", "1", 20, 2, False, False)],
     Need(10 * GiB, "declared"), ("1",), {"b"}),
    ("two idle rather than one busy", {"0": 24},
     [("a", "0", 12, 1, True, False), ("b", "0", 6, 2, False, False),
      ("c", "0", 6, 3, False, False)], Need(12 * GiB, "declared"), ("0",), {"b", "c"}),
    ("busy when nothing idle makes room", {"0": 24},
     [("a", "0", 20, 1, True, False)], Need(10 * GiB, "declared"), ("0",), {"a"}),
    ("persistent models stay", {"0": 24, "1": 24},
     [("p", "0", 4, 0, False, True), ("a", "1", 20, 9, False, False)],
     Need(22 * GiB, "declared"), ("1",), {"a"}),
    ("a model on two GPUs frees both", {"0": 24, "1": 24},
     [("wide", "0,1", 16, 1, False, False), ("a", "0", 8, 0.5, False, False)],
     Need(40 * GiB, "declared", count=2), ("0", "1"), {"wide", "a"}),
    ("a count splits the need", {"0": 24, "1": 24, "2": 24},
     [("a", "0", 20, 1, False, False)], Need(40 * GiB, "declared", count=2), ("1", "2"), set()),
    ("pinned GPUs", {"0": 24, "1": 24}, [("a", "1", 20, 1, False, False)],
     Need(10 * GiB, "declared", pinned=("1",)), ("1",), {"a"}),
    ("every GPU", {"0": 24, "1": 24}, [], Need(30 * GiB, "declared", every=True), ("0", "1"),
     set()),
    ("an unknown need takes a GPU whole", {"0": 24, "1": 24},
     [("a", "0", 1, 1, False, False)], Need(None, "unknown"), ("1",), set()),
    ("an unknown need evicts what is there", {"0": 24},
     [("a", "0", 1, 1, False, False)], Need(None, "unknown"), ("0",), {"a"}),
])
def test_fit_places(name: str, devices: dict[str, int], holders: list[Any], need: Need,
                    gpus: tuple[str, ...], evict: set[str]) -> None:
    plan = FIT.plan("target", view(devices, holders, need))
    assert isinstance(plan, Plan), plan
    assert plan.placement is not None and plan.placement.devices == gpus, name
    assert plan.evict == evict, name
    assert plan.placement.per_device == need.per_device(len(gpus))


@pytest.mark.parametrize(("name", "devices", "holders", "need", "words"), [
    ("larger than any GPU", {"0": 24, "1": 24}, [], Need(30 * GiB, "declared"),
     ["30.0 GiB", "24.0 GiB now", "24.0 GiB on GPU 0"]),
    ("persistent models fill it", {"0": 24}, [("p", "0", 20, 0, False, True)],
     Need(10 * GiB, "estimated"), ["10.0 GiB", "(estimated)", "4.0 GiB now", "4.0 GiB on GPU 0"]),
    ("no GPUs", {}, [], Need(1 * GiB, "declared"), ["no GPU in the inventory"]),
    ("more GPUs than there are", {"0": 24}, [], Need(1 * GiB, "declared", count=2),
     ["asks for 2 GPUs"]),
    ("a pinned GPU that is not there", {"0": 24}, [], Need(1 * GiB, "declared", pinned=("3",)),
     ["GPU 3 is not in the inventory"]),
])
def test_fit_refuses(name: str, devices: dict[str, int], holders: list[Any], need: Need,
                     words: list[str]) -> None:
    result = FIT.plan("target", view(devices, holders, need))
    assert isinstance(result, NoFit), name
    for word in words:
        assert word in result.message, (word, result.message)


def test_a_model_that_uses_no_gpu_is_left_alone() -> None:
    plan = FIT.plan("target", view({"0": 24}, [("a", "0", 24, 1, False, False)], Need()))
    assert plan == Plan(frozenset(), None, "uses no GPU")


def test_config_placement_reports_the_configs_gpus() -> None:
    devices = (Device("0", 24 * GiB), Device("1", 24 * GiB))
    assert config_placement(Need(GiB, "declared", pinned=("1",)), devices).devices == ("1",)
    assert config_placement(Need(GiB, "declared", count=1), devices).devices == ("0",)
    assert config_placement(Need(GiB, "declared"), devices).devices == ("0", "1")
    assert config_placement(Need(), devices) is None
    assert config_placement(Need(GiB, "declared"), ()) is None


# -- fit: through the scheduler -----------------------------------------------------------------

TWO_GPUS = [24, 24]


def test_fit_runs_ungrouped_models_side_by_side_while_memory_allows() -> None:
    run = Run(config_of({"a": {"vram": "10GiB"}, "b": {"vram": "10GiB"}, "c": {"vram": "20GiB"}},
                        TWO_GPUS))
    run.up("a", "b")
    assert stops(run) == [] and run.gpus("a") == run.gpus("b") == ("0",)
    run.up("c")
    assert stops(run) == [] and run.gpus("c") == ("1",)


def test_fit_evicts_the_least_recently_used_when_memory_runs_out() -> None:
    run = Run(config_of({"a": {"vram": "20GiB"}, "b": {"vram": "20GiB"}, "c": {"vram": "20GiB"}},
                        TWO_GPUS))
    run.up("a", "b")
    run.request("a")
    run.release("a")  # a used after b
    run.log.clear()
    run.request("c")
    assert stops(run) == ["b"] and starts(run) == []  # b stops first
    run.stopped("b")
    assert starts(run) == ["c"] and run.gpus("c") == ("1",)
    assert "evicting b" in placed(run, "c").why


def test_fit_waits_for_a_busy_model_it_must_evict() -> None:
    run = Run(config_of({"a": {"vram": "20GiB"}, "b": {"vram": "20GiB"}}, [24]))
    run.up("a")
    run.request("a")  # in flight
    run.log.clear()
    waiter = run.request("b")
    assert stops(run) == [] and run.scheduler.models["a"].draining
    run.release("a")
    assert stops(run) == ["a"]
    run.stopped("a")
    run.ready("b")
    assert run.admitted[waiter] == "b"


def test_fit_prefers_evicting_idle_models_to_a_busy_one() -> None:
    run = Run(config_of({"busy": {"vram": "12GiB"}, "i1": {"vram": "6GiB"},
                         "i2": {"vram": "6GiB"}, "new": {"vram": "12GiB"}}, [24]))
    run.up("busy", "i1", "i2")
    run.request("busy")
    run.log.clear()
    run.request("new")
    assert sorted(stops(run)) == ["i1", "i2"]


def test_a_model_that_cannot_fit_fails_at_once_in_503() -> None:
    run = Run(config_of({"a": {"vram": "20GiB"}, "huge": {"vram": "30GiB"}}, TWO_GPUS))
    run.up("a")
    run.log.clear()
    waiter = run.request("huge")
    error = run.failed[waiter]
    assert isinstance(error, InsufficientGpuMemory) and error.status_code == 503
    assert "30.0 GiB" in error.message and "24.0 GiB" in error.message
    assert stops(run) == [] and starts(run) == []  # nothing evicted for nothing
    assert not placed(run, "huge").fits


def test_persistent_models_are_never_evicted_for_memory() -> None:
    run = Run(config_of({"p": {"vram": "20GiB"}, "a": {"vram": "10GiB"}}, [24],
                        groups={"keep": {"persistent": True, "swap": False, "exclusive": False,
                                         "members": ["p"]}}))
    run.up("p")
    waiter = run.request("a")
    assert isinstance(run.failed[waiter], InsufficientGpuMemory) and stops(run) == []


def test_fit_honours_the_groups_it_is_given() -> None:
    run = Run(config_of({"a": {"vram": "2GiB"}, "b": {"vram": "2GiB"}, "c": {"vram": "2GiB"}},
                        TWO_GPUS, groups={"pair": {"swap": True, "exclusive": False,
                                                   "members": ["a", "b"]}}))
    run.up("a", "c")
    run.log.clear()
    run.request("b")  # a's swap group: a goes though memory is plenty; c (no group) stays
    assert stops(run) == ["a"]


def test_starts_in_flight_reserve_their_memory() -> None:
    run = Run(config_of({"a": {"vram": "20GiB"}, "b": {"vram": "20GiB"}, "c": {"vram": "20GiB"}},
                        TWO_GPUS))
    run.request("a")
    run.request("b")
    assert starts(run) == ["a", "b"] and {run.gpus("a"), run.gpus("b")} == {("0",), ("1",)}
    run.request("c")  # both GPUs are being filled: c waits for a start to end, evicts then
    assert starts(run) == ["a", "b"] and stops(run) == []
    run.ready("a")
    run.ready("b")
    run.release("a")
    run.release("b")
    assert stops(run) == ["a"]  # the least recently used of the two
    run.stopped("a")
    assert starts(run)[-1] == "c" and run.gpus("c") == ("0",)


def test_gpu_counts_and_lists_choose_the_gpus() -> None:
    run = Run(config_of({"pair": {"vram": "44GiB", "platform": "cuda", "gpus": 2},
                         "one": {"vram": "4GiB", "platform": "cuda", "gpus": [1]}}, TWO_GPUS))
    run.up("one")
    assert run.gpus("one") == ("1",)
    run.up("pair")
    assert stops(run) == ["one"] and run.gpus("pair") == ("0", "1")
    assert run.on_gpus["pair"].per_device == 22 * GiB


def test_a_gpu_model_of_unknown_need_takes_its_gpu_whole() -> None:
    run = Run(config_of({"custom": {"platform": "cuda"}, "a": {"vram": "1GiB"},
                         "b": {"vram": "1GiB"}}, TWO_GPUS))
    assert run.scheduler.needs["custom"].source == "unknown"
    run.up("a", "custom")
    assert run.gpus("custom") == ("1",) and run.on_gpus["custom"].per_device is None
    run.up("b")
    assert run.gpus("b") == ("0",) and stops(run) == []


def test_an_adopted_container_is_counted_where_it_was_placed() -> None:
    run = Run(config_of({"a": {"vram": "20GiB"}, "b": {"vram": "20GiB"}}, TWO_GPUS))
    run.scheduler.adopt("a", ref("a"), 0.0, placement=Placement(("1",), 20 * GiB))
    run.on_gpus["a"] = Placement(("1",), 20 * GiB)
    run.request("b")
    assert run.gpus("b") == ("0",) and stops(run) == []


def test_an_asleep_model_wakes_on_the_gpus_it_sleeps_on() -> None:
    run = Run(config_of({"v": {"vram": "20GiB", "sleepMode": 1}, "w": {"vram": "20GiB"},
                         "x": {"vram": "20GiB"}}, TWO_GPUS))
    run.up("v", "w")  # v on 0, w on 1
    assert (run.gpus("v"), run.gpus("w")) == (("0",), ("1",))
    run.request("x")  # v is least recently used: it sleeps
    assert [d.model_id for d in run.log if isinstance(d, Sleep)] == ["v"]
    run.slept("v")
    run.ready("x")
    run.release("x")
    assert run.gpus("x") == ("0",)
    run.log.clear()
    run.request("v")  # GPU 1 has w, but v's container is on GPU 0: x must go
    assert stops(run) == ["x"]
    run.stopped("x")
    assert [d for d in run.log if isinstance(d, Wake)] and run.scheduler.placed["v"].devices == ("0",)


# -- group and matrix through the scheduler -----------------------------------------------------

def test_the_group_router_reports_the_configs_gpus_and_checks_no_memory() -> None:
    run = Run(config_of({"a": {"vram": "20GiB", "platform": "cuda", "gpus": [1]},
                         "b": {"vram": "20GiB", "platform": "cuda", "gpus": [1]}},
                        TWO_GPUS, router="group",
                        groups={"g": {"swap": False, "exclusive": False, "members": ["a", "b"]}}))
    run.request("a")
    run.request("b")
    assert starts(run) == ["a", "b"]  # memory is not the group router's business
    assert [d.placement.devices for d in run.log if isinstance(d, Start)] == [("1",), ("1",)]
    assert placed(run, "a").policy == "group"


def matrix_run(sets: dict[str, str], models: str = "a b") -> Run:
    document = {"models": {m: {"image": "x"} for m in models.split()},
                "routing": {"router": {"use": "matrix", "settings": {"matrix": {"sets": sets}}}}}
    return Run(load_config_text(yaml.safe_dump(document)))


def test_matrix_evicts_what_shares_no_set_with_the_target() -> None:
    run = matrix_run({"s_a": "a", "s_b": "b"})
    run.up("a")
    run.log.clear()
    run.request("b")
    assert stops(run) == ["a"]
    run.stopped("a")
    assert starts(run) == ["b"] and "matrix set 's_b'" in placed(run, "b").why


def test_matrix_keeps_what_shares_a_set_with_the_target() -> None:
    run = matrix_run({"s_ab": "a & b"})
    run.up("a")
    run.log.clear()
    run.request("b")
    assert stops(run) == [] and starts(run) == ["b"]


def test_matrix_loads_models_of_one_set_side_by_side() -> None:
    run = matrix_run({"s_ab": "a & b"})
    run.request("a")
    run.request("b")
    assert starts(run) == ["a", "b"]  # the second does not wait for the first


def test_matrix_queues_a_model_that_cannot_join_one_starting() -> None:
    run = matrix_run({"s_a": "a", "s_b": "b"})
    first = run.request("a")
    second = run.request("b")
    assert starts(run) == ["a"]  # b waits: it would evict a, which is starting
    run.ready("a")
    assert run.admitted[first] == "a" and stops(run) == []  # a serves its request first
    run.release("a")
    assert stops(run) == ["a"]
    run.stopped("a")
    run.ready("b")
    assert run.admitted[second] == "b"


def test_matrix_costs_choose_what_stays() -> None:
    document = {"models": {m: {"image": "x"} for m in "a b c".split()},
                "matrix": {"evict_costs": {"b": 10}, "sets": {"a_with_c": "a & c",
                                                              "a_with_b": "a & b"}},
                "routing": {"router": {}}}
    del document["routing"]
    run = Run(load_config_text(yaml.safe_dump(document)))
    run.up("b")
    run.scheduler.adopt("c", ref("c"), run.now)  # b and c both run (say, adopted)
    run.log.clear()
    run.request("a")
    assert stops(run) == ["c"]


# -- queue priority -------------------------------------------------------------------------------

def test_higher_priority_starts_are_taken_first() -> None:
    document = {"models": {m: {"image": "x"} for m in "a b c".split()},
                "routing": {"scheduler": {"settings": {"fifo": {"priority": {"c": 10}}}}}}
    run = Run(load_config_text(yaml.safe_dump(document)))
    run.request("a")  # starting: starts that would evict it queue behind it
    run.request("b")
    run.request("c")  # later, but higher priority: c's start goes before b's
    run.ready("a")
    run.release("a")
    run.stopped("a")
    assert starts(run) == ["a", "c"]
    run.ready("c")
    run.release("c")
    run.stopped("c")
    assert starts(run) == ["a", "c", "b"]


def test_priority_names_a_model_or_an_alias() -> None:
    config = load_config_text("""
models: {a: {image: x, aliases: [first]}, b: {image: x}}
routing: {scheduler: {settings: {fifo: {priority: {first: 3}}}}}
""")
    assert (config.priority("a"), config.priority("b")) == (3, 0)


# -- random sequences: memory is never overcommitted --------------------------------------------

RANDOM_MODELS = {
    "m4": {"vram": "4GiB"}, "m6": {"vram": "6GiB"}, "m8": {"vram": "8GiB", "sleepMode": 1},
    "m10": {"vram": "10GiB"}, "m12": {"vram": "12GiB"}, "m16": {"vram": "16GiB"},
    "m20": {"vram": "20GiB"}, "wide": {"vram": "30GiB", "platform": "cuda", "gpus": 2},
    "pin": {"vram": "8GiB", "platform": "cuda", "gpus": [1]},
    "whole": {"platform": "cuda"}, "cpu": {},
    "keep": {"vram": "2GiB"}, "huge": {"vram": "40GiB"},
}
RANDOM_GROUPS = {"kept": {"persistent": True, "swap": False, "exclusive": False,
                          "members": ["keep"]},
                 "pair": {"swap": True, "exclusive": False, "members": ["m4", "m6"]}}


RANDOM_CONFIG = config_of(RANDOM_MODELS, TWO_GPUS, groups=RANDOM_GROUPS)


def run_random_fit(seed: int, steps: int = 80) -> None:
    rng = random.Random(seed)
    run = Run(RANDOM_CONFIG)
    names = list(RANDOM_MODELS)
    waiters: list[int] = []
    gone: set[int] = set()
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.4:
            waiter = run.request(rng.choice(names))
            if waiter:
                waiters.append(waiter)
        elif roll < 0.55 and run.leases:
            run.release(rng.choice(run.leases))
        elif roll < 0.7 and run.starting:
            model_id = rng.choice(sorted(run.starting))
            (run.ready if rng.random() < 0.9 else run.start_fails)(model_id)
        elif roll < 0.85 and (run.stopping or run.sleeping or run.waking):
            kind, model_id = rng.choice(sorted(
                [("stop", m) for m in run.stopping] + [("sleep", m) for m in run.sleeping]
                + [("wake", m) for m in run.waking]))
            {"stop": run.stopped, "sleep": run.slept, "wake": run.woke}[kind](model_id)
        elif roll < 0.9:
            pending = [w for w in waiters if w in run.scheduler.waiters]
            if pending:
                gone.add(leaving := rng.choice(pending))
                run.apply(run.scheduler.leave(leaving))
        elif roll < 0.95:
            op, decisions = run.scheduler.unload(rng.sample(names, 2), "unload requested")
            run.apply(decisions)
        else:
            run.now += 5
            run.apply(run.scheduler.tick(run.now))
    for _ in range(300):
        if not (run.starting or run.stopping or run.sleeping or run.waking or run.leases
                or run.scheduler.waiters or run.scheduler.running or run.scheduler.pending):
            break
        for model_id in sorted(run.stopping):
            run.stopped(model_id)
        for model_id in sorted(run.sleeping):
            run.slept(model_id)
        for model_id in sorted(run.waking):
            run.woke(model_id)
        for model_id in sorted(run.starting):
            run.ready(model_id)
        while run.leases:
            run.release(run.leases[0])
    assert not run.scheduler.waiters and not run.scheduler.running and not run.scheduler.pending
    left = {w for w in waiters if w not in run.admitted and w not in run.failed}
    assert left <= gone, left - gone
    for waiter, error in run.failed.items():  # only what can never fit fails
        assert isinstance(error, (InsufficientGpuMemory, ModelStartFailed)), error
        if isinstance(error, InsufficientGpuMemory):
            assert "'huge'" in error.message
    for model_id, runtime in run.scheduler.models.items():
        if runtime.state is ModelState.READY:
            assert model_id in run.on_gpus or not run.scheduler.needs[model_id].uses_gpu


FIT_SEQUENCES = 150


def test_random_sequences_never_overcommit_a_gpu() -> None:
    for seed in range(FIT_SEQUENCES):
        try:
            run_random_fit(seed)
        except AssertionError as exc:
            raise AssertionError(f"sequence seed={seed}: {exc}") from exc
