"""The scheduler without an engine: table-driven rules, then random event sequences checked
against the invariants after every step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.errors import ModelNotFound, ModelStartFailed
from llamaswap_docker.lifecycle import ModelState, Scheduler, models_to_evict
from llamaswap_docker.lifecycle.scheduler import (
    Admit, Cut, Decision, Fail, Finished, Remove, Sleep, Start, Stop, Wake,
)
from llamaswap_docker.runtime import ContainerRef

CONFIG = load_config_text("""
models:
  a: {image: x, ttl: 10}
  b: {image: x}
  solo: {image: x}
  p1: {image: x}
  p2: {image: x}
  s1: {image: x}
  s2: {image: x}
  e1: {image: x}
  slow: {image: x}
  quick: {image: x}
  v1: {image: x, sleepMode: 1}
  v2: {image: x, sleepMode: 2, sleepTTL: 30}
groups:
  persistent: {persistent: true, swap: false, exclusive: false, members: [p1, p2]}
  side_by_side: {swap: false, exclusive: false, members: [s1, s2]}
  exclusive_one: {swap: true, exclusive: true, members: [e1]}
  slow_group: {swap: true, exclusive: false, members: [slow]}
  quick_group: {swap: true, exclusive: false, members: [quick]}
  sleepy: {swap: true, exclusive: false, members: [v1, v2]}
""")


GROUP = {m: CONFIG.group_of(m) for m in CONFIG.models}


class Rules:
    """The config's group rules, looked up once (the checks below ask thousands of times)."""

    def group_of(self, model_id: str):  # type: ignore[no-untyped-def]
        return GROUP[model_id]


RULES = Rules()


def ref(model_id: str, n: int = 0) -> ContainerRef:
    return ContainerRef(id=f"{model_id}-{n}", name=f"c-{model_id}-{n}", model_id=model_id,
                        instance="t", spec_hash="h", status="running",
                        base_url=f"http://{model_id}:8080")


