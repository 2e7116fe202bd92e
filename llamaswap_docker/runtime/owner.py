"""One live proxy per instance: an owner record kept in the engine, with a liveness check.

Every proxy manages the containers labelled with its ``docker.instance``; two proxies on one
instance would adopt, reap and remove each other's models. The record is a volume named after
the instance (volumes are unique by name, and creating an existing one returns it unchanged,
so the first creator wins) whose labels say who owns the instance: pid, pid namespace and
boot of a process, or the container it runs in, plus the address it listens on.

An owner is alive while its container runs, or — on the same boot and pid namespace — while
its pid exists with the same start time. A recorded owner we cannot check (another pid
namespace, another machine) counts as alive: the error says how to take over by hand.
Graceful shutdowns remove the record; after a SIGKILL the next proxy takes it over.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import docker.errors
from loguru import logger

from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.runtime import labels
from llamaswap_docker.runtime.engine import Engine, running_in_container

__all__ = ["InstanceOwned", "Owner", "claim_instance", "release_instance"]

_PREFIX = "io.llamaswap.owner."
_CONTAINER_ID_RE = re.compile(r"/(?:docker/)?containers/([0-9a-f]{64})/")


class InstanceOwned(LlamaswapError):
    """Another live proxy owns the ``docker.instance``."""


@dataclass(frozen=True)
class Owner:
    token: str
    pid: str
    pidns: str
    boot: str
    pidstart: str
    container: str  # the owner's own container id, when it runs in one
    host: str
    listen: str
    started: str

    @classmethod
    def current(cls, listen: str) -> "Owner":
        pid = os.getpid()
        return cls(
            token=secrets.token_hex(8), pid=str(pid), pidns=_read_link("/proc/self/ns/pid"),
            boot=_read("/proc/sys/kernel/random/boot_id"), pidstart=_start_time(pid),
            container=_own_container_id(), host=socket.gethostname(), listen=listen,
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
        )

    def labels(self, instance: str) -> dict[str, str]:
        own = {f"{_PREFIX}{key}": value for key, value in asdict(self).items()}
        return {**labels.ownership_labels(instance), **own}

    @classmethod
    def from_labels(cls, found: dict[str, str]) -> "Owner":
        return cls(**{key: found.get(f"{_PREFIX}{key}", "") for key in cls.__dataclass_fields__})

    def describe(self) -> str:
        where = f"container {self.container[:12]}" if self.container else f"pid {self.pid}"
        return f"a proxy listening on {self.listen or '?'} ({where} on {self.host}, since {self.started})"


def claim_instance(engine: Engine, instance: str, listen: str, me: Owner | None = None) -> Owner:
    """Become the instance's owner, taking over from a dead one (``me``: as this owner, whose
    record an engine that went away and came back may still hold).

    Raises:
        InstanceOwned: a live proxy (or one we cannot check) owns it.
    """
    me = me or Owner.current(listen)
    name = _record_name(instance)
    volumes = engine.client.volumes
    for _ in range(3):
        volume = engine.run_sync(f"claiming instance {instance}", volumes.create,
                                 name=name, labels=me.labels(instance))
        owner = Owner.from_labels(volume.attrs.get("Labels") or {})
        if owner.token == me.token:
            return me
        # A record without an owner: an engine restarted with --live-restore may hand its
        # volumes back without their labels. Nobody can be checked there: take it over.
        alive = _alive(engine, owner, me) if owner.token else False
        if alive is not False:
            how = "" if alive else (
                f" (it cannot be checked from here; if it is gone, `docker volume rm {name}`)")
            raise InstanceOwned(
                f"docker.instance {instance!r} is owned by {owner.describe()}{how}: two proxies on "
                "one instance would stop each other's models. Stop that proxy, or give this one "
                "its own docker.instance in the config")
        logger.bind(instance=instance, owner=owner.describe()).warning(
            "taking over the instance from a proxy that is gone")
        engine.run_sync(f"taking over instance {instance}", _remove_record, engine, name, owner)
    raise InstanceOwned(f"docker.instance {instance!r}: another proxy keeps claiming it")


def release_instance(engine: Engine, instance: str, me: Owner) -> None:
    """Give the instance up (on a graceful shutdown), if the record is still ours."""
    try:
        _remove_record(engine, _record_name(instance), me)
    except docker.errors.DockerException as exc:
        logger.bind(instance=instance).warning("could not release the instance: {}", exc)


def _remove_record(engine: Engine, name: str, owner: Owner) -> None:
    """Remove ``owner``'s record, and only it: another proxy may have replaced it since."""
    try:
        current = engine.client.volumes.get(name).attrs.get("Labels") or {}
        if Owner.from_labels(current).token == owner.token:
            engine.client.api.remove_volume(name)
    except docker.errors.NotFound:
        pass


def _container_running(engine: Engine, container_id: str) -> bool:
    try:
        return bool(engine.client.api.inspect_container(container_id)["State"].get("Running"))
    except docker.errors.NotFound:
        return False


def _record_name(instance: str) -> str:
    return f"llamaswap-owner-{instance}"


def _alive(engine: Engine, owner: Owner, me: Owner) -> bool | None:
    """True / False when we can tell; None when we cannot check from here."""
    if owner.container and owner.container != me.container:
        return engine.run_sync("checking the instance's owner", _container_running, engine,
                               owner.container)
    # On this machine and in this pid namespace (our own container included: an earlier
    # process of a restarted container, or a second `docker exec`), the pid tells.
    if owner.boot and owner.boot == me.boot and owner.pidns == me.pidns:
        return bool(owner.pid) and _start_time(int(owner.pid)) == owner.pidstart != ""
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _read_link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when there is no such process)."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _own_container_id() -> str:
    if not running_in_container():
        return ""
    match = _CONTAINER_ID_RE.search(_read("/proc/self/mountinfo"))
    return match.group(1) if match else ""
