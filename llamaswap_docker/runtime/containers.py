"""Model containers on the engine: create, start, inspect, stop and remove, list what we own.

Routing: when the proxy runs on the host, the container port is published on 127.0.0.1 with an
ephemeral host port; when the proxy runs in a container on ``docker.network``, containers are
reached by name on that network and nothing is published.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import docker.errors
import docker.types
from loguru import logger

from llamaswap_docker.errors import EngineError
from llamaswap_docker.runtime import labels
from llamaswap_docker.runtime.engine import Engine, running_in_container
from llamaswap_docker.runtime.spec import ContainerSpec

__all__ = [
    "Routing",
    "ContainerRef",
    "ContainerState",
    "Containers",
    "own_container_id",
    "resolve_routing",
]

Routing = Literal["host", "network"]


def own_container_id(engine: Engine) -> str | None:
    """The id of the container this process runs in, if the engine we drive runs it.

    Being in *a* container is not enough (a CI sandbox may be one): only a container the
    engine knows — a sibling of the model containers — can reach them by name.
    """
    if not running_in_container():
        return None
    try:
        attrs = engine.run_sync("looking for the proxy's own container",
                                engine.client.api.inspect_container, socket.gethostname())
    except EngineError as exc:
        if isinstance(exc.__cause__, docker.errors.NotFound):
            return None  # a container, but not one of this engine's
        raise
    return attrs.get("Id")


def resolve_routing(setting: str, engine: Engine) -> Routing:
    """``auto`` → ``network`` when the proxy runs in a container on this engine, else ``host``."""
    if setting == "auto":
        return "network" if own_container_id(engine) else "host"
    if setting not in ("host", "network"):
        raise ValueError(f"routing must be auto, host or network, not {setting!r}")
    return setting  # type: ignore[return-value]


@dataclass(frozen=True)
class ContainerRef:
    """A container we own, as the engine reported it."""

    id: str
    name: str
    model_id: str
    spec_hash: str
    instance: str
    status: str
    #: Where the server inside answers, e.g. ``http://127.0.0.1:49153``; None if not running.
    base_url: str | None
    #: When the engine created it (UTC), if it said.
    created: datetime | None = None
    #: The API key its server was started with (read back from its environment on adoption).
    upstream_key: str | None = field(default=None, repr=False)
    #: The GPUs placement put it on (its labels), and the bytes it holds on each if known.
    devices: tuple[str, ...] | None = None
    vram: int | None = None
    #: The engine it runs on (a name under ``engines:``; "" for the one engine of a config
    #: without them).
    engine: str = ""

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` value its server wants (None: it was started without a key)."""
        return f"Bearer {self.upstream_key}" if self.upstream_key else None

    def age_s(self, now: datetime | None = None) -> float | None:
        """Seconds since creation, or None when unknown."""
        if self.created is None:
            return None
        return ((now or datetime.now(timezone.utc)) - self.created).total_seconds()


@dataclass(frozen=True)
class ContainerState:
    """What ``inspect`` says of a container's process."""

    status: str
    running: bool
    exit_code: int | None
    oom_killed: bool
    error: str

    def describe(self) -> str:
        """One phrase for error messages: 'exited with code 2 (OOM-killed)'."""
        if self.running:
            return "is running"
        text = f"exited with code {self.exit_code}"
        if self.oom_killed:
            text += " (OOM-killed)"
        if self.error:
            text += f": {self.error}"
        return text


def _upstream_key(attrs: dict[str, Any], key_env: str | None) -> str | None:
    """The value of ``key_env`` in the container's environment (None without one)."""
    if not key_env:
        return None
    prefix = key_env + "="
    for entry in attrs.get("Config", {}).get("Env") or []:
        if entry.startswith(prefix):
            return entry[len(prefix):]
    return None


def _devices(container_labels: dict[str, str]) -> tuple[str, ...] | None:
    value = container_labels.get(labels.DEVICES)
    if value is None:
        return None
    return tuple(part for part in value.split(",") if part)


def _int_label(container_labels: dict[str, str], name: str) -> int | None:
    value = container_labels.get(name, "")
    return int(value) if value.isdigit() else None