@dataclass
class World:
    """Carries out the scheduler's decisions the way the orchestrator does, minus the engine."""

    scheduler: Scheduler = field(default_factory=lambda: Scheduler(CONFIG.models, CONFIG))
    now: float = 0.0
    leases: list[str] = field(default_factory=list)  # model id per lease held
    admitted: dict[int, str] = field(default_factory=dict)
    failed: dict[int, Exception] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)
    stopping: set[str] = field(default_factory=set)
    sleeping: set[str] = field(default_factory=set)  # asked to sleep, not answered yet
    waking: set[str] = field(default_factory=set)
    finished: dict[int, str | None] = field(default_factory=dict)
    log: list[Decision] = field(default_factory=list)
    unload_asked: set[str] = field(default_factory=set)
    starts: int = 0

    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.log.append(d)
            self.check_decision(d)
            if isinstance(d, Admit):
                self.admitted[d.waiter] = d.model_id
                self.leases.append(d.model_id)
            elif isinstance(d, Fail):
                self.failed[d.waiter] = d.error
            elif isinstance(d, Start):
                self.starting.add(d.model_id)
                self.starts += 1
            elif isinstance(d, Stop):
                self.sleeping.discard(d.model_id)
                self.stopping.add(d.model_id)
            elif isinstance(d, Sleep):
                self.sleeping.add(d.model_id)
            elif isinstance(d, Wake):
                self.waking.add(d.model_id)
            elif isinstance(d, Cut):  # the cut requests end and give their leases back
                for model_id in d.model_ids:
                    while model_id in self.leases:
                        self.release(model_id)
            elif isinstance(d, Finished):
                self.finished[d.operation] = d.error

    def check_decision(self, d: Decision) -> None:
        s = self.scheduler
        if isinstance(d, Sleep):
            assert s.models[d.model_id].in_flight == 0, d
            assert models_to_evict(d.evicted_for, [d.model_id], RULES), d
        if isinstance(d, Wake):
            occupied = [m for m, r in s.models.items() if m != d.model_id
                        and ((r.container is not None and r.state is not ModelState.ASLEEP)
                             or m in self.starting)]
            assert not models_to_evict(d.model_id, occupied, RULES), (d, occupied)
        if isinstance(d, Stop):
            # No in-flight request is cut except by force (a Cut came first and released it).
            assert s.models[d.model_id].in_flight == 0, d
            if d.evicted_for is not None and d.evicted_for != d.model_id:
                assert models_to_evict(d.evicted_for, [d.model_id], RULES), d
            elif d.evicted_for is None:
                assert d.model_id in self.unload_asked or d.reason.endswith(("(ttl)", "(sleepTTL)")), d
        if isinstance(d, Start):  # (a model a reload removed is under no rule any more)
            occupied = [m for m, r in s.models.items() if m != d.model_id
                        and m not in s.retired
                        and ((r.container is not None and r.state is not ModelState.ASLEEP)
                             or m in self.starting)]
            assert not models_to_evict(d.model_id, occupied, RULES), (d, occupied)
        if isinstance(d, Admit):
            assert s.models[d.model_id].state is ModelState.READY

    # events
    def request(self, model_id: str) -> int:
        container = self.scheduler.admit_now(model_id)
        if container is not None:
            self.leases.append(model_id)
            return 0
        waiter, decisions = self.scheduler.enqueue(model_id)
        self.apply(decisions)
        return waiter

    def release(self, model_id: str) -> None:
        self.leases.remove(model_id)
        self.apply(self.scheduler.release(model_id, self.now))

    def ready(self, model_id: str) -> None:
        self.starting.discard(model_id)
        self.apply(self.scheduler.ready(model_id, ref(model_id, self.starts), self.now))

    def start_fails(self, model_id: str) -> None:
        self.starting.discard(model_id)
        self.apply(self.scheduler.start_failed(model_id, ModelStartFailed(f"{model_id} broke")))

    def slept(self, model_id: str) -> None:
        self.sleeping.discard(model_id)
        self.apply(self.scheduler.slept(model_id, self.now))

    def woke(self, model_id: str) -> None:
        self.waking.discard(model_id)
        container = self.scheduler.models[model_id].container
        assert container is not None, "a model wakes in the container it slept in"
        self.apply(self.scheduler.ready(model_id, container, self.now))

    def wake_fails(self, model_id: str) -> None:
        self.waking.discard(model_id)
        self.apply(self.scheduler.wake_failed(model_id, "500 from /wake_up"))

    def stopped(self, model_id: str) -> None:
        self.stopping.discard(model_id)
        self.apply(self.scheduler.stopped(model_id))

    def unload(self, *model_ids: str, force: bool = False) -> int:
        self.unload_asked.update(model_ids)
        op, decisions = self.scheduler.unload(model_ids, "unload requested", force=force)
        self.apply(decisions)
        return op

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.scheduler.tick(self.now))

    def up(self, model_id: str) -> None:
        """Bring a model up and leave it idle."""
        self.request(model_id)
        for m in list(self.stopping):
            self.stopped(m)
        self.ready(model_id)
        self.release(model_id)

    def check_invariants(self) -> None:
        s = self.scheduler
        occupied = [m for m, r in s.models.items()
                    if (r.container is not None and r.state is not ModelState.ASLEEP)
                    or m in self.starting]
        for m in occupied:  # never two running members of a swap group
            group, flags = GROUP[m]
            if flags.swap:
                assert [o for o in occupied if GROUP[o][0] == group] == [m], occupied
        for model_id, runtime in s.models.items():
            assert runtime.in_flight == self.leases.count(model_id)


def starts(world: World) -> list[str]:
    return [d.model_id for d in world.log if isinstance(d, Start)]


def stops(world: World) -> list[str]:
    return [d.model_id for d in world.log if isinstance(d, Stop)]


# -- the rules, one by one -------------------------------------------------------------------

