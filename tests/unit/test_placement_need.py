"""A model's need of GPU memory: declared, estimated from its GGUF or vLLM flags, measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llamaswap_docker.config import load_config_text
from llamaswap_docker.lifecycle.need import (
    MeasuredNeeds, _gguf_parts, estimate_gguf, host_path, need_of, needs_of,
)
from llamaswap_docker.lifecycle.placement import Device, Need
from llamaswap_docker.tinymodel import ensure_tiny_gguf

GiB = 1 << 30
MiB = 1 << 20
# The tiny GGUF (llamaswap_docker/tinymodel.py): 2 blocks of 164,352 bytes, token_embd and
# output 70,912 bytes each, output_norm 256; n_embd 64, 4 heads (4 KV heads), 277 tokens.
LAYERS, OUTPUT, N_EMBD, VOCAB = 328_704, 70_912 + 256, 64, 277


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_gguf(tmp_path_factory.mktemp("models"))


def model(tiny: Path | None = None, **spec: Any) -> Any:
    entry = {"image": "x", **spec}
    if tiny is not None:
        entry.setdefault("volumes", [f"{tiny.parent}:/models:ro"])
    config = load_config_text(yaml.safe_dump({"models": {"m": entry}}))
    return config.models["m"]


def kv(layers: int, ctx: int, bytes_per_element: float = 2.0) -> int:
    return int(layers * ctx * 4 * (16 + 16) * bytes_per_element)  # 4 KV heads of 16 dims, K + V


def compute(ubatch: int = 512) -> int:
    return ubatch * 4 * (VOCAB + 8 * N_EMBD)


OVERHEAD = 256 * MiB


def test_the_estimate_counts_weights_kv_cache_buffers_and_overhead(tiny: Path) -> None:
    assert estimate_gguf(tiny, ["-c", "512"]) == LAYERS + OUTPUT + kv(2, 512) + compute() + OVERHEAD


@pytest.mark.parametrize(("args", "expected"), [
    (["-ngl", "0"], OVERHEAD),  # nothing offloaded
    (["-ngl", "1", "-c", "512"], LAYERS // 2 + kv(1, 512) + compute() + OVERHEAD),
    (["-ngl", "2", "-c", "512"], LAYERS + kv(2, 512) + compute() + OVERHEAD),  # not the output
    (["--n-gpu-layers=99", "-c", "512"], LAYERS + OUTPUT + kv(2, 512) + compute() + OVERHEAD),
    (["-c", "0"], LAYERS + OUTPUT + kv(2, 512) + compute() + OVERHEAD),  # 0: the model's 512
    ([], LAYERS + OUTPUT + kv(2, 4096) + compute() + OVERHEAD),  # llama-server's 4096
    (["-c", "8192", "-ctk", "q8_0", "-ctv", "q4_0"],
     LAYERS + OUTPUT + int(2 * 8192 * 4 * (16 * 34 / 32 + 16 * 18 / 32)) + compute() + OVERHEAD),
    (["-c", "512", "-ub", "128"], LAYERS + OUTPUT + kv(2, 512) + compute(128) + OVERHEAD),
])
def test_the_estimate_follows_llama_server_flags(tiny: Path, args: list[str],
                                                 expected: int) -> None:
    assert estimate_gguf(tiny, args) == expected


def test_a_multimodal_projector_adds_its_file(tiny: Path) -> None:
    assert estimate_gguf(tiny, ["-c", "512"], mmproj=tiny) - estimate_gguf(tiny, ["-c", "512"]) \
        == tiny.stat().st_size


def test_split_gguf_files_are_read_whole() -> None:
    first = Path("/m/qwen-00001-of-00003.gguf")
    assert [p.name for p in _gguf_parts(first)] == [
        "qwen-00001-of-00003.gguf", "qwen-00002-of-00003.gguf", "qwen-00003-of-00003.gguf"]
    assert _gguf_parts(Path("/m/plain.gguf")) == [Path("/m/plain.gguf")]


def test_container_paths_map_to_host_paths_through_bind_mounts() -> None:
    m = model(volumes=["/srv/models:/models:ro", "/srv/models/big:/models/big", "cache:/cache"])
    assert host_path(m, "/models/a.gguf") == Path("/srv/models/a.gguf")
    assert host_path(m, "/models/big/b.gguf") == Path("/srv/models/big/b.gguf")  # the longest
    assert host_path(m, "/cache/c.gguf") is None  # a named volume
    assert host_path(m, "/elsewhere/d.gguf") is None


def test_a_declared_need_wins_and_gpus_shape_it(tiny: Path) -> None:
    need = need_of("m", model(tiny, vram="18GiB", platform="cuda", gpus=2,
                              cmd="-m /models/tiny.gguf"))
    assert need == Need(18 * GiB, "declared", count=2)
    assert need_of("m", model(vram="1g", platform="cuda", gpus=[1])).pinned == ("1",)
    assert need_of("m", model(vram="1g", platform="cuda", gpus="all")).every
    assert need_of("m", model(vram="2GiB")) == Need(2 * GiB, "declared")  # cpu, declared: placed


def test_a_cpu_model_without_vram_uses_no_gpu(tiny: Path) -> None:
    assert not need_of("m", model(tiny, cmd="-m /models/tiny.gguf")).uses_gpu


def test_a_llama_cpp_model_on_a_gpu_is_estimated_from_its_gguf(tiny: Path) -> None:
    need = need_of("m", model(tiny, platform="cuda", cmd="-m /models/tiny.gguf -c 512"))
    assert need == Need(LAYERS + OUTPUT + kv(2, 512) + compute() + OVERHEAD, "estimated")
    backend = need_of("m", model(tiny, backend="llama.cpp", platform="cuda",
                                 cmd="-m /models/tiny.gguf -c 512 -ngl 0"))
    assert backend == Need(OVERHEAD, "estimated")


def test_a_file_that_cannot_be_read_leaves_the_need_unknown(tmp_path: Path) -> None:
    need = need_of("m", model(tmp_path / "x.gguf", platform="cuda", cmd="-m /models/missing.gguf"))
    assert need == Need(None, "unknown")
    assert need_of("m", model(platform="rocm")).source == "unknown"  # nothing to read


def test_vllm_takes_its_share_of_each_gpu() -> None:
    devices = (Device("0", 24 * GiB), Device("1", 20 * GiB))
    plain = need_of("m", model(backend="vllm", platform="cuda"), devices)
    assert plain == Need(int(0.9 * 20 * GiB), "estimated", count=1)
    flags = model(backend="vllm", platform="cuda",
                  cmd="--model x --gpu-memory-utilization 0.5 --tensor-parallel-size 2")
    assert need_of("m", flags, devices) == Need(2 * int(0.5 * 20 * GiB), "estimated", count=2)
    assert need_of("m", flags, ()).source == "unknown"  # no GPU known to take a share of


def test_a_measured_need_is_remembered_per_spec_across_restarts(tmp_path: Path, tiny: Path) -> None:
    from llamaswap_docker.runtime import ContainerSpec

    config = load_config_text(yaml.safe_dump({"store": {"path": str(tmp_path / "s.db")}, "models": {
        "m": {"image": "x", "platform": "cuda", "cmd": "-m /models/tiny.gguf",
              "volumes": [f"{tiny.parent}:/models:ro"]}}}))
    spec_hash = ContainerSpec.from_model("m", config.models["m"]).spec_hash
    MeasuredNeeds(config.store.path).remember(spec_hash, "m", 5 * GiB)
    again = MeasuredNeeds(config.store.path)  # a restarted proxy
    assert again.get(spec_hash) == 5 * GiB
    assert needs_of(config, (), again)["m"] == Need(5 * GiB, "measured")
    assert MeasuredNeeds().get(spec_hash) is None  # in memory only without store.path
