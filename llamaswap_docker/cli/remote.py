"""Commands that drive a running proxy over HTTP: ps, load, unload, logs, models."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from llamaswap_docker.cli.client import (
    DEFAULT_URL, ApiKeyOption, ProxyClient, ProxyRequestFailed, UrlOption, model_path,
)
from llamaswap_docker.cli.output import STATE_STYLES, human_duration, print_json, stderr, stdout

__all__ = ["ps", "load", "unload", "logs", "models"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON, for scripts.")]


def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Every configured model, stopped ones too.")] = False,
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """List models that have a container, and their state (alias: status).

    **Examples**

    ```
    llamaswap-docker ps
    llamaswap-docker ps -a --json | jq -r '.running[] | select(.state == "ready") | .model'
    llamaswap-docker ps --url http://gpu-box:8080 --api-key "$KEY"
    ```
    """
    with ProxyClient(url, api_key) as client:
        data = client.json("GET", "/running", params={"all": "true"} if all_ else None)
        hardware = None if json_ else _hardware(client)
    if json_:
        print_json(data)
        return
    running: list[dict[str, Any]] = data.get("running", [])
    console = stdout()
    if not running:
        hint = "" if all_ else " (`llamaswap-docker ps -a` lists every configured model)"
        console.print(f"no model is running{hint}", markup=False)
        _print_gpus(console, hardware)
        return
    gpus_column = any(entry.get("gpus") for entry in running)
    # Several engines (engines:): which one each model runs on.
    engine_column = any(entry.get("engine") not in (None, "default") for entry in running)
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["MODEL", "STATE", "CONTAINER", "IMAGE", "UP", "REQUESTS", "TTL LEFT"]
    for column in columns + (["ENGINE"] if engine_column else []) + (
            ["GPUS"] if gpus_column else []):
        table.add_column(column, no_wrap=column in ("MODEL", "STATE"))
    for entry in running:
        state = entry.get("state", "?")
        requests = str(entry.get("in_flight", 0))
        if entry.get("waiting"):
            requests += f" (+{entry['waiting']} queued)"
        ttl_left = entry.get("ttl_left_s")
        table.add_row(
            Text(entry.get("model", "?")),
            Text(state, style=STATE_STYLES.get(state, "")),
            Text(entry.get("container_name") or "-"),
            Text(entry.get("image", "")),
            human_duration(entry.get("uptime_s")),
            requests,
            "never" if entry.get("ttl") == 0 else human_duration(ttl_left),
            *([Text(entry.get("engine") or "-")] if engine_column else []),
            *([_gpus_cell(entry)] if gpus_column else []),
        )
    console.print(table)
    _print_gpus(console, hardware)
    for entry in running:
        if entry.get("failure"):
            first = entry["failure"].splitlines()[0]
            console.print(Text(f"{entry['model']}: ", style="red") + Text(first))


def _hardware(client: ProxyClient) -> dict[str, Any] | None:
    """``GET /api/hardware``, or None from a proxy that predates it."""
    try:
        return client.json("GET", "/api/hardware")
    except ProxyRequestFailed as exc:
        if exc.status_code == 404:
            return None
        raise


def _gib(value: Any) -> str:
    return f"{value / (1 << 30):.1f}" if isinstance(value, (int, float)) else "?"


def _gpus_cell(entry: dict[str, Any]) -> str:
    gpus = ",".join(entry.get("gpus") or []) or "-"
    need = entry.get("need_bytes")
    return f"{gpus} ({_gib(need)} GiB {entry.get('need_source')})" if need else gpus


def _print_gpus(console: Any, hardware: dict[str, Any] | None) -> None:
    """One line per GPU: its memory, what is placed on it, the models there."""
    if not hardware or not hardware.get("gpus"):
        return
    console.print(f"GPUs ({hardware.get('source')}, router {hardware.get('router')}):",
                  markup=False)
    for gpu in hardware["gpus"]:
        models = ", ".join(m["model"] for m in gpu.get("models", [])) or "-"
        console.print(
            f"  {gpu['id']}  {gpu.get('name') or ''}  placed {_gib(gpu.get('placed_bytes'))} of "
            f"{_gib(gpu.get('memory_usable_bytes'))} GiB, free {_gib(gpu.get('free_bytes'))} GiB"
            f"  {models}", markup=False)


def load(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model id or alias.", show_default=False)],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the model is ready.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for ready.")] = 600,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Start a model now, before any request needs it.

    Evicts what cannot run beside it (as a request for it would), after their in-flight
    requests finish.

    **Examples**

    ```
    llamaswap-docker load qwen-7b
    llamaswap-docker load qwen-7b --no-wait
    ```
    """
    started = time.monotonic()
    with ProxyClient(url, api_key) as client:
        path = f"/api/models/load/{model_path(model)}"
        if not wait:
            result = client.json("POST", path, params={"wait": "false"})
            stdout().print(f"{result['model']}: loading (`llamaswap-docker ps` shows when it is ready)",
                           markup=False)
            return
        with _spinner(f"loading {model}…"):
            result = client.json("POST", path, timeout=timeout)
    stdout().print(f"{result['model']}: ready ({time.monotonic() - started:.1f}s)", markup=False)