@pytest.mark.parametrize(("target", "loaded", "evicted"), [
    ("a", ["b", "solo"], {"b", "solo"}),  # ungrouped models share a swap + exclusive group
    ("a", ["p1", "s1", "b"], {"s1", "b"}),  # ...which spares persistent groups
    ("s2", ["s1"], set()),  # swap: false keeps members together
    ("s1", ["a", "p1"], set()),  # a non-exclusive group leaves other groups running
    ("e1", ["a", "s1", "s2", "p1", "p2"], {"a", "s1", "s2"}),
    ("a", ["a"], set()),  # never the target itself
])
def test_models_to_evict_follows_llama_swap_groups(target: str, loaded: list[str],
                                                   evicted: set[str]) -> None:
    assert models_to_evict(target, loaded, CONFIG) == evicted


def test_concurrent_cold_requests_start_the_model_once_and_are_admitted_together() -> None:
    w = World()
    first, second = w.request("a"), w.request("a")
    assert starts(w) == ["a"] and not w.admitted
    w.ready("a")
    assert w.admitted == {first: "a", second: "a"}


def test_a_ready_model_admits_at_once() -> None:
    w = World()
    w.up("a")
    assert w.request("a") == 0 and w.leases == ["a"]


def test_swap_waits_for_the_evicted_models_in_flight_requests() -> None:
    w = World()
    w.up("a")
    w.request("a")
    w.request("b")
    assert stops(w) == [] and w.scheduler.models["a"].draining
    w.release("a")
    assert stops(w) == ["a"] and starts(w) == ["a"]
    w.stopped("a")
    assert starts(w) == ["a", "b"]


def test_abab_is_served_aabb() -> None:
    w = World()
    w.up("a")
    w.request("a")                 # A in flight
    b1 = w.request("b")            # B: a swap pending, A drains
    a2 = w.request("a")            # A again: queued behind the swap (A admits nothing new)
    b2 = w.request("b")
    assert a2 not in w.admitted
    w.release("a")
    w.stopped("a")
    w.ready("b")
    assert {b1, b2} <= set(w.admitted) and a2 not in w.admitted
    w.release("b")
    assert a2 not in w.admitted and stops(w) == ["a"]  # b still has b2 in flight
    w.release("b")
    w.stopped("b")
    w.ready("a")
    assert w.admitted[a2] == "a"


def test_a_swap_nobody_waits_for_gives_way_to_one_somebody_waits_for() -> None:
    w = World()
    w.up("a")
    w.request("a")
    b = w.request("b")
    again = w.request("a")  # waits behind the swap to b
    assert again not in w.admitted
    w.apply(w.scheduler.leave(b))  # the client for b left: the swap is abandoned
    assert stops(w) == [] and w.admitted[again] == "a" and w.leases == ["a", "a"]
    assert not w.scheduler.models["a"].draining


def test_unrelated_models_start_side_by_side() -> None:
    # slow and quick are in different non-exclusive groups: quick does not wait for slow's load.
    w = World()
    w.request("slow")
    w.request("quick")
    assert starts(w) == ["slow", "quick"]


def test_conflicting_operations_keep_their_order() -> None:
    w = World()
    w.request("a")
    w.request("b")  # same swap group as a: waits for a's start to finish
    assert starts(w) == ["a"]
    w.ready("a")
    w.release("a")
    assert stops(w) == ["a"]
    w.stopped("a")
    assert starts(w) == ["a", "b"]


@pytest.mark.parametrize(("loaded", "target", "evicted"), [
    (["a"], "b", ["a"]),
    (["p1"], "a", []),             # persistent groups are never evicted
    (["s1"], "s2", []),            # swap: false keeps members together
    (["s1"], "a", ["s1"]),         # the default group is exclusive
    (["a"], "s1", []),             # a non-exclusive group leaves others running
    (["a", "p1", "s1"], "e1", ["a", "s1"]),
    (["slow"], "quick", []),
])
def test_evictions_follow_the_group_rules(loaded: list[str], target: str, evicted: list[str]) -> None:
    w = World()
    for model_id in loaded:
        w.up(model_id)
    w.log.clear()
    w.request(target)
    assert sorted(stops(w)) == evicted
    for model_id in evicted:
        w.stopped(model_id)
    assert starts(w) == [target]


