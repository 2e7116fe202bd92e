"""A model's need of GPU memory: declared, estimated, or measured after a first load.

In order of trust:

1. ``vram: 18GiB`` in the model's config (``declared``).
2. What a load of this very container spec used, measured on the GPUs before and after it
   (``measured``), remembered per spec hash (in ``store.path`` when set, else for the
   proxy's life).
3. An estimate (``estimated``): for llama.cpp, from the GGUF file's metadata (the ``gguf``
   package) — the tensors of the layers ``-ngl`` offloads, the KV cache for ``-c`` and the
   ``-ctk``/``-ctv`` cache types, the ``--mmproj`` file, and compute buffers; for vLLM,
   ``--gpu-memory-utilization`` (0.9 by default) of each GPU it uses.
4. Otherwise ``unknown``: under ``fit`` such a model takes its GPUs whole.

A model on ``platform: cpu`` without ``vram`` uses no GPU (``none``). ``gpus`` says how many
GPUs (a count), which ones (a list) or every one (``all``).
"""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from loguru import logger

from llamaswap_docker.config import Config, ModelConfig
from llamaswap_docker.config.backends import GPU_PLATFORMS
from llamaswap_docker.lifecycle.placement import NO_GPU, Device, Need

__all__ = ["MeasuredNeeds", "estimate_gguf", "estimate_vllm", "need_of", "needs_of"]

#: Bytes per element of llama.cpp's KV cache types (blocks of 32 for the quantized ones).
_CACHE_TYPE_BYTES = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
    "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
}
#: llama-server's defaults where the command says nothing.
_DEFAULT_CTX = 4096
_DEFAULT_UBATCH = 512
#: The CUDA/ROCm context and allocator slack each server has beyond its buffers.
_RUNTIME_OVERHEAD = 256 << 20
#: vLLM's default share of each GPU.
_VLLM_UTILIZATION = 0.9
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def _gpu_shape(model: ModelConfig) -> dict[str, Any]:
    gpus = model.gpus
    if isinstance(gpus, int):
        return {"count": gpus}
    if gpus == "all":
        return {"every": True}
    if isinstance(gpus, list):
        return {"pinned": tuple(gpus)}
    return {}


def _flag(args: Sequence[str], *names: str) -> str | None:
    """The value of the last of ``names`` in ``args`` (``-c 8192`` or ``--ctx-size=8192``)."""
    found = None
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                found = args[index + 1]
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1:]
    return found


def _int_flag(args: Sequence[str], *names: str) -> int | None:
    value = _flag(args, *names)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def host_path(model: ModelConfig, container_path: str) -> Path | None:
    """Where a file the container sees lives on the host (its bind mounts); None if not
    under a bind mount (a named volume, or the image's own files)."""
    best = None
    for mount in model.volume_mounts:
        if not mount.is_bind:
            continue
        target = mount.target.rstrip("/") or "/"
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[0]):
                best = (target, mount.source)
    if best is None:
        return None
    target, source = best
    return Path(source) / container_path[len(target):].lstrip("/")


def _gguf_parts(path: Path) -> list[Path]:
    match = _SPLIT_RE.search(path.name)
    if match is None:
        return [path]
    total = int(match.group(2))
    stem = path.name[:match.start()]
    return [path.with_name(f"{stem}-{index:05d}-of-{total:05d}.gguf")
            for index in range(1, total + 1)]


