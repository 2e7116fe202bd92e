"""``config check`` and ``config show``: validate a config file, print it resolved and masked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.text import Text

from llamaswap_docker.cli.config_import import import_command
from llamaswap_docker.cli.output import stderr, stdout
from llamaswap_docker.config import Config, load_config_sources
from llamaswap_docker.config.compat import HINT_ERRORS_SHOWN
from llamaswap_docker.config.masking import mask_secrets
from llamaswap_docker.errors import ConfigError

__all__ = ["app", "check", "show"]

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def config() -> None:
    """Check or show a config file, or import a llama-swap one.

    PATH defaults to LLAMASWAP_CONFIG, else ./config.yaml (none when `--config-dir` is given).

    **Examples**

    ```
    llamaswap-docker config check config.yaml
    llamaswap-docker config show config.yaml
    ```
    """


#: The file of ``check`` and ``show``: optional, since ``--config-dir`` may hold everything.
ConfigPathArgument = Annotated[Optional[Path], typer.Argument(
    envvar="LLAMASWAP_CONFIG", show_envvar=True, dir_okay=False, metavar="PATH",
    show_default=False, help="Config file [default: ./config.yaml, none with --config-dir].")]
ConfigDirOption = Annotated[Optional[Path], typer.Option(
    "--config-dir", envvar="LLAMASWAP_CONFIG_DIR", show_envvar=True, file_okay=False,
    show_default=False,
    help="A folder whose *.yaml / *.yml files are merged after PATH, by llama-swap's "
         "-config-dir rules (a model, group or peer is defined in one file).")]


def _sources(path: Path | None, config_dir: Path | None) -> tuple[Path | None, str]:
    """The config file to read (./config.yaml unless a folder is given) and a label for it."""
    if path is None and config_dir is None:
        path = Path("config.yaml")
    label = " + ".join(filter(None, [str(path) if path else None,
                                     f"{config_dir}/" if config_dir else None]))
    return path, label


@app.command()
def check(path: ConfigPathArgument = None, config_dir: ConfigDirOption = None) -> None:
    """Validate a config file; print each error with its line and field.

    Exits 0 when the file is valid, 1 when it is not: use it before a deploy or in CI.
    A llama-swap config is said to be one first, with the `config import` that converts it.

    **Examples**

    ```
    llamaswap-docker config check
    llamaswap-docker config check /etc/llamaswap/config.yaml
    llamaswap-docker config check config.yaml --config-dir conf.d
    ```
    """
    path, label = _sources(path, config_dir)
    try:
        config = load_config_sources(path, config_dir)
    except ConfigError as exc:
        issues = getattr(exc, "errors", None) or []
        if not any(issue.line or issue.field for issue in issues):
            raise  # unreadable file: one line, as any other error
        console = stderr()
        count = len(issues)
        hint = getattr(exc, "hint", None)
        if hint:  # a llama-swap file: what to do first, then a taste of the errors
            console.print(hint, style="bold yellow", markup=False, soft_wrap=True)
            shown = issues[:HINT_ERRORS_SHOWN]
        else:
            console.print(f"{label}: {count} error{'' if count == 1 else 's'}", style="bold red",
                          markup=False)
            shown = issues
        for issue in shown:
            console.print(str(issue), markup=False, soft_wrap=True)
        if count > len(shown):
            more = count - len(shown)
            console.print(f"… and {more} more error{'' if more == 1 else 's'}", markup=False)
        raise typer.Exit(1) from None
    for warning in config.warnings:  # valid, but worth knowing: what the config gives away
        stderr().print(Text("warning: ", style="yellow") + Text(str(warning)), soft_wrap=True)
    groups = len(config.swap_groups)  # routing.router.settings.groups or groups
    stdout().print(
        f"{label}: OK ({len(config.models)} model{'' if len(config.models) == 1 else 's'}, "
        f"{groups} group{'' if groups == 1 else 's'})",
        markup=False,
    )


@app.command()
def show(path: ConfigPathArgument = None, config_dir: ConfigDirOption = None) -> None:
    """Print the config as the proxy reads it, with secrets masked.

    Macros and ${env.X} are resolved and defaults filled in.
    Masked: every apiKeys value, and values whose name looks secret (TOKEN, KEY, SECRET,
    PASSWORD): env entries, macros, and `--flag value` pairs in cmd.

    **Examples**

    ```
    llamaswap-docker config show config.yaml
    llamaswap-docker config show | less
    llamaswap-docker config show --config-dir conf.d
    ```
    """
    path, _ = _sources(path, config_dir)
    config = load_config_sources(path, config_dir)
    text = yaml.safe_dump(mask_secrets(dump_config(config)), sort_keys=False, allow_unicode=True,
                          width=100)
    typer.echo(text, nl=False)


# `config import LLAMA_SWAP_YAML`: converts a llama-swap config (cli/config_import.py).
app.command("import")(import_command)


def dump_config(config: Config) -> dict[str, Any]:
    """The config as YAML-ready data, with the file's own (camelCase) keys."""
    return config.model_dump(mode="json", by_alias=True)


