"""What a config lets its model containers do to the host, said out loud.

A config can give a container the host: ``privileged``, added capabilities, the host's IPC
namespace, an unconfined seccomp or AppArmor profile, host devices, the Docker socket or a system
folder as a volume. All stay valid (GPU stacks need some of them); each is reported, per model,
with the field that asks for it — or, when a backend preset adds it, with the ``backend`` line
and the preset named — so that nobody grants them by accident, and so that whoever may write
the config file (``--watch-config``) is known to hold that much power.
"""

from __future__ import annotations

import posixpath

from pydantic.alias_generators import to_camel

from llamaswap_docker.config.schema import Config, Loc, ModelConfig, VolumeMount

__all__ = ["host_risks"]

#: Host folders whose mount, or a path below them, hands over the host's system.
_SYSTEM_TREES = ("/etc", "/boot", "/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib",
                 "/lib64", "/var/lib/docker", "/var/lib/containerd")
#: Folders whose whole mount does (below them live ordinary data: models under /home/me).
_SYSTEM_ROOTS = ("/", "/root", "/home", "/var", "/run", "/var/run")
#: Device nodes GPU platforms pass (NVIDIA, AMD, Intel, Moore Threads): anything else is noted.
_GPU_DEVICE_PREFIXES = ("/dev/dri", "/dev/kfd", "/dev/nvidia", "/dev/mtgpu", "/dev/mtgpu.")


def host_risks(config: Config) -> list[tuple[Loc, str]]:
    """``(location, message)`` for every host-level power a model's container is given."""
    risks: list[tuple[Loc, str]] = []
    for model_id, model in config.models.items():
        risks += _model_risks(model_id, model)
    return risks


def _model_risks(model_id: str, model: ModelConfig) -> list[tuple[Loc, str]]:
    options = model.docker
    written = options.model_fields_set
    base: Loc = ("models", model_id)

    def where(field: str) -> tuple[Loc, str]:
        """The field's own line when the user wrote it; else the backend's, naming the preset."""
        if field in written:
            return (*base, "docker", to_camel(field)), ""
        return (*base, "backend"), f" (added by the {model.backend} preset for {model.platform})"

    risks: list[tuple[Loc, str]] = []
    if options.privileged:
        loc, origin = where("privileged")
        risks.append((loc, "the container runs privileged: every host device and most kernel "
                           f"interfaces, root on the host in effect{origin}"))
    if options.cap_add:
        loc, origin = where("cap_add")
        caps = ", ".join(options.cap_add)
        risks.append((loc, f"the container gets the capabilities {caps}{origin}"))
    if options.ipc == "host":
        loc, origin = where("ipc")
        risks.append((loc, "the container shares the host's IPC namespace (its shared memory "
                           f"and semaphores){origin}"))
    for option in options.security_opt:
        if "unconfined" in option or option.replace(":", "=") == "label=disable":
            loc, origin = where("security_opt")
            risks.append((loc, f"{option!r} turns the kernel's confinement of the "
                               f"container off{origin}"))
    if "devices" in written:
        for index, device in enumerate(options.devices):
            host = posixpath.normpath(device.split(":", 1)[0])
            if "=" in host:
                continue  # a CDI name (nvidia.com/gpu=0), not a host path
            if not host.startswith(_GPU_DEVICE_PREFIXES):
                risks.append(((*base, "docker", "devices", index),
                              f"the container gets the host device {host}"))
    for index, volume in enumerate(model.volumes):
        mount = VolumeMount.parse(volume)
        if not mount.is_bind:
            continue
        source = posixpath.normpath(mount.source)
        if source.startswith("//"):
            source = "/" + source.lstrip("/")
        if source.endswith(".sock"):
            risks.append(((*base, "volumes", index), f"mounts the socket {source}: if it is a "
                          "container engine's (Docker, Podman, containerd), the container can "
                          "start containers of its own, root on the host"))
        elif source in _SYSTEM_ROOTS or "/.ssh" in source + "/" or any(
                source == tree or source.startswith(tree + "/") for tree in _SYSTEM_TREES):
            writable = "read-only" if mount.read_only else "writable"
            risks.append(((*base, "volumes", index),
                          f"mounts the host's {source} into the container ({writable})"))
    return risks
