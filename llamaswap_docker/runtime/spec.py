"""``ContainerSpec``: everything the engine needs to run one model, and its hash.

The spec is resolved from config once; its hash goes on the container as a label so a restarted
proxy can tell whether a running container still matches the config (adopt) or not (replace).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llamaswap_docker.config import ModelConfig

__all__ = ["ContainerSpec"]

@dataclass(frozen=True)
class ContainerSpec:
    """A model's container, resolved from config: image, command, port and host options."""

    model_id: str
    image: str
    command: tuple[str, ...] = ()
    port: int = 8080
    env: tuple[tuple[str, str], ...] = ()
    volumes: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    user: str | None = None
    shm_size: int | None = None
    ipc_mode: str | None = None
    mem_limit: int | None = None
    nano_cpus: int | None = None
    devices: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    runtime: str | None = None
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()
    # Each entry: {"Driver", "Count", "DeviceIDs", "Capabilities"} as the engine takes them.
    device_requests: tuple[tuple[tuple[str, Any], ...], ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_model(cls, model_id: str, model: "ModelConfig") -> "ContainerSpec":
        """Resolve a model's config (macros already expanded) into a container spec."""
        options = model.docker
        return cls(
            model_id=model_id,
            image=model.image,
            command=tuple(model.cmd),
            port=model.port,
            env=tuple(sorted(model.env.items())),
            volumes=tuple(model.volumes),
            entrypoint=tuple(options.entrypoint) if options.entrypoint is not None else None,
            user=options.user,
            shm_size=options.shm_size,
            ipc_mode=options.ipc,
            mem_limit=options.memory,
            nano_cpus=int(options.cpus * 1e9) if options.cpus else None,
            devices=tuple(options.devices),
            group_add=tuple(options.group_add),
            runtime=options.runtime,
            privileged=options.privileged,
            cap_add=tuple(options.cap_add),
            extra_hosts=tuple(sorted(options.extra_hosts.items())),
            labels=tuple(sorted(options.labels.items())),
        )

    @property
    def spec_hash(self) -> str:
        """Short stable hash of every field: equal specs, equal hashes."""
        canonical = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def container_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for docker-py's ``containers.create`` (labels, name, network apart)."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": list(self.command) or None,
            "environment": dict(self.env),
            "volumes": list(self.volumes),
            "detach": True,
        }
        optional = {
            "entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "user": self.user,
            "shm_size": self.shm_size,
            "ipc_mode": self.ipc_mode,
            "mem_limit": self.mem_limit,
            "nano_cpus": self.nano_cpus,
            "devices": list(self.devices) or None,
            "group_add": list(self.group_add) or None,
            "runtime": self.runtime,
            "privileged": self.privileged or None,
            "cap_add": list(self.cap_add) or None,
            "extra_hosts": dict(self.extra_hosts) or None,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        if self.device_requests:
            from docker.types import DeviceRequest

            kwargs["device_requests"] = [
                DeviceRequest(
                    driver=request.get("Driver", ""),
                    count=request.get("Count", 0),
                    device_ids=request.get("DeviceIDs") or None,
                    capabilities=request.get("Capabilities") or None,
                    options=request.get("Options") or None,
                )
                for request in map(dict, self.device_requests)
            ]
        return kwargs