def test_ttl_unloads_an_idle_model_but_not_a_busy_or_recently_used_one() -> None:
    w = World()
    w.up("a")
    w.request("a")
    w.tick(11)
    assert stops(w) == []          # in flight
    w.release("a")
    w.tick(5)
    assert stops(w) == []          # used 5 s ago
    w.tick(6)
    assert stops(w) == ["a"] and "ttl" in [d for d in w.log if isinstance(d, Stop)][0].reason


def test_unload_waits_for_in_flight_unless_forced() -> None:
    w = World()
    w.up("a")
    w.request("a")
    op = w.unload("a")
    assert stops(w) == [] and op not in w.finished
    w.release("a")
    w.stopped("a")
    assert w.finished[op] is None

    w.up("b")
    w.request("b")
    op = w.unload("b", force=True)
    assert any(isinstance(d, Cut) for d in w.log) and stops(w)[-1] == "b"
    w.stopped("b")
    assert w.finished[op] is None


def test_a_failed_start_fails_its_waiters_and_the_next_request_tries_again() -> None:
    w = World()
    waiter = w.request("a")
    w.start_fails("a")
    assert isinstance(w.failed[waiter], ModelStartFailed)
    assert w.scheduler.models["a"].state is ModelState.FAILED
    w.request("a")
    assert starts(w) == ["a", "a"]


def test_a_stop_that_fails_fails_the_swap_and_the_unload() -> None:
    w = World()
    w.up("a")
    waiter = w.request("b")
    w.apply(w.scheduler.stop_failed("a", "engine said no"))
    assert "could not be brought up" in str(w.failed[waiter])
    op = w.unload("a")
    w.apply(w.scheduler.stop_failed("a", "engine said no"))
    assert "engine said no" in (w.finished[op] or "")


def test_a_dead_container_is_removed_and_the_next_request_starts_a_new_one() -> None:
    w = World()
    w.up("a")
    w.apply(w.scheduler.died("a-1", "exited with code 137"))
    assert any(isinstance(d, Remove) for d in w.log)
    assert w.scheduler.models["a"].state is ModelState.FAILED
    w.request("a")
    assert starts(w) == ["a", "a"]


def test_a_reload_removing_a_model_fails_its_waiters() -> None:
    w = World()
    w.up("a")
    w.request("a")
    waiter = w.request("b")
    w.apply(w.scheduler.remove_models(["b"]))
    assert isinstance(w.failed[waiter], ModelNotFound)


# -- random sequences ---------------------------------------------------------------------------

MODELS = list(CONFIG.models)


def run_random_sequence(seed: int, steps: int = 60) -> None:
    rng = random.Random(seed)
    w = World()
    waiters: list[int] = []
    gone: set[int] = set()  # waiters whose client left
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.35:
            waiter = w.request(rng.choice(MODELS))
            if waiter:
                waiters.append(waiter)
        elif roll < 0.5 and w.leases:
            w.release(rng.choice(w.leases))
        elif roll < 0.62 and w.starting:
            model_id = rng.choice(sorted(w.starting))
            (w.ready if rng.random() < 0.85 else w.start_fails)(model_id)
        elif roll < 0.74 and (w.stopping or w.sleeping or w.waking):
            kind, model_id = rng.choice(sorted(
                [("stop", m) for m in w.stopping] + [("sleep", m) for m in w.sleeping]
                + [("wake", m) for m in w.waking]))
            if kind == "stop":
                w.stopped(model_id)
            elif kind == "sleep":
                if rng.random() < 0.85:
                    w.slept(model_id)
                else:
                    w.apply(w.scheduler.sleep_failed(model_id, "no answer"))
            else:
                (w.woke if rng.random() < 0.85 else w.wake_fails)(model_id)
        elif roll < 0.8:
            pending = [x for x in waiters if x in w.scheduler.waiters]
            if pending:
                gone.add(leaving := rng.choice(pending))
                w.apply(w.scheduler.leave(leaving))
        elif roll < 0.86:
            w.unload(*rng.sample(MODELS, rng.randint(1, 3)), force=rng.random() < 0.3)
        elif roll < 0.92:
            w.tick(rng.choice([1, 5, 11]))
        else:
            ready = [r for r in w.scheduler.models.values()
                     if r.state in (ModelState.READY, ModelState.ASLEEP)
                     and r.container is not None]
            if ready:
                victim = rng.choice(ready)
                assert victim.container is not None
                w.apply(w.scheduler.died(victim.container.id, "killed"))
        w.check_invariants()
    # Let everything finish: every waiter ends admitted or failed, every operation ends.
    for _ in range(200):
        if not (w.starting or w.stopping or w.sleeping or w.waking or w.leases
                or w.scheduler.waiters or w.scheduler.running or w.scheduler.pending):
            break
        for model_id in sorted(w.stopping):
            w.stopped(model_id)
        for model_id in sorted(w.sleeping):
            w.slept(model_id)
        for model_id in sorted(w.waking):
            w.woke(model_id)
        for model_id in sorted(w.starting):
            w.ready(model_id)
        while w.leases:  # a release may admit (and a cut release) others meanwhile
            w.release(w.leases[0])
        w.check_invariants()
    assert not w.scheduler.waiters and not w.scheduler.running and not w.scheduler.pending
    # Every waiter was admitted or failed, unless its client left.
    left = {x for x in waiters if x not in w.admitted and x not in w.failed}
    assert left <= gone, left - gone


