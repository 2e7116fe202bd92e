"""``ContainerSpec``: everything the engine needs to run one model, and its hash.

The spec is resolved from config once; its hash goes on the container as a label so a restarted
proxy can tell whether a running container still matches the config (adopt) or not (replace).
The model's ``platform`` and ``gpus`` become device options here (``runtime/devices.py``);
variables the backend passes from the proxy's environment (``HF_TOKEN``) are read here too,
kept out of the hash and out of the spec's repr. Where placement put the model (``with_gpus``:
the GPUs the scheduler chose) is kept out of the hash too: a restarted proxy adopts a
container on whichever GPUs it was placed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llamaswap_docker.runtime.devices import cdi_device_names, platform_options

#: Every placed container's GPUs, on every platform, for servers that want to read them.
DEVICES_ENV = "LLAMASWAP_DEVICES"

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
    security_opt: tuple[str, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()
    #: (name, soft, hard), sorted: ``docker run --ulimit``.
    ulimits: tuple[tuple[str, int, int], ...] = ()
    # Each entry: {"Driver", "Count", "DeviceIDs", "Capabilities"} as the engine takes them.
    device_requests: tuple[tuple[tuple[str, Any], ...], ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())
    #: Variables copied from the proxy's environment (``HF_TOKEN``): secrets, so neither in the
    #: hash (a proxy restarted without them would replace every adopted container) nor in repr.
    passed_env: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    #: Variable the server reads its API key from (the name is part of the spec).
    key_env: str | None = None
    #: The key itself, new at every start (``with_new_key``): never in the hash, labels, repr.
    upstream_key: str | None = field(default=None, repr=False, compare=False)
    #: The platform the device options came from (they are hashed; this only re-derives them
    #: for a placement).
    platform: str = field(default="cpu", compare=False)
    vulkan_driver: str = field(default="mesa", compare=False)
    #: The GPUs placement chose (``with_gpus``) and the bytes the model holds on each: not in
    #: the hash, on the container as labels.
    gpu_ids: tuple[str, ...] | None = field(default=None, compare=False)
    gpu_bytes: int | None = field(default=None, compare=False)

    @classmethod
    def from_model(
        cls, model_id: str, model: "ModelConfig", environ: Mapping[str, str] | None = None
    ) -> "ContainerSpec":
        """Resolve a model's config (macros already expanded) into a container spec.

        The platform's device options fill ``devices``, ``groupAdd`` and ``runtime`` unless the
        model's ``docker`` block sets them (then the user's list replaces the platform's: that
        is how to pass only some ``/dev/dri`` nodes); the platform's variables come under the
        model's ``env``. ``environ`` (default ``os.environ``) supplies the backend's pass-through
        variables.
        """
        options = model.docker
        written = options.model_fields_set
        platform = platform_options(model.platform, model.gpus, vulkan_driver=model.vulkan_driver)
        environ = os.environ if environ is None else environ
        return cls(
            model_id=model_id,
            image=model.image,
            command=tuple(model.cmd),
            port=model.port,
            env=tuple(sorted({**dict(platform.env), **options.env_from_files,
                              **model.env}.items())),
            volumes=tuple(model.volumes),
            entrypoint=tuple(options.entrypoint) if options.entrypoint is not None else None,
            user=options.user,
            shm_size=options.shm_size,
            ipc_mode=options.ipc,
            mem_limit=options.memory,
            nano_cpus=int(options.cpus * 1e9) if options.cpus else None,
            devices=tuple(options.devices) if "devices" in written else platform.devices,
            group_add=tuple(options.group_add) if "group_add" in written else platform.group_add,
            runtime=options.runtime if "runtime" in written else platform.runtime,
            privileged=options.privileged,
            cap_add=tuple(options.cap_add),
            security_opt=tuple(options.security_opt),
            extra_hosts=tuple(sorted(options.extra_hosts.items())),
            ulimits=tuple(sorted((name, soft, hard)
                                 for name, (soft, hard) in options.ulimits.items())),
            device_requests=platform.device_requests,
            labels=tuple(sorted(options.labels.items())),
            passed_env=tuple((name, environ[name]) for name in model.pass_env if name in environ),
            key_env=model.key_env,
            platform=model.platform,
            vulkan_driver=model.vulkan_driver,
        )

    def with_new_key(self) -> "ContainerSpec":
        """This spec with a fresh random API key for the server, when it takes one."""
        if self.key_env is None:
            return self
        return replace(self, upstream_key=secrets.token_urlsafe(32))

    def with_gpus(self, gpu_ids: tuple[str, ...], per_gpu: int | None = None) -> "ContainerSpec":
        """This spec on exactly these GPUs (placement's choice); ``per_gpu``: the bytes the
        model holds on each, recorded on the container."""
        return replace(self, gpu_ids=tuple(gpu_ids), gpu_bytes=per_gpu)

    @property
    def spec_hash(self) -> str:
        """Short stable hash of every field but the secrets (``passed_env``, ``upstream_key``)
        and the placement: equal specs, equal hashes."""
        fields = asdict(self)
        for name in ("passed_env", "upstream_key", "platform", "vulkan_driver", "gpu_ids",
                     "gpu_bytes"):
            del fields[name]
        if not fields["ulimits"]:
            del fields["ulimits"]  # added later: hashes of specs without any stay as they were
        canonical = json.dumps(fields, sort_keys=True, default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def container_kwargs(self, cdi: bool = False) -> dict[str, Any]:
        """Keyword arguments for docker-py's ``containers.create`` (labels, name, network apart).

        Args:
            cdi: pass NVIDIA device requests as CDI device names (``nvidia.com/gpu=all``)
                instead, for engines that ignore device requests (Podman's Docker API).
        """
        devices = list(self.devices)
        requests = [dict(request) for request in self.device_requests]
        env = {**dict(self.env), **self._placed_env()}
        if self.gpu_ids is not None and requests:
            # Exactly the placed GPUs: the platform's request for those ids replaces "all"/N.
            placed = platform_options(self.platform, list(self.gpu_ids),
                                      vulkan_driver=self.vulkan_driver).device_requests
            requests = [dict(request) for request in placed] or requests
        if cdi:
            kept = []
            for request in requests:
                names = cdi_device_names(request)
                if names is None:
                    kept.append(request)
                else:
                    devices += [name for name in names if name not in devices]
            requests = kept
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": list(self.command) or None,
            "environment": {**env, **dict(self.passed_env), **(
                {self.key_env: self.upstream_key} if self.key_env and self.upstream_key else {})},
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
            "devices": devices or None,
            "group_add": list(self.group_add) or None,
            "runtime": self.runtime,
            "privileged": self.privileged or None,
            "cap_add": list(self.cap_add) or None,
            "security_opt": list(self.security_opt) or None,
            "extra_hosts": dict(self.extra_hosts) or None,
            "ulimits": _ulimits(self.ulimits),
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        if requests:
            from docker.types import DeviceRequest

            kwargs["device_requests"] = [
                DeviceRequest(
                    driver=request.get("Driver", ""),
                    count=request.get("Count", 0),
                    device_ids=list(request.get("DeviceIDs") or ()) or None,
                    capabilities=[list(group) for group in request.get("Capabilities") or ()]
                    or None,
                    options=dict(request.get("Options") or {}) or None,
                )
                for request in requests
            ]
        return kwargs

    def _placed_env(self) -> dict[str, str]:
        """The placed GPUs in the platform's selection variable, and ``LLAMASWAP_DEVICES``."""
        if self.gpu_ids is None:
            return {}
        ids = list(self.gpu_ids)
        env = {name: value for name, value in platform_options(
            self.platform, ids, vulkan_driver=self.vulkan_driver).env}
        if self.platform == "cuda":
            # The device request shows the container only its GPUs, numbered from 0 there:
            # CUDA_VISIBLE_DEVICES counts in the container's numbering, not the host's.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in range(len(ids)))
        env[DEVICES_ENV] = ",".join(ids)
        return env


def _ulimits(limits: tuple[tuple[str, int, int], ...]) -> list[Any] | None:
    if not limits:
        return None
    from docker.types import Ulimit

    return [Ulimit(name=name, soft=soft, hard=hard) for name, soft, hard in limits]
