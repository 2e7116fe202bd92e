"""The GPU inventory as placement sees it: what others use is left out, ours is counted by
placement; ``GET /api/hardware``'s shape."""

from __future__ import annotations

import asyncio
from typing import Any

from llamaswap_docker.config import load_config_text
from llamaswap_docker.lifecycle.inventory import Inventory
from llamaswap_docker.lifecycle.placement import Device, Placement
from llamaswap_docker.runtime.gpus import GpuReport, parse_nvidia_smi

GiB = 1 << 30
MiB = 1 << 20

# Two 24 GiB cards: 18 GiB used on GPU 0 (our model holds 16 of it), 1 GiB on GPU 1 (a desktop).
SMI = """\
0, GPU-aaaa, NVIDIA GeForce RTX 4090, 24576, 18432, 560.35.03
1, GPU-bbbb, NVIDIA GeForce RTX 4090, 24576, 1024, 560.35.03
"""


def inventory_of(report: GpuReport, placed: dict[str, Placement]) -> Inventory:
    inventory = Inventory(engine=None)  # type: ignore[arg-type]  # never asked here
    inventory._take(report, placed)
    return inventory


def test_memory_others_use_is_left_out_and_ours_is_not() -> None:
    gpus, _ = parse_nvidia_smi(SMI)
    ours = {"coder": Placement(("0",), 16 * GiB)}
    inventory = inventory_of(GpuReport(gpus=tuple(gpus)), ours)
    assert inventory.foreign == {"0": 2 * GiB, "1": 1 * GiB}
    assert inventory.devices() == (Device("0", 22 * GiB, "", "NVIDIA GeForce RTX 4090"),
                                   Device("1", 23 * GiB, "", "NVIDIA GeForce RTX 4090"))
    assert inventory.live and inventory.used(("0", "1")) == 19 * GiB


def test_declared_gpus_are_not_looked_at_again() -> None:
    config = load_config_text("""
models: {m: {image: x, vram: 4GiB}}
docker: {gpus: [{id: 0, memory: 24GiB}, {id: 1, memory: 16GiB}]}
""")
    inventory = Inventory(engine=None)  # type: ignore[arg-type]
    report = asyncio.run(inventory.discover(config, {}))
    assert report.source == "declared" and not inventory.live
    assert [(d.id, d.memory) for d in inventory.devices()] == [("0", 24 * GiB), ("1", 16 * GiB)]


def test_a_config_without_gpu_models_probes_nothing() -> None:
    config = load_config_text("models: {m: {image: x}}")
    inventory = Inventory(engine=None)  # type: ignore[arg-type]  # would fail if probed
    report = asyncio.run(inventory.discover(config, {}))
    assert not report.available and report.reason == "no model uses a GPU platform"


def test_hardware_lists_llama_swaps_fields_then_what_is_placed() -> None:
    gpus, _ = parse_nvidia_smi(SMI)
    coder = {"coder": Placement(("0",), 16 * GiB)}
    placed = {**coder, "wide": Placement(("0", "1"), None)}  # starting since the last look
    data: dict[str, Any] = inventory_of(GpuReport(gpus=tuple(gpus)), coder).to_json(
        "fit", placed, {"coder": "ready", "wide": "starting"})
    assert data["schema_version"] == 1 and data["capture"]["method"] == "detected"
    assert data["capture"]["detector"]["name"] == "nvidia-smi"
    [first, _] = data["accelerators"]
    assert (first["kind"], first["model"], first["memory"]["capacity_bytes"]) == (
        "gpu", "NVIDIA GeForce RTX 4090", 24 * GiB)
    assert first["driver"]["version"] == "560.35.03"
    gpu0, gpu1 = data["gpus"]
    assert gpu0["memory_used_bytes"] == 18 * GiB and gpu0["memory_usable_bytes"] == 22 * GiB
    # An unknown need holds its GPUs whole.
    assert gpu0["placed_bytes"] == 16 * GiB + 24 * GiB and gpu1["placed_bytes"] == 24 * GiB
    assert [m["model"] for m in gpu0["models"]] == ["coder", "wide"]
    assert gpu1["models"] == [{"model": "wide", "bytes": 24 * GiB, "state": "starting"}]
    assert data["router"] == "fit" and data["source"] == "nvidia-smi"