def estimate_gguf(path: Path, args: Sequence[str] = (), mmproj: Path | None = None) -> int:
    """GPU bytes llama-server needs for the GGUF at ``path`` with these arguments.

    Raises:
        OSError: a file cannot be read. ImportError: the ``gguf`` package is missing.
        ValueError: the file is not a GGUF llama.cpp can describe.
    """
    from gguf import GGUFReader  # optional: `pip install llamaswap-docker[gguf]`

    fields: dict[str, Any] = {}
    layer_bytes: dict[int, int] = {}
    other: dict[str, int] = {}
    for part in _gguf_parts(path):
        reader = GGUFReader(str(part))
        for name, field in reader.fields.items():
            if name == "tokenizer.ggml.tokens":
                fields.setdefault("n_vocab", len(field.data))  # not the strings themselves
            elif not name.startswith("tokenizer."):
                fields.setdefault(name, field.contents())
        for tensor in reader.tensors:
            match = re.match(r"blk\.(\d+)\.", tensor.name)
            if match:
                layer = int(match.group(1))
                layer_bytes[layer] = layer_bytes.get(layer, 0) + int(tensor.n_bytes)
            else:
                other[tensor.name] = int(tensor.n_bytes)
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: no general.architecture")

    def number(key: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer values (e.g. head_count_kv)
            return max(value) if value else default
        return value

    n_layer = int(number("block_count", len(layer_bytes)) or len(layer_bytes))
    n_embd = int(number("embedding_length", 0) or 0)
    n_head = int(number("attention.head_count", 1) or 1)
    n_head_kv = int(number("attention.head_count_kv", n_head) or n_head)
    key_length = int(number("attention.key_length", n_embd // max(n_head, 1)) or 0)
    value_length = int(number("attention.value_length", key_length) or 0)
    n_ctx_train = int(number("context_length", _DEFAULT_CTX) or _DEFAULT_CTX)
    n_vocab = int(fields.get("n_vocab") or number("vocab_size", 0) or 0)

    ngl = _int_flag(args, "-ngl", "--gpu-layers", "--n-gpu-layers")
    offloaded = n_layer if ngl is None or ngl < 0 else min(ngl, n_layer)
    weights = sum(layer_bytes.get(layer, 0) for layer in range(n_layer - offloaded, n_layer))
    if ngl is None or ngl < 0 or ngl > n_layer:  # the output layer goes too
        weights += sum(size for name, size in other.items() if not name.startswith("token_embd"))
        if not any(name.startswith("output.") for name in other):  # tied to the embeddings
            weights += other.get("token_embd.weight", 0)
    ctx = _int_flag(args, "-c", "--ctx-size")
    n_ctx = n_ctx_train if ctx == 0 else (ctx or _DEFAULT_CTX)
    k_type = (_flag(args, "-ctk", "--cache-type-k") or "f16").lower()
    v_type = (_flag(args, "-ctv", "--cache-type-v") or "f16").lower()
    kv = offloaded * n_ctx * n_head_kv * (key_length * _CACHE_TYPE_BYTES.get(k_type, 2.0)
                                          + value_length * _CACHE_TYPE_BYTES.get(v_type, 2.0))
    ubatch = _int_flag(args, "-ub", "--ubatch-size") or _DEFAULT_UBATCH
    compute = ubatch * 4 * (n_vocab + 8 * n_embd) if offloaded else 0
    extra = mmproj.stat().st_size if mmproj is not None else 0
    return int(weights + math.ceil(kv) + compute + extra + _RUNTIME_OVERHEAD)


def estimate_vllm(args: Sequence[str], devices: Sequence[Device], count: int) -> int | None:
    """``--gpu-memory-utilization`` (0.9) of each of ``count`` GPUs (the smallest known)."""
    if not devices:
        return None
    value = _flag(args, "--gpu-memory-utilization")
    try:
        share = float(value) if value is not None else _VLLM_UTILIZATION
    except ValueError:
        share = _VLLM_UTILIZATION
    smallest = min(device.memory for device in devices)
    return int(share * smallest) * count


def _vllm_gpus(args: Sequence[str]) -> int:
    tensor = _int_flag(args, "--tensor-parallel-size", "-tp") or 1
    pipeline = _int_flag(args, "--pipeline-parallel-size", "-pp") or 1
    return max(tensor * pipeline, 1)


def _is_llama_cpp(model: ModelConfig) -> bool:
    path = _flag(model.cmd, "-m", "--model")
    return model.backend == "llama.cpp" or (path is not None and path.endswith(".gguf"))


def need_of(model_id: str, model: ModelConfig, devices: Sequence[Device] = (),
            measured: int | None = None) -> Need:
    """The model's need: declared, else ``measured``, else estimated, else unknown (GPU
    platforms) or none (cpu). Blocking (it may read a GGUF): call from a worker thread."""
    shape = _gpu_shape(model)
    if model.vram is not None:
        return Need(model.vram, "declared", **shape)
    if model.platform not in GPU_PLATFORMS:
        return NO_GPU
    if measured is not None:
        return Need(measured, "measured", **shape)
    args = model.cmd
    try:
        if model.backend == "vllm":
            count = len(shape.get("pinned", ())) or shape.get("count") or _vllm_gpus(args)
            if shape.get("every"):
                count = len(devices) or count
            estimate = estimate_vllm(args, devices, count)
            if estimate is not None:
                return Need(estimate, "estimated", **({"count": count} | shape))
        elif _is_llama_cpp(model):
            path = _flag(args, "-m", "--model")
            located = host_path(model, path) if path else None
            if located is not None:
                mmproj_path = _flag(args, "--mmproj", "-mm")
                mmproj = host_path(model, mmproj_path) if mmproj_path else None
                return Need(estimate_gguf(located, args, mmproj), "estimated", **shape)
    except (OSError, ValueError, ImportError, KeyError, IndexError) as exc:
        logger.bind(model=model_id, reason=f"{type(exc).__name__}: {exc}").info(
            "GPU memory need not estimated; set `vram` for placement to count it")
    return Need(None, "unknown", **shape)


def needs_of(config: Config, devices: Sequence[Device],
             measured: "MeasuredNeeds | None" = None) -> dict[str, Need]:
    """Every model's need (blocking)."""
    from llamaswap_docker.runtime import ContainerSpec

    out: dict[str, Need] = {}
    for model_id, model in config.models.items():
        remembered = None
        if measured is not None and model.vram is None:
            remembered = measured.get(ContainerSpec.from_model(model_id, model).spec_hash)
        out[model_id] = need_of(model_id, model, devices, remembered)
    return out


def with_bytes(need: Need, value: int, source: str) -> Need:
    return replace(need, bytes=value, source=source)


class MeasuredNeeds:
    """What loads measured, by container spec hash: in SQLite at ``path``, else in memory."""

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path).expanduser() if path else None
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            try:
                with contextlib.closing(self._connect()) as db, db:
                    db.execute("CREATE TABLE IF NOT EXISTS measured_vram (spec_hash TEXT PRIMARY "
                               "KEY, model TEXT, bytes INTEGER, measured_at REAL)")
                    self._known = dict(db.execute("SELECT spec_hash, bytes FROM measured_vram"))
            except sqlite3.Error as exc:
                logger.bind(path=str(self.path)).error("measured needs not kept: {}", exc)
                self.path = None

    def get(self, spec_hash: str) -> int | None:
        return self._known.get(spec_hash)

    def remember(self, spec_hash: str, model_id: str, value: int) -> None:
        """Keep a measurement (blocking when kept in SQLite)."""
        with self._lock:
            self._known[spec_hash] = value
            if self.path is None:
                return
            try:
                with contextlib.closing(self._connect()) as db, db:
                    db.execute("INSERT OR REPLACE INTO measured_vram (spec_hash, model, bytes, "
                               "measured_at) VALUES (?, ?, ?, ?)",
                               (spec_hash, model_id, value, time.time()))
            except sqlite3.Error as exc:
                logger.bind(path=str(self.path)).error("measured need not kept: {}", exc)

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(self.path, timeout=10)
