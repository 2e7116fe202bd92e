"""GPU facts: which GPUs an engine has, their memory and what is used of it.

Four sources, all giving a ``GpuReport`` (``lifecycle/inventory.py`` picks one):

- declared in the config (``docker.gpus``): any vendor, and tests;
- NVML (``nvidia-ml-py``) or ``nvidia-smi`` on the proxy's host, when the proxy shares the
  engine's host (``nvml_gpus``, ``list_gpus``);
- a short-lived probe container given the platform's GPUs (``probe_container``): the NVIDIA
  container runtime puts ``nvidia-smi`` in any container given GPUs; ROCm images carry
  ``rocm-smi``, whose ``--showmeminfo vram --json`` is parsed by ``parse_rocm_smi``.

``list_gpus()`` never raises for a host without GPUs: a missing ``nvidia-smi``, a driver that
does not answer, or a timeout give an empty ``GpuReport`` whose ``reason`` says why. The query
is the one NVIDIA documents for scripts (``nvidia-smi --help-query-gpu``)::

    nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,driver_version \\
               --format=csv,noheader,nounits

Fields a GPU cannot report come back as ``[N/A]`` or ``[Not Supported]``; they become None.
The indices are ``nvidia-smi``'s (PCI bus order): the ones ``gpus: [0, 1]`` means for
``platform: cuda`` (see ``runtime/devices.py``).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Gpu", "GpuReport", "NVIDIA_SMI_FIELDS", "PROBE_COMMANDS", "declared_gpus", "list_gpus",
    "nvml_gpus", "parse_nvidia_smi", "parse_rocm_smi", "probe_container",
]

#: The columns asked of ``nvidia-smi``, in order.
NVIDIA_SMI_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "driver_version")
#: The probe container's query: what placement needs, in nvidia-smi's documented form.
_PROBE_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used")
#: What a probe container runs, by platform (its entrypoint and arguments).
PROBE_COMMANDS: dict[str, tuple[str, ...]] = {
    "cuda": ("nvidia-smi", f"--query-gpu={','.join(_PROBE_FIELDS)}",
             "--format=csv,noheader,nounits"),
    "rocm": ("rocm-smi", "--showmeminfo", "vram", "--json"),
}
#: Seconds a probe container may take (an image already on the engine; no pull).
PROBE_TIMEOUT = 60.0
#: Label on probe containers (never on model containers: they are not the instance's models).
PROBE_LABEL = "io.llamaswap.gpu-probe"
#: Seconds ``nvidia-smi`` may take: it can hang while a driver initialises.
NVIDIA_SMI_TIMEOUT = 10.0
_NOT_AVAILABLE = frozenset({"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]"})


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi`` reports it; None where it reports ``[N/A]``."""

    index: int
    uuid: str | None
    name: str | None
    memory_total_mib: int | None
    memory_used_mib: int | None
    driver_version: str | None
    vendor: str = "nvidia"
    #: The id containers select it by when not its index (a declared UUID).
    device_id: str | None = None

    @property
    def id(self) -> str:
        """What ``gpus:``, device requests and ``LLAMASWAP_DEVICES`` call it."""
        return self.device_id or str(self.index)

    @property
    def memory_free_mib(self) -> int | None:
        """Total minus used memory, when both are known."""
        if self.memory_total_mib is None or self.memory_used_mib is None:
            return None
        return self.memory_total_mib - self.memory_used_mib

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API and the CLI."""
        data = asdict(self)
        del data["device_id"]
        return {"id": self.id, **data, "memory_free_mib": self.memory_free_mib}


@dataclass(frozen=True)
class GpuReport:
    """The host's GPUs, or none and the reason (no driver, no ``nvidia-smi``...)."""

    gpus: tuple[Gpu, ...] = ()
    #: Where the facts came from, e.g. "nvidia-smi".
    source: str = "nvidia-smi"
    #: Why the list is empty or incomplete; None when every line parsed.
    reason: str | None = None
    #: Output lines that could not be parsed, kept for a bug report.
    skipped: tuple[str, ...] = field(default=())

    @property
    def available(self) -> bool:
        """Whether any GPU was found."""
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API and the CLI."""
        return {
            "available": self.available,
            "source": self.source,
            "reason": self.reason,
            "gpus": [gpu.to_dict() for gpu in self.gpus],
            "skipped": list(self.skipped),
        }


def parse_nvidia_smi(text: str, fields: Sequence[str] = NVIDIA_SMI_FIELDS
                     ) -> tuple[list[Gpu], list[str]]:
    """Parse ``--format=csv,noheader,nounits`` output into GPUs, plus the lines that did not parse.

    ``fields``: the query's columns (``NVIDIA_SMI_FIELDS``, or without ``driver_version``).
    Tolerates blank lines, spaces after commas, ``[N/A]`` fields and a header line (from a
    query without ``noheader``).
    """
    gpus: list[Gpu] = []
    skipped: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        [row] = list(csv.reader([line], skipinitialspace=True)) or [[]]
        row = [cell.strip() for cell in row]
        if row and row[0].lower() == "index":
            continue  # a header
        # GPU names contain no commas today; should one, the name takes the extra cells.
        if len(row) > len(fields):
            extra = len(row) - len(fields)
            row = [*row[:2], ", ".join(row[2 : 3 + extra]), *row[3 + extra :]]
        if len(row) != len(fields) or not row[0].isdigit():
            skipped.append(line)
            continue
        index, uuid, name, total, used, driver = (*row, "")[:6]
        gpus.append(Gpu(
            index=int(index),
            uuid=_text(uuid),
            name=_text(name),
            memory_total_mib=_mib(total),
            memory_used_mib=_mib(used),
            driver_version=_text(driver) if driver else None,
        ))
    return gpus, skipped


def parse_rocm_smi(text: str) -> tuple[list[Gpu], list[str]]:
    """Parse ``rocm-smi --showmeminfo vram --json`` into GPUs, plus the entries that did not.

    Its documented shape: one object per card, ``{"card0": {"VRAM Total Memory (B)": "…",
    "VRAM Total Used Memory (B)": "…"}, …}``, byte counts as strings; other keys (``system``,
    product names when asked for) are tolerated.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return [], [line for line in text.splitlines() if line.strip()]
    if not isinstance(data, dict):
        return [], [text.strip()]
    gpus: list[Gpu] = []
    skipped: list[str] = []
    for key, entry in data.items():
        match = _ROCM_CARD_RE.match(str(key))
        if match is None or not isinstance(entry, dict):
            if key != "system":
                skipped.append(str(key))
            continue
        total = _bytes_as_mib(entry.get("VRAM Total Memory (B)"))
        used = _bytes_as_mib(entry.get("VRAM Total Used Memory (B)"))
        if total is None:
            skipped.append(str(key))
            continue
        name = next((str(entry[k]) for k in ("Card Series", "Card series", "Card model",
                                              "Card SKU") if entry.get(k)), None)
        uuid = entry.get("Unique ID")
        gpus.append(Gpu(index=int(match.group(1)), uuid=str(uuid) if uuid else None,
                        name=name, memory_total_mib=total, memory_used_mib=used,
                        driver_version=None, vendor="amd"))
    gpus.sort(key=lambda gpu: gpu.index)
    return gpus, skipped