def unload(
    model: Annotated[Optional[list[str]], typer.Argument(metavar="MODEL", help="Model ids or aliases.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Unload every model.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", "-f", help="Stop at once, cutting requests in flight.")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Stop models (their containers are stopped and removed) once in-flight requests finish.

    **Examples**

    ```
    llamaswap-docker unload qwen-7b
    llamaswap-docker unload --all
    llamaswap-docker unload --force qwen-7b     # cut what it is serving now
    ```
    """
    params = {"force": "true"} if force else None
    models = model or []
    if bool(models) == all_:
        raise typer.BadParameter("name the model(s) to unload, or pass --all (not both)",
                                 param_hint="MODEL / --all")
    with ProxyClient(url, api_key, timeout=300) as client:
        if all_:
            with _spinner("unloading every model…"):
                client.json("POST", "/api/models/unload", params=params)
            stdout().print("unloaded all models", markup=False)
            return
        for name in models:
            with _spinner(f"unloading {name}…"):
                result = client.json("POST", f"/api/models/unload/{model_path(name)}",
                                     params=params)
            stdout().print(f"{result['unloaded']}: unloaded", markup=False)


def logs(
    model: Annotated[Optional[str], typer.Argument(
        metavar="MODEL", help="Model id or alias; without it, the proxy's own log.",
        show_default=False)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output.")] = False,
    tail: Annotated[int, typer.Option("--tail", "-n", help="Earlier lines to print first (-1: all).")] = 100,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a model container's output, or the proxy's log.

    A model's output comes from the Docker engine, so it is there also for a container the
    proxy adopted after a restart. With **-f**, printing goes on until Ctrl-C or until the
    container stops.

    **Examples**

    ```
    llamaswap-docker logs qwen-7b
    llamaswap-docker logs qwen-7b -f --tail 0
    llamaswap-docker logs -f              # the proxy's own log
    ```
    """
    out = typer.get_binary_stream("stdout")
    with ProxyClient(url, api_key) as client:
        if model is None and not follow:
            out.write(client.request("GET", "/logs", params={"tail": tail}).content)
            out.flush()
            return
        if model is None:
            path, params = "/logs/stream", {"tail": tail}
        else:
            path, params = f"/logs/stream/{model_path(model)}", {"tail": tail, "follow": str(follow).lower()}
        # Ctrl-C ends a follow: typer turns it into exit code 130, without a traceback.
        with client.stream(path, params=params) as response:
            for chunk in response.iter_raw():
                out.write(chunk)
                out.flush()


def models(
    json_: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """List the models the proxy serves (its config), with their state.

    **Examples**

    ```
    llamaswap-docker models
    llamaswap-docker models --json | jq -r '.data[].id'
    ```
    """
    with ProxyClient(url, api_key) as client:
        data = client.json("GET", "/v1/models")
    if json_:
        print_json(data)
        return
    entries: list[dict[str, Any]] = data.get("data", [])
    console = stdout()
    if not entries:
        console.print("the proxy lists no models", markup=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("MODEL", "STATE", "NAME", "DESCRIPTION"):
        table.add_column(column, no_wrap=column in ("MODEL", "STATE"))
    for entry in entries:
        model_id = entry.get("id", "?")
        alias_of = (entry.get("meta") or {}).get("alias_of")
        state = entry.get("state", "")
        table.add_row(
            Text(model_id + (f" → {alias_of}" if alias_of else "")),
            Text(state, style=STATE_STYLES.get(state, "")),
            Text(entry.get("name", "")),
            Text(entry.get("description", "")),
        )
    console.print(table)


def _spinner(message: str) -> contextlib.AbstractContextManager[Any]:
    """A spinner on stderr while waiting (only on a terminal: scripts get no noise)."""
    console = stderr()
    if console.is_terminal:
        return console.status(message)
    return contextlib.nullcontext()
