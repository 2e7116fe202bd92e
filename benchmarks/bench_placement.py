"""Placement policies replayed on request traces through the pure scheduler (no engine).

Two traces on 2 × 24 GiB:

* zipf: 8 models of 4–20 GiB, requests drawn from a Zipf law (s = 1.1) over a shuffled order
  of the models (popularity has nothing to do with size);
* agent: two large models (22 GiB each) taking turns, a small embedder (4 GiB) called
  between them — the embedder fits beside neither.

Each request is served alone (released at once), so no model is ever busy: what differs is
only what each policy evicts. Printed per trace and policy: the starts, the evictions, the
GiB loaded (the sum of the needs started: what swap time is made of), and that figure over
the offline optimum and over the group router. The references know the whole trace:
``optimum`` is exact (dynamic programming over every way the GPUs can hold the models, loading
only what is asked for, which loses nothing: evicting early never helps), ``belady`` evicts
what is needed furthest in the future, on the GPU where the soonest-needed victim is latest
(blind to sizes, it is not optimal here). ``group`` and ``matrix`` use the groups and sets a
user would write by hand for the same GPUs (each GPU one swap group); ``fit`` is given only
the sizes; ``fit-lru`` is fit evicting the fewest models, least recently used first.

    python3 benchmarks/bench_placement.py [--requests 3000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamaswap_docker.config import load_config_text  # noqa: E402
from llamaswap_docker.lifecycle import Scheduler  # noqa: E402
from llamaswap_docker.lifecycle.need import needs_of  # noqa: E402
from llamaswap_docker.lifecycle.placement import Device, FitPolicy, Holder  # noqa: E402
from llamaswap_docker.lifecycle.scheduler import Admit, Start, Stop  # noqa: E402
from llamaswap_docker.runtime import ContainerRef  # noqa: E402

GiB = 1 << 30
GPUS = (24, 24)
ZIPF_SIZES = {"m20": 20, "m16": 16, "m14": 14, "m12": 12, "m10": 10, "m8": 8, "m6": 6, "m4": 4}
# What a user writes for 2 × 24 GiB without a memory-aware router: the large models take
# turns on one GPU, the small ones on the other (no two of either group fit together safely).
ZIPF_GROUPS = {"gpu0": ["m20", "m16", "m14", "m12"], "gpu1": ["m10", "m8", "m6", "m4"]}
AGENT_SIZES = {"planner": 22, "coder": 22, "embed": 4}
AGENT_GROUPS = {"gpu0": ["planner", "embed"], "gpu1": ["coder"]}


def zipf_trace(requests: int, seed: int, s: float = 1.1) -> list[str]:
    rng = random.Random(seed)
    order = list(ZIPF_SIZES)
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** s for rank in range(len(order))]
    return rng.choices(order, weights, k=requests)


def agent_trace(requests: int, seed: int) -> list[str]:
    """planner, embed, coder, embed, planner...; now and then one of them twice in a row."""
    rng = random.Random(seed)
    out: list[str] = []
    large = "planner"
    while len(out) < requests:
        out.append(large)
        if rng.random() < 0.2:
            out.append(large)  # a follow-up turn
        out.append("embed")
        large = "coder" if large == "planner" else "planner"
    return out[:requests]


def config_for(sizes: dict[str, int], router: str, groups: dict[str, list[str]]) -> Any:
    document: dict[str, Any] = {
        "models": {m: {"image": "x", "vram": f"{gib}GiB"} for m, gib in sizes.items()},
        "docker": {"gpus": [{"id": i, "memory": f"{gib}GiB"} for i, gib in enumerate(GPUS)]},
    }
    if router == "fit":
        document["routing"] = {"router": {"use": "fit"}}
    elif router == "group":
        document["routing"] = {"router": {"use": "group", "settings": {"groups": {
            name: {"swap": True, "exclusive": False, "members": members}
            for name, members in groups.items()}}}}
    else:  # the same per-GPU alternatives as a matrix: one of each GPU's models together
        dsl = " & ".join("(" + " | ".join(members) + ")" for members in groups.values())
        document["routing"] = {"router": {"use": "matrix", "settings": {"matrix": {
            "sets": {"per_gpu": dsl}}}}}
    return load_config_text(yaml.safe_dump(document))


class FewestLruFit(FitPolicy):
    """fit with the rule of thumb: evict the fewest models, least recently used first."""

    def eviction_key(self, subset: tuple[Holder, ...], capacity: dict[str, int]
                     ) -> tuple[Any, ...]:
        recency = tuple(sorted((h.last_used for h in subset), reverse=True))
        return (sum(h.busy for h in subset), len(subset), recency)


def replay(trace: Sequence[str], sizes: dict[str, int], router: str,
           groups: dict[str, list[str]]) -> dict[str, float]:
    """Serve the trace one request at a time through the scheduler; count what it did."""
    config = config_for(sizes, "fit" if router == "fit-lru" else router, groups)
    scheduler = Scheduler(config.models, config)
    if router == "fit-lru":
        scheduler.policy = FewestLruFit(config)
    devices = tuple(Device(g.id, g.memory) for g in config.docker.gpus or ())
    scheduler.set_inventory(devices, needs_of(config, devices))
    loads = evictions = 0
    loaded = 0
    now = 0.0
    started = time.perf_counter()
    for model_id in trace:
        now += 1
        if scheduler.admit_now(model_id) is not None:
            scheduler.release(model_id, now)
            continue
        _, decisions = scheduler.enqueue(model_id)
        while decisions:
            follow: list[Any] = []
            for decision in decisions:
                if isinstance(decision, Stop):
                    evictions += decision.evicted_for is not None
                    follow += scheduler.stopped(decision.model_id)
                elif isinstance(decision, Start):
                    loads += 1
                    loaded += sizes[decision.model_id]
                    ref = ContainerRef(id=f"{decision.model_id}-{loads}", name=decision.model_id,
                                       model_id=decision.model_id, spec_hash="h", instance="b",
                                       status="running", base_url="http://x")
                    follow += scheduler.ready(decision.model_id, ref, now)
                elif isinstance(decision, Admit):
                    follow += scheduler.release(decision.model_id, now)
            decisions = follow
    seconds = time.perf_counter() - started
    return {"loads": loads, "evictions": evictions, "gib": loaded,
            "per_request_us": seconds / len(trace) * 1e6}


def belady(trace: Sequence[str], sizes: dict[str, int]) -> dict[str, float]:
    """The offline reference: on a miss, on the GPU where it costs least, evict the models
    needed furthest in the future until the model fits (never a model needed sooner than
    one left in place on that GPU)."""
    next_use: list[dict[str, int]] = [{} for _ in trace]
    upcoming: dict[str, int] = {}
    for index in range(len(trace) - 1, -1, -1):
        next_use[index] = dict(upcoming)
        upcoming[trace[index]] = index
    gpus: list[dict[str, int]] = [{} for _ in GPUS]
    loads = evictions = 0
    loaded = 0
    infinity = len(trace) + 1
    for index, model_id in enumerate(trace):
        if any(model_id in gpu for gpu in gpus):
            continue
        need = sizes[model_id]
        best: tuple[Any, ...] | None = None
        for g, gpu in enumerate(gpus):
            if need > GPUS[g]:
                continue
            free = GPUS[g] - sum(gpu.values())
            victims: list[str] = []
            for other in sorted(gpu, key=lambda m: -next_use[index].get(m, infinity)):
                if free >= need:
                    break
                victims.append(other)
                free += gpu[other]
            # Cheapest: the soonest-needed victim as late as possible, then fewer GiB lost.
            soonest = min((next_use[index].get(v, infinity) for v in victims), default=infinity)
            key = (-soonest, sum(gpu[v] for v in victims), free - need)
            if best is None or key < best[0]:
                best = (key, g, victims)
        assert best is not None
        _, g, victims = best
        for victim in victims:
            del gpus[g][victim]
            evictions += 1
        gpus[g][model_id] = need
        loads += 1
        loaded += need
    return {"loads": loads, "evictions": evictions, "gib": loaded, "per_request_us": 0.0}


def optimum(trace: Sequence[str], sizes: dict[str, int]) -> dict[str, float]:
    """The least GiB any policy can load for the trace (offline, exact).

    States are what each GPU holds; a request either hits or loads its model on one GPU after
    evicting an inclusion-minimal set of that GPU's models (loading only on demand and evicting
    only to make room loses nothing, and evicting more than enough never pays off later).
    """
    states: dict[tuple[tuple[str, ...], ...], tuple[int, int]] = {tuple(() for _ in GPUS): (0, 0)}
    for model_id in trace:
        after: dict[tuple[tuple[str, ...], ...], tuple[int, int]] = {}

        def keep(state: tuple[tuple[str, ...], ...], cost: tuple[int, int]) -> None:
            if state not in after or cost < after[state]:
                after[state] = cost

        for state, (gib, evicted) in states.items():
            if any(model_id in gpu for gpu in state):
                keep(state, (gib, evicted))
                continue
            need = sizes[model_id]
            for g, gpu in enumerate(state):
                if need > GPUS[g]:
                    continue
                short = need - (GPUS[g] - sum(sizes[m] for m in gpu))
                minimal: list[set[str]] = []
                for size in range(len(gpu) + 1):
                    for victims in itertools.combinations(gpu, size):
                        chosen = set(victims)
                        if sum(sizes[m] for m in victims) >= short and not any(
                                earlier <= chosen for earlier in minimal):
                            minimal.append(chosen)
                for victims in minimal:
                    held = tuple(sorted((set(gpu) - victims) | {model_id}))
                    keep(state[:g] + (held,) + state[g + 1:],
                         (gib + need, evicted + len(victims)))
        states = after
    gib, evicted = min(states.values())
    return {"loads": float("nan"), "evictions": evicted, "gib": gib, "per_request_us": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    traces = {"zipf": (zipf_trace, ZIPF_SIZES, ZIPF_GROUPS),
              "agent": (agent_trace, AGENT_SIZES, AGENT_GROUPS)}
    print(f"{args.requests} requests per trace, {args.seeds} seeds (sums over seeds); "
          f"GPUs {' + '.join(f'{g} GiB' for g in GPUS)}")
    header = (f"{'trace':<6} {'policy':<8} {'starts':>7} {'evictions':>9} {'GiB loaded':>10} "
              f"{'× optimum':>9} {'× group':>7} {'µs/request':>10}")
    print(header)
    print("-" * len(header))
    for name, (make, sizes, groups) in traces.items():
        totals: dict[str, dict[str, float]] = {}
        for seed in range(args.seeds):
            trace = make(args.requests, seed)
            results = {"optimum": optimum(trace, sizes), "belady": belady(trace, sizes)}
            for router in ("fit", "fit-lru", "group", "matrix"):
                results[router] = replay(trace, sizes, router, groups)
            for policy, result in results.items():
                total = totals.setdefault(policy, dict.fromkeys(result, 0.0))
                for key, value in result.items():
                    total[key] += value
        for policy in ("optimum", "belady", "fit", "fit-lru", "group", "matrix"):
            row = totals[policy]
            starts = "-" if row["loads"] != row["loads"] else f"{row['loads']:.0f}"  # nan: -
            speed = f"{row['per_request_us'] / args.seeds:.1f}" if row["per_request_us"] else "-"
            print(f"{name:<6} {policy:<8} {starts:>7} {row['evictions']:>9.0f} "
                  f"{row['gib']:>10.0f} {row['gib'] / totals['optimum']['gib']:>9.2f} "
                  f"{row['gib'] / totals['group']['gib']:>7.2f} {speed:>10}")


if __name__ == "__main__":
    main()
