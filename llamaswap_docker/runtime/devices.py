"""Platform → container device options: device requests, ``/dev`` nodes, groups, runtime, env.

``platform`` and ``gpus`` in a model's config become what ``docker run`` would need, as each
vendor documents it:

- ``cuda``: a device request ``driver nvidia, capabilities [[gpu]]`` with a count (``-1`` =
  all) or device ids, as ``docker run --gpus`` sends; the engine turns it into
  ``NVIDIA_VISIBLE_DEVICES`` (moby ``daemon/nvidia_linux.go``). ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
  makes CUDA number GPUs as ``nvidia-smi`` does, so index 0 is the same card for both
  (GPUStack #1633 is that mismatch).
- ``rocm``: ``/dev/kfd`` and ``/dev/dri``, groups ``video`` and ``render``
  (llama.cpp ``docs/docker.md``, vLLM ``gpu.rocm.inc.md``); selection through
  ``ROCR_VISIBLE_DEVICES``, which takes indices and UUIDs and is AMD's recommendation on Linux
  (https://rocm.docs.amd.com/projects/HIP/en/latest/reference/env_variables.html).
- ``vulkan``: ``/dev/dri`` and the ``video``/``render`` groups (Mesa drivers: AMD, Intel);
  selection through llama.cpp's ``GGML_VK_VISIBLE_DEVICES`` (indices). With
  ``vulkanDriver: nvidia`` a device request with the ``graphics`` capability instead, which
  the engine passes on as ``NVIDIA_DRIVER_CAPABILITIES`` (moby ``daemon/nvidia_linux.go``).
- ``intel``: ``/dev/dri`` and the groups (llama.cpp ``docs/docker.md``, vLLM
  ``gpu.xpu.inc.md``); selection through ``ONEAPI_DEVICE_SELECTOR=level_zero:N``
  (llama.cpp ``docs/backend/SYCL.md``; PyTorch XPU honours it too).
- ``musa``: the Moore Threads container runtime ``mthreads`` and ``MTHREADS_VISIBLE_DEVICES``
  (llama.cpp ``docs/docker.md`` "Docker With MUSA"; MooreThreads/torch_musa developer guide FAQ
  "Docker容器": ``--env MTHREADS_VISIBLE_DEVICES=all``).

Only one selection variable is set per platform: the runtimes stack them (a second variable
indexes into what the first left visible), so setting two would select the wrong GPUs.

Group names are resolved to the host's numeric ids where the host has the group: the
llama.cpp ROCm images define no ``video``/``render`` groups, so a name fails inside them
(llama.cpp ``docs/docker.md``). A proxy running in a container sees its own ``/etc/group``,
not the host's: set ``docker.groupAdd`` with numeric ids there.

Podman's Docker-compatible API ignores device requests (podman #22645): ``cdi_device_names``
gives the CDI names (``nvidia.com/gpu=all``) that ``ContainerSpec.container_kwargs(cdi=True)``
passes as devices instead, as ``podman run --device nvidia.com/gpu=all`` does
(https://docs.vllm.ai/en/stable/deployment/docker/).
"""

from __future__ import annotations

import grp
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DeviceOptions", "platform_options", "cdi_device_names", "device_request"]

#: One device request as ``ContainerSpec`` stores it: sorted (key, value) pairs, values tuples.
DeviceRequestSpec = tuple[tuple[str, Any], ...]

#: Driver capabilities a CUDA container gets from a plain ``[[gpu]]`` request (the CUDA images'
#: default); Vulkan needs ``graphics`` on top, and naming one capability drops the defaults.
_NVIDIA_VULKAN_CAPABILITIES = ("gpu", "compute", "utility", "graphics")
_DRI_GROUPS = ("video", "render")