def declared_gpus(declared: Sequence[Any]) -> GpuReport:
    """The config's ``docker.gpus`` as a report: nothing used (placement counts its own)."""
    gpus = []
    for position, gpu in enumerate(declared):
        gpu_id = str(gpu.id)
        gpus.append(Gpu(
            index=int(gpu_id) if gpu_id.isdigit() else position,
            uuid=None if gpu_id.isdigit() else gpu_id,
            name=gpu.name or None, memory_total_mib=gpu.memory >> 20, memory_used_mib=0,
            driver_version=None, vendor="declared",
            device_id=None if gpu_id.isdigit() else gpu_id))
    return GpuReport(gpus=tuple(gpus), source="declared")


def nvml_gpus() -> GpuReport:
    """The host's NVIDIA GPUs through NVML (``pip install nvidia-ml-py``); never raises."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return GpuReport(source="nvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_*: no driver, no library
        return GpuReport(source="nvml", reason=f"NVML could not start: {exc}")
    try:
        driver = _decoded(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(index=index, uuid=_decoded(pynvml.nvmlDeviceGetUUID(handle)),
                            name=_decoded(pynvml.nvmlDeviceGetName(handle)),
                            memory_total_mib=memory.total >> 20,
                            memory_used_mib=memory.used >> 20, driver_version=driver))
    except Exception as exc:  # noqa: BLE001 - a GPU that fails a query
        return GpuReport(source="nvml", reason=f"NVML query failed: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing to do about it
            pass
    return GpuReport(gpus=tuple(gpus), source="nvml",
                     reason=None if gpus else "NVML lists no GPUs")


def probe_container(engine: Any, image: str, platform: str, *,
                    timeout: float = PROBE_TIMEOUT, labels: dict[str, str] | None = None
                    ) -> GpuReport:
    """Run the platform's query in a short-lived container of ``image`` given every GPU
    (blocking: call from a worker thread); the container is removed on every path.

    Never raises: a missing image, an engine without the GPU runtime, or a query that fails
    give an empty report whose ``reason`` says why.
    """
    from llamaswap_docker.runtime.devices import platform_options
    from llamaswap_docker.runtime.spec import ContainerSpec

    command = PROBE_COMMANDS.get(platform)
    source = f"probe:{command[0]}" if command else "probe"
    if command is None:
        return GpuReport(source=source, reason=f"no probe for platform {platform!r}")
    options = platform_options(platform)
    spec = ContainerSpec(model_id="gpu-probe", image=image, entrypoint=command[:1],
                         command=command[1:], devices=options.devices,
                         group_add=options.group_add, device_requests=options.device_requests,
                         env=options.env, runtime=options.runtime)
    kwargs = spec.container_kwargs(cdi=getattr(engine, "is_podman", False))
    kwargs.pop("detach", None)
    kwargs["labels"] = {PROBE_LABEL: "true", **(labels or {})}
    kwargs["network_disabled"] = True  # it only reads the GPUs
    container = None
    try:
        container = engine.client.containers.create(**kwargs)
        container.start()
        result = container.wait(timeout=timeout)
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 - docker-py's errors and timeouts alike
        return GpuReport(source=source, reason=f"GPU probe with image {image} failed: "
                         f"{_first_line(str(exc)) or type(exc).__name__}")
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - gone already, or the engine is: nothing more
                pass
    code = result.get("StatusCode") if isinstance(result, dict) else None
    if code:
        return GpuReport(source=source, reason=f"{command[0]} in the probe container exited "
                         f"with code {code}: {_first_line(output) or 'no output'}")
    if platform == "rocm":
        gpus, skipped = parse_rocm_smi(output)
    else:
        gpus, skipped = parse_nvidia_smi(output, _PROBE_FIELDS)
    reason = None
    if skipped:
        reason = f"{len(skipped)} line(s) of {command[0]} output could not be parsed"
    elif not gpus:
        reason = f"{command[0]} lists no GPUs"
    return GpuReport(gpus=tuple(gpus), source=source, reason=reason, skipped=tuple(skipped))


def list_gpus(
    nvidia_smi: str = "nvidia-smi",
    *,
    timeout: float = NVIDIA_SMI_TIMEOUT,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> GpuReport:
    """The host's NVIDIA GPUs (blocking: call from a worker thread); never raises for no GPUs.

    Args:
        nvidia_smi: the ``nvidia-smi`` executable (a name on PATH, or a path).
        timeout: seconds to wait for it.
        run: ``subprocess.run`` or a stand-in with its signature (tests).

    Returns:
        A ``GpuReport``: the GPUs, or none and the ``reason``.
    """
    command: Sequence[str] = [
        nvidia_smi,
        f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
        "--format=csv,noheader,nounits",
    ]
    try:
        result = run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return GpuReport(reason=f"{nvidia_smi} not found: no NVIDIA driver on this host")
    except PermissionError:
        return GpuReport(reason=f"{nvidia_smi} is not executable by this user")
    except subprocess.TimeoutExpired:
        return GpuReport(reason=f"{nvidia_smi} did not answer within {timeout:g}s")
    except OSError as exc:
        return GpuReport(reason=f"{nvidia_smi} could not run: {exc.strerror or exc}")
    if result.returncode != 0:
        # e.g. "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        message = _first_line(result.stderr) or _first_line(result.stdout) or "no output"
        return GpuReport(reason=f"{nvidia_smi} exited with code {result.returncode}: {message}")
    gpus, skipped = parse_nvidia_smi(result.stdout)
    reason = None
    if skipped:
        reason = f"{len(skipped)} line(s) of {nvidia_smi} output could not be parsed"
    elif not gpus:
        reason = f"{nvidia_smi} lists no GPUs"
    return GpuReport(gpus=tuple(gpus), reason=reason, skipped=tuple(skipped))


_ROCM_CARD_RE = re.compile(r"^card(\d+)$")


def _bytes_as_mib(value: Any) -> int | None:
    try:
        return int(str(value).strip()) >> 20
    except (TypeError, ValueError):
        return None


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(value: str) -> str | None:
    return None if value.lower() in _NOT_AVAILABLE else value


def _mib(value: str) -> int | None:
    if _text(value) is None:
        return None
    try:
        return int(float(value.split()[0]))  # "81559", or "81559 MiB" without nounits
    except (ValueError, IndexError):
        return None


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""