SEQUENCES = 300


def test_random_event_sequences_keep_the_invariants() -> None:
    for seed in range(SEQUENCES):
        try:
            run_random_sequence(seed)
        except AssertionError as exc:
            raise AssertionError(f"sequence seed={seed}: {exc}") from exc


# -- sleep mode --------------------------------------------------------------------------------

def test_a_sleep_mode_model_is_put_to_sleep_on_eviction_and_woken_in_the_same_container() -> None:
    w = World()
    w.up("v1")
    first = w.scheduler.models["v1"].container
    w.log.clear()
    w.request("v2")
    assert [type(d).__name__ for d in w.log if isinstance(d, Stop | Sleep)] == ["Sleep"]
    w.slept("v1")
    assert w.scheduler.models["v1"].state is ModelState.ASLEEP
    assert starts(w) == ["v2"]  # an asleep model does not count as running
    w.ready("v2")
    w.release("v2")
    w.log.clear()
    waiter = w.request("v1")
    assert [d for d in w.log if isinstance(d, Sleep)] == [Sleep("v2", 2, "v1")]
    w.slept("v2")
    assert [d for d in w.log if isinstance(d, Wake)] == [Wake("v1", ("v2",))] and starts(w) == []
    w.woke("v1")
    assert w.admitted[waiter] == "v1" and w.scheduler.models["v1"].container == first


def test_a_wake_that_fails_falls_back_to_stop_and_a_cold_start() -> None:
    w = World()
    w.up("v1")
    w.up("v2")  # v1 asleep now
    w.slept("v1")
    waiter = w.request("v1")
    w.slept("v2")
    w.log.clear()
    w.wake_fails("v1")
    assert stops(w) == ["v1"]
    w.stopped("v1")
    assert starts(w) == ["v1"]
    w.ready("v1")
    assert w.admitted[waiter] == "v1"


def test_a_sleep_that_fails_stops_the_container_instead() -> None:
    w = World()
    w.up("v1")
    w.log.clear()
    w.request("v2")
    w.apply(w.scheduler.sleep_failed("v1", "timeout"))
    assert stops(w) == ["v1"]
    w.stopped("v1")
    assert starts(w) == ["v2"]


def test_unloads_stop_asleep_models_and_sleep_ttl_expires_them() -> None:
    w = World()
    w.up("v2")
    w.up("v1")
    w.slept("v2")
    w.tick(29)
    assert stops(w) == []
    w.tick(2)
    assert stops(w) == ["v2"]  # asleep longer than its sleepTTL (30 s)
    w.stopped("v2")
    op = w.unload("v1")
    assert stops(w) == ["v2", "v1"]  # an unload stops, it does not put to sleep
    w.stopped("v1")
    assert w.finished[op] is None


