"""``pull``: pull the images of configured models, with a progress bar per image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from llamaswap_docker.cli.client import DockerHostOption
from llamaswap_docker.cli.output import print_error, stderr, stdout
from llamaswap_docker.config import Config, load_config
from llamaswap_docker.errors import LlamaswapError, ModelNotFound
from llamaswap_docker.runtime import Engine, PullProgress, ensure_image

__all__ = ["pull"]

def pull(
    model: Annotated[Optional[list[str]], typer.Argument(
        metavar="MODEL", help="Model ids or aliases [default: every model].",
        show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", envvar="LLAMASWAP_CONFIG", show_envvar=True, dir_okay=False,
        show_default=False, help="Config file [default: the built-in demo].")] = None,
    docker_host: DockerHostOption = None,
) -> None:
    """Pull the images of configured models now, rather than on their first request.

    Always asks the registry (a newer image replaces the local one), whatever pullPolicy says.

    **Examples**

    ```
    llamaswap-docker pull -c config.yaml
    llamaswap-docker pull qwen-7b llama-8b -c config.yaml
    ```
    """
    loaded = _load(config)
    images = _images(loaded, model or [])
    engine = Engine.from_settings(docker_host or loaded.docker.host)
    failed: list[str] = []
    try:
        for image in images:
            try:
                _pull_one(engine, image)
            except LlamaswapError as exc:
                failed.append(image)
                print_error(exc.message)
            else:
                stdout().print(f"{image}: pulled", markup=False)
    finally:
        engine.close()
    if failed:
        raise typer.Exit(1)


def _load(path: Path | None) -> Config:
    if path is not None:
        return load_config(path)
    from llamaswap_docker.config import load_demo_config
    from llamaswap_docker.server import demo_models_dir

    return load_demo_config(demo_models_dir())


def _images(config: Config, names: list[str]) -> list[str]:
    """The images of the named models (all when none), each once, in config order."""
    model_ids = []
    for name in names:
        model_id = config.resolve(name)
        if model_id is None:
            raise ModelNotFound(
                f"model {name!r} is not in the config; it has: {', '.join(sorted(config.models))}"
            )
        model_ids.append(model_id)
    chosen = model_ids or list(config.models)
    return list(dict.fromkeys(config.models[model_id].image for model_id in chosen))


def _pull_one(engine: Engine, image: str) -> None:
    console = stderr()
    if not console.is_terminal:
        # No bar in logs and pipes (rich would leave blank lines there): one line per image.
        stdout().print(f"{image}: pulling", markup=False)
        ensure_image(engine, image, "always")
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task: TaskID = progress.add_task(image, total=None, status="")

        def on_progress(event: PullProgress) -> None:
            # The runtime aggregates the layers into one fraction that never goes back.
            if event.fraction is not None:
                progress.update(task, completed=event.fraction * 100, total=100)
            progress.update(task, status=event.status.lower())

        ensure_image(engine, image, "always", on_progress=on_progress)
