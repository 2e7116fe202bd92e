"""The engine's GPUs, as placement sees them: declared, or found, then kept up to date.

Where they come from, first that answers:

1. ``docker.gpus`` in the config (``declared``): nothing is probed; placement counts what
   it placed.
2. NVML, then ``nvidia-smi``, on the proxy's host when the engine is local (a Unix socket).
3. A probe container given the GPUs of the first ``platform: cuda`` (``nvidia-smi``) or
   ``rocm`` (``rocm-smi``) model, with that model's image (already on the engine: a probe
   never pulls).

Found GPUs are looked at again after every start and stop (one look at a time). Memory used
by anything but our own containers is left out of what placement may use, so another
program on the GPU is respected; what our containers use is counted by placement itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from loguru import logger

from llamaswap_docker.config import Config
from llamaswap_docker.lifecycle.placement import Device, Placement
from llamaswap_docker.runtime import Engine
from llamaswap_docker.runtime.gpus import (
    GpuReport,
    declared_gpus,
    list_gpus,
    nvml_gpus,
    probe_container,
)

__all__ = ["Inventories", "Inventory"]

#: Sources quick enough to look at around every start (to measure what a load used).
QUICK_SOURCES = frozenset({"nvml", "nvidia-smi"})


class Inventory:
    """One engine's GPUs: the last report, and what placement may use of each."""

    def __init__(self, engine: Engine | None, engine_name: str = "") -> None:
        self.engine = engine
        self.engine_name = engine_name
        self.report = GpuReport(source="none", reason="not looked at yet")
        self.captured_at: float | None = None
        #: Bytes on each GPU used by others than our containers, at the last look.
        self.foreign: dict[str, int] = {}
        self._refreshing: asyncio.Task[Any] | None = None
        self._again = False

    @property
    def live(self) -> bool:
        """Whether the GPUs are measured (not declared), so they are looked at again."""
        return self.report.source != "declared" and self.report.available

    @property
    def quick(self) -> bool:
        return self.report.source in QUICK_SOURCES and self.report.available

    async def discover(self, config: Config, placed: Mapping[str, Placement]) -> GpuReport:
        """Find the GPUs (blocking work in a thread); never raises: no GPUs, and why."""
        try:
            report = await asyncio.to_thread(self._discover, config)
        except Exception as exc:  # noqa: BLE001 - placement works without GPUs, it says so
            logger.opt(exception=exc).error("GPU inventory failed: {}", exc)
            report = GpuReport(source="none", reason=f"{type(exc).__name__}: {exc}")
        self._take(report, placed)
        log = logger.bind(source=report.source, gpus=len(report.gpus),
                          memory=",".join(f"{g.id}:{g.memory_total_mib}MiB" for g in report.gpus)
                          or "-")
        if report.reason:
            log = log.bind(reason=report.reason)
        log.info("GPU inventory")
        return report

    def qualified(self, gpu_id: str) -> str:
        """A GPU's id as placement knows it: ``box2:0`` on a named engine (ids repeat across
        engines), the bare id on the one engine of a config without ``engines:``."""
        return f"{self.engine_name}:{gpu_id}" if self.engine_name else gpu_id

    def _discover(self, config: Config) -> GpuReport:
        declared = (config.engines[self.engine_name].gpus
                    if self.engine_name in config.engines else config.docker.gpus)
        if declared is not None:
            return declared_gpus(declared)
        platforms = {model.platform for model in config.models.values()}
        if not platforms & {"cuda", "rocm", "vulkan", "intel", "musa"}:
            return GpuReport(source="none", reason="no model uses a GPU platform")
        if self.engine is None:
            return GpuReport(source="none", reason="the engine is not reachable")
        reasons = []
        if self._local():
            for look in (nvml_gpus, list_gpus):
                report = look()
                if report.available:
                    return report
                reasons.append(report.reason or report.source)
        for platform in ("cuda", "rocm"):
            image = next((m.image for m in config.models.values() if m.platform == platform),
                         None)
            if image is None:
                continue
            report = probe_container(self.engine, image, platform,
                                     labels={"io.llamaswap.instance": config.docker.instance})
            if report.available:
                return report
            reasons.append(report.reason or report.source)
        return GpuReport(source="none", reason="; ".join(r for r in reasons if r)
                         or "no probe applies: declare docker.gpus")

    def _local(self) -> bool:
        if self.engine is None:
            return False
        base_url = str(getattr(self.engine.client.api, "base_url", ""))
        return "unix" in base_url or base_url.startswith("http+docker://local")

    def _take(self, report: GpuReport, placed: Mapping[str, Placement]) -> None:
        self.report, self.captured_at = report, time.time()
        ours: dict[str, int] = {}
        by_id = {self.qualified(gpu.id): gpu for gpu in report.gpus}
        for placement in placed.values():
            for device in placement.devices:
                gpu = by_id.get(device)
                if gpu is not None and gpu.memory_total_mib is not None:
                    held = placement.per_device
                    ours[device] = ours.get(device, 0) + (
                        gpu.memory_total_mib << 20 if held is None else held)
        self.foreign = {gpu.id: max(0, ((gpu.memory_used_mib or 0) << 20)
                                    - ours.get(self.qualified(gpu.id), 0))
                        for gpu in report.gpus}

    def devices(self) -> tuple[Device, ...]:
        """What placement may use of each GPU: its memory less what others use."""
        return tuple(
            Device(self.qualified(gpu.id),
                   (gpu.memory_total_mib << 20) - self.foreign.get(gpu.id, 0),
                   self.engine_name, gpu.name or "")
            for gpu in self.report.gpus if gpu.memory_total_mib is not None)

    def used(self, device_ids: tuple[str, ...]) -> int | None:
        """Bytes used on these GPUs at the last look (None when unknown)."""
        total = 0
        for gpu in self.report.gpus:
            if self.qualified(gpu.id) in device_ids:
                if gpu.memory_used_mib is None:
                    return None
                total += gpu.memory_used_mib << 20
        return total

    async def look(self, config: Config, placed: Callable[[], Mapping[str, Placement]]) -> None:
        """Look at found GPUs again now (one look at a time; asked during one: one more)."""
        if not self.live:
            return
        if self._refreshing is not None and not self._refreshing.done():
            self._again = True
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.ensure_future(self._look(config, placed))
        await asyncio.shield(self._refreshing)

    async def _look(self, config: Config, placed: Callable[[], Mapping[str, Placement]]) -> None:
        while True:
            self._again = False
            try:
                report = await asyncio.to_thread(self._discover, config)
            except Exception as exc:  # noqa: BLE001 - keep the last report
                logger.opt(exception=exc).warning("GPU inventory refresh failed: {}", exc)
                return
            if report.available:
                self._take(report, placed())
            if not self._again:
                return

    def to_json(self, router: str, placed: Mapping[str, Placement],
                states: Mapping[str, str]) -> dict[str, Any]:
        """``GET /api/hardware``: llama-swap's snapshot fields, then ours per GPU."""
        captured = (datetime.fromtimestamp(self.captured_at, timezone.utc).isoformat()
                    if self.captured_at else None)
        declared = self.report.source == "declared"
        devices = {device.id: device for device in self.devices()}
        gpus = []
        for gpu in self.report.gpus:
            total = gpu.memory_total_mib << 20 if gpu.memory_total_mib is not None else None
            models = []
            placed_bytes = 0
            for model_id, placement in sorted(placed.items()):
                if self.qualified(gpu.id) in placement.devices:
                    held = placement.per_device if placement.per_device is not None else total
                    placed_bytes += held or 0
                    models.append({"model": model_id, "bytes": held,
                                   "state": states.get(model_id, "unknown")})
            usable = (devices[self.qualified(gpu.id)].memory if self.qualified(gpu.id) in devices
                      else None)
            gpus.append({
                "id": self.qualified(gpu.id), "index": gpu.index, "uuid": gpu.uuid, "name": gpu.name,
                "vendor": gpu.vendor, "memory_total_bytes": total,
                "memory_used_bytes": None if declared or gpu.memory_used_mib is None
                else gpu.memory_used_mib << 20,
                "memory_usable_bytes": usable, "placed_bytes": placed_bytes,
                "free_bytes": None if usable is None else usable - placed_bytes,
                "models": models,
            })
        return {
            "schema_version": 1,
            "captured_at": captured,
            "capture": {"scope": "inference_host", "method": "declared" if declared else "detected",
                        "detector": {"name": self.report.source, "version": None}},
            "accelerators": [{
                "index": gpu.index, "kind": "gpu", "vendor": gpu.vendor, "model": gpu.name,
                "architecture": None,
                "memory": {"kind": "dedicated", "capacity_bytes": gpu.memory_total_mib << 20
                           if gpu.memory_total_mib is not None else None},
                "driver": {"name": gpu.vendor, "version": gpu.driver_version}
                if gpu.driver_version else None,
                "power_limit_watts": None,
            } for gpu in self.report.gpus],
            "router": router,
            "engine": self.engine_name or "default",
            "source": self.report.source,
            "reason": self.report.reason,
            "gpus": gpus,
        }