def test_a_model_removed_by_a_reload_conflicts_with_nothing_while_it_is_unloaded() -> None:
    w = World()
    w.up("b")
    w.request("b")  # in flight: its unload has to wait
    w.scheduler.rules = load_config_text("models: {a: {image: x}, solo: {image: x}}")
    w.apply(w.scheduler.remove_models(["b"]))
    op = w.unload("b")
    w.log.clear()
    waiter = w.request("a")  # a cold start while the removed model drains
    assert starts(w) == ["a"]
    w.ready("a")
    assert w.admitted[waiter] == "a"
    w.release("b")
    w.stopped("b")
    assert w.finished[op] is None


def test_stopping_an_asleep_model_is_not_taken_for_its_death() -> None:
    w = World()
    w.up("v1")
    w.up("v2")
    w.slept("v1")
    op = w.unload("v1")
    container = w.scheduler.models["v1"].container
    assert container is not None
    w.apply(w.scheduler.died(container.id, "exited with code 0"))  # the die event of our stop
    assert not any(isinstance(d, Remove) for d in w.log) and op not in w.finished
    w.stopped("v1")
    assert w.finished[op] is None and w.scheduler.models["v1"].state is ModelState.STOPPED


def test_a_forced_unload_waiting_its_turn_admits_nothing_new() -> None:
    w = World()
    waiter = w.request("a")  # a starts
    op = w.unload("a", force=True)  # queued behind the start
    w.ready("a")
    assert waiter not in w.admitted, "admitted now, it would escape the cut"
    w.stopped("a")
    assert w.finished[op] is None
    assert starts(w) == ["a", "a"]  # the waiter brings it up again afterwards


# -- outcomes come back as events ---------------------------------------------------------------

def test_effects_report_outcomes_as_events_the_scheduler_handles() -> None:
    from llamaswap_docker.lifecycle import outcomes

    w = World()
    waiter = w.request("v1")
    w.apply(w.scheduler.handle(outcomes.Created("v1", ref("v1", 1))))
    assert w.scheduler.models["v1"].container == ref("v1", 1)
    w.starting.discard("v1")
    w.apply(w.scheduler.handle(outcomes.Ready("v1", ref("v1", 1), 1.0)))
    assert w.admitted[waiter] == "v1"
    w.release("v1")
    w.request("v2")  # v1 is evicted: put to sleep
    w.sleeping.discard("v1")
    w.apply(w.scheduler.handle(outcomes.Slept("v1", 2.0)))
    assert w.scheduler.models["v1"].state is ModelState.ASLEEP
    w.starting.discard("v2")
    w.apply(w.scheduler.handle(outcomes.StartFailed("v2", ModelStartFailed("no"))))
    assert w.scheduler.models["v2"].state is ModelState.FAILED
    op = w.unload("v1")
    w.stopping.discard("v1")
    w.apply(w.scheduler.handle(outcomes.Stopped("v1")))
    assert w.finished[op] is None
    with pytest.raises(TypeError):
        w.scheduler.handle("not an outcome")  # type: ignore[arg-type]


def test_effects_know_the_orchestrator_only_through_its_interface() -> None:
    import ast
    from pathlib import Path

    import llamaswap_docker.lifecycle.effects as effects

    tree = ast.parse(Path(effects.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "llamaswap_docker.lifecycle.manager" not in imported  # no cycle with the manager
    assert "llamaswap_docker.lifecycle.outcomes" in imported


def test_the_default_router_places_nothing_without_gpus_and_says_why() -> None:
    from llamaswap_docker.lifecycle.scheduler import Placed

    w = World()
    w.up("a")
    w.log.clear()
    w.request("b")
    [placed] = [d for d in w.log if isinstance(d, Placed)]
    assert (placed.policy, placed.placement, placed.evicted) == ("group", None, ("a",))
    assert placed.why == "group '(default)' (swap=true, exclusive=true)"
    assert [d.placement for d in w.log if isinstance(d, Start)] == []  # after a's stop
    w.stopped("a")
    assert [d.placement for d in w.log if isinstance(d, Start)] == [None]
