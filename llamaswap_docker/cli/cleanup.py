"""``cleanup``: remove an instance's model containers that no running proxy owns.

The rule: a container is ours to remove when it carries ``io.llamaswap.managed=true`` and the
instance's ``io.llamaswap.instance`` label, and the proxy at ``--url`` does not list it in
``GET /running``. If nothing answers there, no proxy owns any of them. If a proxy answers but
its list cannot be read (wrong API key, an error), nothing is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from llamaswap_docker.cli.client import (
    DEFAULT_URL,
    ApiKeyOption,
    DockerHostOption,
    ProxyClient,
    ProxyRequestFailed,
    ProxyUnreachable,
    UrlOption,
)
from llamaswap_docker.cli.output import human_duration, print_error, stdout
from llamaswap_docker.config import Config, DockerSettings, load_config
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.runtime import ContainerRef, Containers, Engine

__all__ = ["cleanup"]



class ProxyOwnershipUnknown(LlamaswapError):
    """A proxy answers at the URL, but which containers it owns cannot be read."""

    code = "proxy_ownership_unknown"


@dataclass(frozen=True)
class _Candidate:
    ref: ContainerRef
    age_s: float | None


def cleanup(
    instance: Annotated[Optional[str], typer.Option(
        "--instance", "-i", show_default=False,
        help="Instance whose containers to clean up [default: the config's docker.instance, "
             "else 'default'].")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Stop and remove them (default: only list).")] = False,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", envvar="LLAMASWAP_CONFIG", show_envvar=True, dir_okay=False,
        show_default=False, help="Config naming the instance and the Docker engine.")] = None,
    docker_host: DockerHostOption = None,
    engine_name: Annotated[Optional[str], typer.Option(
        "--engine", "-e", show_default=False,
        help="With a config that has engines:, the engine to clean up [default: the "
             "first].")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Remove model containers that no running proxy owns (after a crash or kill -9).

    Looks at containers labelled as the instance's (io.llamaswap.managed=true,
    io.llamaswap.instance=NAME), running or not. Those the proxy at **--url** lists in
    GET /running are in use and left alone; when nothing answers at --url, none is in use. A
    proxy of the instance that listens elsewhere must be named with --url. Without **--yes**
    it only lists what it would remove.

    **Examples**

    ```
    llamaswap-docker cleanup                    # list orphans of instance 'default'
    llamaswap-docker cleanup -c config.yaml --yes
    llamaswap-docker cleanup --instance gpu1 --url http://127.0.0.1:9090 --yes
    llamaswap-docker cleanup -c config.yaml --engine box2 --yes
    ```
    """
    loaded = load_config(config) if config is not None else None
    docker_settings = loaded.docker if loaded else DockerSettings()  # the config's defaults
    instance = instance or docker_settings.instance
    stop_timeout = loaded.default_stop_timeout if loaded else docker_settings.stop_timeout
    network = docker_settings.network
    engine, name = _engine(loaded, engine_name, docker_host)
    try:
        containers = Containers(engine, instance, network, "host", name)
        candidates = [_Candidate(ref, ref.age_s()) for ref in containers.list_owned()]
        owned, proxy_note = _owned_by_proxy(url, api_key)
        in_use = [c for c in candidates if _listed(c.ref.id, owned)]
        orphans = [c for c in candidates if not _listed(c.ref.id, owned)]
        console = stdout()
        console.print(proxy_note, markup=False)
        if name:
            console.print(f"engine {name!r} ({engine.client.api.base_url})", markup=False)
        if in_use:
            console.print(f"in use by the proxy at {url}, left alone:", markup=False)
            for candidate in in_use:
                console.print(f"  {candidate.ref.name} ({candidate.ref.model_id})", markup=False)
        if not orphans:
            console.print(f"no orphaned containers of instance {instance!r}", markup=False)
            return
        console.print(_table(orphans))
        if not yes:
            console.print(
                f"{_count(orphans)} of instance {instance!r} would be stopped and removed; "
                "run again with --yes to remove them",
                markup=False,
            )
            return
        failed = 0
        for candidate in orphans:
            try:
                containers.stop(candidate.ref.id, stop_timeout)
            except LlamaswapError as exc:
                failed += 1
                print_error(f"{candidate.ref.name}: {exc.message}")
            else:
                console.print(f"removed {candidate.ref.name}", markup=False)
        if failed:
            raise typer.Exit(1)
    finally:
        engine.close()


def _engine(loaded: Config | None, name: str | None,
            docker_host: str | None) -> tuple[Engine, str]:
    """The engine to clean up and its name: ``--engine`` of the config's ``engines:`` (the
    first without it), else ``--docker-host`` / ``docker.host`` / DOCKER_HOST.

    Raises:
        LlamaswapError: --engine names no engine of the config.
    """
    engines = loaded.engines if loaded is not None else {}
    if name is not None and name not in engines:
        known = ", ".join(engines) or "the config has no engines: (give -c CONFIG)"
        raise LlamaswapError(f"--engine {name!r} is not an engine of the config ({known})")
    if engines and not docker_host:
        name = name or next(iter(engines))
        return Engine.of_entry(engines[name]), name
    return Engine.from_settings(docker_host or (loaded.docker.host if loaded else None)), ""


def _owned_by_proxy(url: str, api_key: str | None) -> tuple[set[str], str]:
    """Container ids the proxy at ``url`` lists, and a line saying what was found.

    Raises:
        ProxyOwnershipUnknown: a proxy answers but its list cannot be read.
    """
    try:
        with ProxyClient(url, api_key, timeout=10) as client:
            data = client.json("GET", "/running", params={"all": "true"})
    except ProxyUnreachable:
        return set(), f"no proxy answers at {url}: no container is in use there"
    except ProxyRequestFailed as exc:
        raise ProxyOwnershipUnknown(
            f"a proxy answers at {url} but did not list its containers ({exc.message}); "
            "nothing was removed"
        ) from exc
    try:
        ids = {entry["container_id"] for entry in data["running"] if entry.get("container_id")}
    except (KeyError, TypeError) as exc:
        raise ProxyOwnershipUnknown(
            f"something answers at {url} but GET /running is not llamaswap-docker's; "
            "nothing was removed"
        ) from exc
    return ids, f"a proxy answers at {url} and lists {len(ids)} container(s)"


def _listed(container_id: str, owned: set[str]) -> bool:
    return any(container_id.startswith(i) or i.startswith(container_id) for i in owned)


def _table(candidates: list[_Candidate]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "MODEL", "STATUS", "AGE"):
        table.add_column(column, no_wrap=True)
    for candidate in candidates:
        table.add_row(Text(candidate.ref.name), Text(candidate.ref.model_id or "-"),
                      Text(candidate.ref.status), human_duration(candidate.age_s))
    return table


def _count(items: list[_Candidate]) -> str:
    return f"{len(items)} container{'' if len(items) == 1 else 's'}"
