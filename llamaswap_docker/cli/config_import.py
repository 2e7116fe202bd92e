"""``config import``: convert a llama-swap config, and say per model what became of it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from llamaswap_docker.cli.output import stderr, stdout
from llamaswap_docker.config.backends import PLATFORMS
from llamaswap_docker.errors import ConfigError

if TYPE_CHECKING:
    from llamaswap_docker.config.importer import ImportResult

__all__ = ["import_command"]

#: How each outcome is shown, and its colour.
_LABELS = {"converted": ("converted", "green"), "noted": ("converted, see note", "yellow"),
           "person": ("needs a person", "red")}
_WIDTH = max(len(label) for label, _ in _LABELS.values()) + 2


def import_command(
    source: Annotated[Path, typer.Argument(
        metavar="LLAMA_SWAP_YAML", dir_okay=False, show_default=False,
        help="The llama-swap config.yaml to convert.")],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", dir_okay=False, show_default=False,
        help="Write the converted config here [default: standard output].")] = None,
    platform: Annotated[Optional[str], typer.Option(
        "--platform", show_default=False,
        help=f"Platform for servers whose command does not say ({', '.join(PLATFORMS)}) "
             "[default: cpu, with a note].")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert a llama-swap config.yaml into a config for this project.

    Per model it prints: **converted**; **converted, see note** (what was guessed or dropped,
    also written as `# import:` comments above the model); or **needs a person** (why, and what
    to do; the model is commented out where it was). Comments, key order and macros stay.
    The output always loads (`config check`). Exits 0 when every model converted, 2 when some
    need a person.

    **Examples**

    ```
    llamaswap-docker config import ~/llama-swap/config.yaml -o config.yaml
    llamaswap-docker config import config.yaml --platform cuda > docker-config.yaml
    ```
    """
    if platform is not None and platform not in PLATFORMS:
        raise typer.BadParameter(f"use one of {', '.join(PLATFORMS)}", param_hint="--platform")
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"llama-swap config not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read {source}: {reason}") from None
    if output is not None:
        if output.exists() and output.resolve() == source.resolve():
            raise ConfigError(f"{output} is the llama-swap config itself: write the converted "
                              "config to another file")
        if output.exists() and not force:
            raise ConfigError(f"{output} exists: pass --force to replace it")
    base = (output.resolve().parent if output is not None else Path.cwd())
    # Here, not at the top: every other command (serve, on each restart) starts without it.
    from llamaswap_docker.config.importer import import_config

    result = import_config(text, source=str(source), platform=platform, base_dir=base)
    if output is None:
        typer.echo(result.text, nl=not result.text.endswith("\n"))
        report = stderr()
    else:
        output.write_text(result.text if result.text.endswith("\n") else result.text + "\n",
                          encoding="utf-8")
        report = stdout()
    _report(report, result, output)
    raise typer.Exit(result.exit_code)


def _report(console: Console, result: ImportResult, output: Path | None) -> None:
    for model in result.models:
        label, style = _LABELS[model.status]
        console.print(Text(label.ljust(_WIDTH), style=style) + Text(model.model_id),
                      soft_wrap=True)
        pad = " " * _WIDTH
        if model.status == "person":
            console.print(Text(f"{pad}why: {model.reason}"), soft_wrap=True)
            console.print(Text(f"{pad}to do: {model.action}"), soft_wrap=True)
        for note in model.notes:
            console.print(Text(f"{pad}- {note}"), soft_wrap=True)
    for note in result.notes:
        console.print(Text("file".ljust(_WIDTH), style="yellow") + Text(note), soft_wrap=True)
    counts = {status: sum(m.status == status for m in result.models) for status in _LABELS}
    total = len(result.models)
    summary = (f"{total} model{'' if total == 1 else 's'}: "
               f"{counts['converted'] + counts['noted']} converted ({counts['noted']} with a "
               f"note), {counts['person']} need{'s' if counts['person'] == 1 else ''} a person")
    where = f"; wrote {output}" if output is not None else ""
    console.print(Text(summary + where, style="bold"), soft_wrap=True)
    if output is not None and not result.broken:
        console.print(Text(f"next: llamaswap-docker config check {output}"), soft_wrap=True)