@dataclass(frozen=True)
class DeviceOptions:
    """What a platform adds to a container: device requests, devices, groups, runtime, env."""

    device_requests: tuple[DeviceRequestSpec, ...] = ()
    devices: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    runtime: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def device_request(
    gpus: str | int | list[str] | None, capabilities: Iterable[str] = ("gpu",)
) -> DeviceRequestSpec:
    """An NVIDIA device request for ``gpus`` ("all"/None, a count, or ids), as the spec stores it."""
    count, ids = -1, ()
    if isinstance(gpus, int):
        count = gpus
    elif isinstance(gpus, list):
        count, ids = 0, tuple(gpus)  # the engine rejects Count together with DeviceIDs
    return (
        ("Capabilities", (tuple(capabilities),)),
        ("Count", count),
        ("DeviceIDs", ids),
        ("Driver", "nvidia"),
    )


def platform_options(
    platform: str, gpus: str | int | list[str] | None = None, *, vulkan_driver: str = "mesa"
) -> DeviceOptions:
    """The device options of ``platform`` for ``gpus`` (None or "all": every GPU).

    Raises:
        ValueError: ``platform`` is not one of cpu, cuda, rocm, vulkan, intel, musa.
    """
    if platform == "cpu":
        return DeviceOptions()
    if platform == "cuda":
        return DeviceOptions(
            device_requests=(device_request(gpus),), env=(("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),)
        )
    if platform == "vulkan" and vulkan_driver == "nvidia":
        return DeviceOptions(device_requests=(device_request(gpus, _NVIDIA_VULKAN_CAPABILITIES),))
    selection = _selection(gpus)
    if platform == "rocm":
        return DeviceOptions(
            devices=("/dev/kfd", "/dev/dri"),
            group_add=_host_groups(_DRI_GROUPS),
            env=_env(ROCR_VISIBLE_DEVICES=",".join(selection) if selection else None),
        )
    if platform == "vulkan":
        return DeviceOptions(
            devices=("/dev/dri",),
            group_add=_host_groups(_DRI_GROUPS),
            env=_env(GGML_VK_VISIBLE_DEVICES=",".join(selection) if selection else None),
        )
    if platform == "intel":
        selector = ";".join(f"level_zero:{gpu}" for gpu in selection) if selection else None
        return DeviceOptions(
            devices=("/dev/dri",),
            group_add=_host_groups(_DRI_GROUPS),
            env=_env(ONEAPI_DEVICE_SELECTOR=selector),
        )
    if platform == "musa":
        return DeviceOptions(
            runtime="mthreads",
            env=_env(MTHREADS_VISIBLE_DEVICES=",".join(selection) if selection else "all"),
        )
    raise ValueError(f"unknown platform {platform!r}")


def cdi_device_names(request: Mapping[str, Any]) -> list[str] | None:
    """CDI names (``nvidia.com/gpu=0``) for an NVIDIA device request; None for other requests."""
    capabilities = {cap for group in request.get("Capabilities") or () for cap in group}
    if request.get("Driver") != "nvidia" and "gpu" not in capabilities:
        return None
    ids = request.get("DeviceIDs") or ()
    count = request.get("Count", 0)
    if ids:
        names = list(ids)
    elif count and count > 0:
        names = [str(index) for index in range(count)]
    else:
        names = ["all"]
    return [f"nvidia.com/gpu={name}" for name in names]


def _selection(gpus: str | int | list[str] | None) -> list[str]:
    """GPU ids to make visible; [] for all of them. A count N means the first N."""
    if isinstance(gpus, int):
        return [str(index) for index in range(gpus)]
    if isinstance(gpus, list):
        return list(gpus)
    return []


def _env(**variables: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in variables.items() if value is not None)


def _host_groups(names: Iterable[str]) -> tuple[str, ...]:
    """Each group as the host's numeric id, or by name where the host has no such group."""
    resolved = []
    for name in names:
        try:
            resolved.append(str(grp.getgrnam(name).gr_gid))
        except KeyError:
            resolved.append(name)
    return tuple(resolved)