class Inventories:
    """Every engine's GPUs (``engines:``), as one inventory: placement sees the GPUs of all
    engines, each id qualified by its engine (``box2:0``)."""

    def __init__(self, engines: Mapping[str, Engine | None]) -> None:
        self.parts = {name: Inventory(engine, name) for name, engine in engines.items()}

    @property
    def report(self) -> GpuReport:
        reports = [part.report for part in self.parts.values()]
        reasons = [f"{name}: {part.report.reason}" for name, part in self.parts.items()
                   if part.report.reason]
        return GpuReport(tuple(gpu for r in reports for gpu in r.gpus),
                         ",".join(sorted({r.source for r in reports})) or "none",
                         "; ".join(reasons) or None)

    @property
    def live(self) -> bool:
        return any(part.live for part in self.parts.values())

    @property
    def quick(self) -> bool:
        # A measurement compares one engine's GPUs before and after: all must be quick.
        return bool(self.parts) and all(part.quick for part in self.parts.values())

    def reconnected(self, name: str, engine: Engine | None) -> None:
        """The engine ``name`` answers again (on a new connection), or went away (None)."""
        self.parts[name].engine = engine

    async def discover(self, config: Config, placed: Mapping[str, Placement]) -> GpuReport:
        for part in self.parts.values():
            await part.discover(config, placed)
        return self.report

    async def discover_one(self, name: str, config: Config,
                           placed: Mapping[str, Placement]) -> None:
        await self.parts[name].discover(config, placed)

    async def look(self, config: Config, placed: Callable[[], Mapping[str, Placement]]) -> None:
        for part in self.parts.values():
            await part.look(config, placed)

    def devices(self) -> tuple[Device, ...]:
        """The GPUs of the engines that answer (placement leaves a gone engine alone)."""
        return tuple(device for part in self.parts.values() if part.engine is not None
                     for device in part.devices())

    def used(self, device_ids: tuple[str, ...]) -> int | None:
        total = 0
        for part in self.parts.values():
            if any(device.id in device_ids for device in part.devices()):
                used = part.used(device_ids)
                if used is None:
                    return None
                total += used
        return total

    def to_json(self, router: str, placed: Mapping[str, Placement],
                states: Mapping[str, str]) -> dict[str, Any]:
        """The first engine's snapshot fields, every engine's GPUs, and ``engines``."""
        parts = [part.to_json(router, placed, states) for part in self.parts.values()]
        if not parts:
            return {"router": router, "gpus": [], "engines": []}
        first = dict(parts[0])
        first["gpus"] = [{**gpu, "engine": part["engine"]} for part in parts
                         for gpu in part["gpus"]]
        first["accelerators"] = [acc for part in parts for acc in part["accelerators"]]
        first["engine"] = ",".join(str(part["engine"]) for part in parts)
        first["source"] = self.report.source
        first["reason"] = self.report.reason
        return first