def _parse_created(value: object) -> datetime | None:
    """The engine writes UTC with nanoseconds: ``2026-01-01T12:00:00.123456789Z``."""
    if not isinstance(value, str):
        return None
    try:
        seconds = value.removesuffix("Z").partition(".")[0]
        return datetime.fromisoformat(seconds).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")[:40] or "model"


class Containers:
    """The model containers of one proxy instance."""

    def __init__(self, engine: Engine, instance: str, network: str, routing: Routing,
                 engine_name: str = "", address: str | None = None,
                 bind: str | None = None) -> None:
        self.engine = engine
        self.instance = instance
        self.network = network
        self.routing = routing
        #: The engine's name (``engines:``), recorded in every ``ContainerRef``.
        self.engine_name = engine_name
        #: Where the proxy reaches ports published on the engine, and the host address they
        #: are published on (a remote engine: its LAN address, and every interface).
        self.address = address or "127.0.0.1"
        if ":" in self.address and not self.address.startswith("["):
            self.address = f"[{self.address}]"  # an IPv6 address, as a URL writes it
        self.bind = bind or ("0.0.0.0" if address else "127.0.0.1")
        self._cdi_logged = False

    # -- network -----------------------------------------------------------------------------

    def ensure_network(self) -> None:
        """Create the user-defined bridge model containers join, unless it exists."""
        client = self.engine.client
        if self._network_exists():
            self._join_network()
            return
        try:
            self.engine.run_sync(
                f"creating network {self.network}",
                client.networks.create,
                self.network,
                driver="bridge",
                labels=labels.ownership_labels(self.instance),
            )
        except EngineError:
            # Another proxy may have created it between our list and create.
            if not self._network_exists():
                raise
        logger.bind(network=self.network).info("network created")
        self._join_network()

    def _join_network(self) -> None:
        """In network routing, make sure the proxy's own container is on the model network."""
        if self.routing != "network":
            return
        own_id = own_container_id(self.engine)
        if own_id is None:
            return
        attrs = self.engine.run_sync("inspecting own container",
                                     self.engine.client.api.inspect_container, own_id)
        attached = (attrs.get("NetworkSettings", {}).get("Networks") or {}).keys()
        if self.network not in attached:
            self.engine.run_sync(f"joining network {self.network}",
                                 self.engine.client.api.connect_container_to_network,
                                 own_id, self.network)
            logger.bind(network=self.network, container=own_id[:12]).info(
                "proxy container joined the model network")

    def host_path_warnings(self, spec: ContainerSpec) -> list[str]:
        """Bind sources that look like paths inside the proxy's container, not the host's.

        The engine resolves volume sources on the host. When the proxy runs in a container,
        a path under one of its own mounts (``./models:/models`` on the proxy, ``/models:...``
        in a model) names the proxy's view; the host path is the mount's source.
        """
        own_id = own_container_id(self.engine)
        if own_id is None:
            return []
        attrs = self.engine.run_sync("inspecting own container",
                                     self.engine.client.api.inspect_container, own_id)
        mounts = [(m.get("Source", ""), m.get("Destination", "")) for m in attrs.get("Mounts") or []]
        warnings = []
        for volume in spec.volumes:
            source = volume.split(":", 1)[0]
            if not source.startswith("/"):
                continue  # a named volume
            for host_source, destination in mounts:
                if destination and (source == destination or source.startswith(destination.rstrip("/") + "/")):
                    if host_source and not source.startswith(host_source):
                        host_path = host_source + source[len(destination.rstrip("/")):]
                        warnings.append(
                            f"model {spec.model_id!r}: volume source {source!r} is a path inside the "
                            f"proxy container (mounted from {host_source!r}); the engine resolves "
                            f"volume paths on the host, so you probably mean {host_path!r}"
                        )
        return warnings

    # -- lifecycle ---------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> ContainerRef:
        """Create (not start) the container for ``spec``, labelled, with a fresh unique name."""
        name = f"llamaswap-{_slug(self.instance)}-{_slug(spec.model_id)}-{secrets.token_hex(3)}"
        # Podman's Docker API ignores device requests (podman #22645): name CDI devices instead.
        cdi = bool(spec.device_requests) and self.engine.is_podman
        if cdi and not self._cdi_logged:
            self._cdi_logged = True
            logger.info("podman engine: using CDI device names (nvidia.com/gpu=...) for GPUs")
        kwargs = spec.container_kwargs(cdi=cdi)
        kwargs["labels"] = {
            **dict(spec.labels),
            **labels.ownership_labels(self.instance, spec.model_id, spec.spec_hash, spec.port,
                                      spec.key_env, spec.gpu_ids, spec.gpu_bytes),
        }
        kwargs["name"] = name
        kwargs["network"] = self.network
        if self.routing == "host":
            kwargs["ports"] = {f"{spec.port}/tcp": (self.bind, None)}
        # The network can vanish under a running proxy (another stack's `down`): bring it back
        # rather than fail every start until a restart. (Checked before, not after a failure:
        # a container created on a network that is gone fails only when started.)
        if not self._network_exists():
            logger.bind(network=self.network).warning("network is gone; creating it again")
            self.ensure_network()
        container = self.engine.run_sync(
            f"creating container for model {spec.model_id!r}",
            self.engine.client.containers.create,
            **kwargs,
        )
        return self._ref(container.attrs, port=spec.port)

    def _network_exists(self) -> bool:
        found = self.engine.run_sync(f"listing networks named {self.network}",
                                     self.engine.client.networks.list, names=[self.network])
        return any(net.name == self.network for net in found)

    def start(self, container_id: str, port: int) -> ContainerRef:
        """Start a created container and read back where it answers."""
        container = self._get(container_id)
        self.engine.run_sync(f"starting container {container.name}", container.start)
        self.engine.run_sync(f"inspecting container {container.name}", container.reload)
        return self._ref(container.attrs, port=port)

    def state(self, container_id: str) -> ContainerState | None:
        """The container's process state, or None when it no longer exists."""
        try:
            attrs = self.engine.run_sync(
                f"inspecting container {container_id[:12]}",
                self.engine.client.api.inspect_container,
                container_id,
            )
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise
        state = attrs.get("State", {})
        return ContainerState(
            status=state.get("Status", "unknown"),
            running=bool(state.get("Running")),
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error", ""),
        )

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The last ``lines`` lines the container wrote (stdout and stderr); '' if gone."""
        try:
            output = self.engine.run_sync(
                f"reading logs of {container_id[:12]}",
                self.engine.client.api.logs,
                container_id,
                tail=lines,
            )
        except EngineError:
            return ""
        return output.decode("utf-8", "replace").rstrip()

    def stop(self, container_id: str, timeout: int, output_lines: int = 0) -> str:
        """Stop (SIGTERM, SIGKILL after ``timeout`` s), remove, and verify the container is gone.

        Args:
            output_lines: read this many of the container's last output lines between the stop
                and the removal (its shutdown messages included), and return them.

        Returns:
            The output read ('' when none was asked for or the engine had none).

        Raises:
            EngineError: the engine still lists the container afterwards.
        """
        api = self.engine.client.api
        short = container_id[:12]
        self._tolerating_gone(f"stopping container {short}",
                              lambda: api.stop(container_id, timeout=timeout))
        output = self.logs_tail(container_id, output_lines) if output_lines else ""
        self._tolerating_gone(f"removing container {short}",
                              lambda: api.remove_container(container_id, force=True, v=True))
        try:
            api.wait(container_id, condition="removed", timeout=timeout + 10)
        except docker.errors.NotFound:
            pass
        except Exception:  # noqa: BLE001 - a timeout or engine error: verify below
            pass
        if self.state(container_id) is not None:
            raise EngineError(f"container {short} is still on the engine after stop and remove")
        return output

    def _tolerating_gone(self, what: str, call: Any) -> None:
        """Run an engine call for which a container already gone (404) or already being
        removed (409, waited for by the caller) is no failure."""
        try:
            self.engine.run_sync(what, call)
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return
            if not isinstance(exc.__cause__, docker.errors.APIError):
                raise

    def list_owned(self, model_id: str | None = None) -> list[ContainerRef]:
        """Every container (running or not) labelled as this instance's."""
        containers = self.engine.run_sync(
            "listing containers",
            self.engine.client.containers.list,
            all=True,
            filters=labels.instance_filters(self.instance, model_id),
            # One being removed meanwhile (a stop in flight) must not fail the whole listing.
            ignore_removed=True,
        )
        return [self._ref(container.attrs) for container in containers]

    # -- helpers -----------------------------------------------------------------------------

    def _get(self, container_id: str) -> Any:
        return self.engine.run_sync(
            f"finding container {container_id[:12]}",
            self.engine.client.containers.get,
            container_id,
        )

    def _ref(self, attrs: dict[str, Any], port: int | None = None) -> ContainerRef:
        container_labels = attrs.get("Config", {}).get("Labels") or {}
        name = attrs.get("Name", "").lstrip("/")
        state = attrs.get("State", {})
        status = state.get("Status", "unknown") if isinstance(state, dict) else str(state)
        if port is None:
            port = self._container_port(attrs)
        return ContainerRef(
            id=attrs["Id"],
            name=name,
            model_id=container_labels.get(labels.MODEL, ""),
            spec_hash=container_labels.get(labels.SPEC_HASH, ""),
            instance=container_labels.get(labels.INSTANCE, ""),
            status=status,
            base_url=self._base_url(attrs, name, port) if status == "running" else None,
            created=_parse_created(attrs.get("Created")),
            upstream_key=_upstream_key(attrs, container_labels.get(labels.KEY_ENV)),
            devices=_devices(container_labels),
            vram=_int_label(container_labels, labels.VRAM),
            engine=self.engine_name,
        )

    @staticmethod
    def _container_port(attrs: dict[str, Any]) -> int | None:
        value = (attrs.get("Config", {}).get("Labels") or {}).get(labels.PORT)
        return int(value) if value and value.isdigit() else None

    def _base_url(self, attrs: dict[str, Any], name: str, port: int | None) -> str | None:
        if port is None:
            return None
        if self.routing == "network":
            return f"http://{name}:{port}"
        bindings = (attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp")
        for binding in bindings or []:
            if binding.get("HostPort"):
                return f"http://{self.address}:{binding['HostPort']}"
        return None

    # -- logs --------------------------------------------------------------------------------

    def follow_logs(self, container_id: str, tail: int,
                    since: float | None = None) -> Iterator[bytes]:
        """Follow the container's output (stdout and stderr): ``tail`` earlier lines (of those
        written since the ``since`` timestamp, when given), then new ones.

        Blocking: iterate it in a worker thread. It ends when the container stops; its
        ``close()`` (callable from any thread) ends it early and unblocks the reader.

        Raises:
            EngineError: the container is gone, or the engine refused.
        """
        return self.engine.run_sync(
            f"following logs of {container_id[:12]}",
            self.engine.client.api.logs,
            container_id, stream=True, follow=True, tail="all" if tail < 0 else tail,
            since=since,
        )

    # -- resource usage ----------------------------------------------------------------------

    def follow_stats(self, container_id: str) -> Iterator[dict[str, Any]]:
        """The engine's resource readings of the container (``docker stats``): one dict about
        every second, as the Engine API writes it.

        Blocking: iterate it in a worker thread. It ends when the container stops; its
        ``close()`` (callable from any thread) ends it early and unblocks the reader.

        Raises:
            EngineError: the container is gone, or the engine refused.
        """
        api = self.engine.client.api

        def open_stream() -> Iterator[dict[str, Any]]:
            # As docker-py's own events() does: APIClient.stats() hands back a bare generator,
            # which no other thread can stop; the response behind it can be shut down.
            response = api._get(api._url("/containers/{0}/stats", container_id),
                                params={"stream": True}, stream=True, timeout=None)
            api._raise_for_status(response)
            return docker.types.CancellableStream(
                api._stream_helper(response, decode=True), response)

        return self.engine.run_sync(f"following stats of {container_id[:12]}", open_stream)
