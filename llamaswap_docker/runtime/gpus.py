"""Host GPU facts from ``nvidia-smi``: which GPUs there are, their memory and driver.

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
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Gpu", "GpuReport", "NVIDIA_SMI_FIELDS", "list_gpus", "parse_nvidia_smi"]

#: The columns asked of ``nvidia-smi``, in order.
NVIDIA_SMI_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "driver_version")
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

    @property
    def memory_free_mib(self) -> int | None:
        """Total minus used memory, when both are known."""
        if self.memory_total_mib is None or self.memory_used_mib is None:
            return None
        return self.memory_total_mib - self.memory_used_mib

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API and the CLI."""
        return {**asdict(self), "memory_free_mib": self.memory_free_mib}


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


def parse_nvidia_smi(text: str) -> tuple[list[Gpu], list[str]]:
    """Parse ``--format=csv,noheader,nounits`` output into GPUs, plus the lines that did not parse.

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
        if len(row) > len(NVIDIA_SMI_FIELDS):
            extra = len(row) - len(NVIDIA_SMI_FIELDS)
            row = [*row[:2], ", ".join(row[2 : 3 + extra]), *row[3 + extra :]]
        if len(row) != len(NVIDIA_SMI_FIELDS) or not row[0].isdigit():
            skipped.append(line)
            continue
        index, uuid, name, total, used, driver = row
        gpus.append(Gpu(
            index=int(index),
            uuid=_text(uuid),
            name=_text(name),
            memory_total_mib=_mib(total),
            memory_used_mib=_mib(used),
            driver_version=_text(driver),
        ))
    return gpus, skipped


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
