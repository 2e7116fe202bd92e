"""``Engine``: the one docker-py client, run in worker threads, with errors translated once.

docker-py is blocking; every call goes through ``Engine.run_sync`` in a worker thread (the
lifecycle's ``ContainerDriver.call``, under a deadline) so the event loop never waits on the
socket. ``docker.errors`` never escape this package: they become the
``LlamaswapError`` subclasses in ``llamaswap_docker.errors``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import docker.constants
import docker.errors
import docker.tls
import requests.exceptions

from llamaswap_docker.errors import EngineError, EngineUnreachable, ImageNotFound

if TYPE_CHECKING:
    from llamaswap_docker.config import EngineConfig

__all__ = ["Engine", "close_stream", "translate_errors", "running_in_container"]

T = TypeVar("T")

_HOW_TO_START = (
    "Start the engine (`sudo systemctl start docker`, or `dockerd &`), or point "
    "DOCKER_HOST / docker.host / --docker-host at a running one"
)


_NO_PERMISSION = (
    "permission denied on the Docker socket: run as a user in the socket's group "
    "(usually `docker`; `stat -c %g /var/run/docker.sock` shows it), or in compose set "
    "DOCKER_GID to that group id"
)


def _permission_denied(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain, bounded
        if seen is None:
            return False
        if isinstance(seen, PermissionError) or "Permission denied" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Map docker-py and transport errors raised inside to our error tree."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(f"{action}: image not found: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{action}: {exc.explanation or exc}") from exc
    except (requests.exceptions.ConnectionError, FileNotFoundError, ConnectionError) as exc:
        if _permission_denied(exc):
            raise EngineUnreachable(f"{action}: {_NO_PERMISSION}") from exc
        raise EngineUnreachable(f"{action}: the Docker engine is not reachable",
                                advice=_HOW_TO_START) from exc
    except requests.exceptions.RequestException as exc:
        # A read timeout or a broken answer: the engine is there but did not complete the call.
        raise EngineError(f"{action}: the Docker engine did not answer in time ({exc})") from exc
    except docker.errors.DockerException as exc:
        if _permission_denied(exc):
            raise EngineUnreachable(f"{action}: {_NO_PERMISSION}") from exc
        if "Error while fetching server API version" in str(exc):
            raise EngineUnreachable(f"{action}: the Docker engine is not reachable ({exc})",
                                    advice=_HOW_TO_START) from exc
        raise EngineError(f"{action}: {exc}") from exc


def close_stream(stream: Any) -> None:
    """Close an engine stream (events, logs, stats) from any thread, unblocking its reader.

    docker-py shuts the stream's socket down, except on an ``ssh://`` engine, whose stream
    has no socket to shut (docker-py fails there): its ssh channel is closed instead.
    """
    try:
        stream.close()
        return
    except Exception:  # noqa: BLE001 - an ssh:// stream: closed below
        pass
    response = getattr(stream, "_response", None)
    fp = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    channel = getattr(fp, "channel", None)  # docker-py's SSHSocket, or paramiko's channel
    if channel is not None:
        channel.close()
    elif response is not None:
        response.close()


def running_in_container() -> bool:
    """Whether this process itself runs inside a container (Docker or Podman)."""
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


class Engine:
    """A connection to one Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def of_entry(cls, settings: EngineConfig) -> "Engine":
        """A client of one ``engines:`` entry (its TLS files for ``tcp://``)."""
        tls = (settings.tls.ca, settings.tls.cert, settings.tls.key) if settings.tls else None
        return cls.from_settings(settings.host, tls=tls)

    @classmethod
    def from_settings(cls, host: str | None = None, timeout: int = 60,
                      tls: tuple[str, str, str] | None = None) -> "Engine":
        """Connect to ``host`` (an engine URL) or, when None, to DOCKER_HOST / the local socket.

        ``tls`` is (CA, client certificate, client key) for a ``tcp://`` engine. An
        ``ssh://`` engine is reached with the ``ssh`` command (its config, keys and agent).

        Raises:
            EngineUnreachable: no engine answers there.
        """
        target = host or os.environ.get("DOCKER_HOST") or "the local socket"
        with translate_errors(f"connecting to Docker at {target}"):
            if host:
                options: dict[str, Any] = {}
                if tls is not None:
                    ca, cert, key = tls
                    options["tls"] = docker.tls.TLSConfig(client_cert=(cert, key), ca_cert=ca,
                                                          verify=True)
                if host.startswith("ssh://"):
                    # The ssh command, as the docker CLI (your ssh config, keys, agent); where
                    # there is none (the proxy's image), paramiko with ~/.ssh's keys.
                    options["use_ssh_client"] = shutil.which("ssh") is not None
                if tls is None:
                    client = docker.DockerClient(base_url=host, timeout=timeout, **options)
                else:
                    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the session's
                    # CA: the engine's own CA must be the one its certificate is checked with,
                    # from the first call (the API version docker-py asks for) on.
                    client = docker.DockerClient(
                        base_url=host, timeout=timeout,
                        version=docker.constants.MINIMUM_DOCKER_API_VERSION, **options)
                    client.api.trust_env = False
                    client.api._version = client.api._retrieve_server_version()
            else:
                client = docker.from_env(timeout=timeout)
            client.ping()
        return cls(client)

    def ping(self, timeout: float) -> None:
        """Ask the engine whether it answers, within ``timeout`` seconds (not the client's
        60 s): how an engine that went away is noticed.

        Raises:
            EngineUnreachable, EngineError: it does not answer.
        """
        api = self.client.api
        with translate_errors("pinging the engine"):
            response = api._get(api._url("/_ping"), timeout=timeout)
            api._raise_for_status(response)

    def run_sync(self, action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking docker-py call, translating its errors (call it in a worker thread:
        ``ContainerDriver.call``, or from the CLI)."""
        with translate_errors(action):
            return function(*args, **kwargs)

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        with translate_errors("reading engine info"):
            return self.client.version()

    @property
    def is_podman(self) -> bool:
        """Podman's Docker-compatible API names itself in the version components."""
        components = self.info.get("Components") or []
        return any("podman" in str(c.get("Name", "")).lower() for c in components)

    def close(self) -> None:
        self.client.close()
