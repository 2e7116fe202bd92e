"""The ``llamaswap-docker`` command: flags map onto settings; errors print as one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llamaswap_docker import __version__
from llamaswap_docker.errors import LlamaswapError

__all__ = ["app", "main"]

app = typer.Typer(
    name="llamaswap-docker",
    help="Docker-native model-swapping proxy for local LLM servers.\n\n"
    "One OpenAI/Anthropic-compatible URL; each request's `model` decides which container runs.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Check or show a config file.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command()
def serve(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Config file (default: the built-in demo).")] = None,
    listen: Annotated[Optional[str], typer.Option("--listen", "-l", help="host:port to serve on [default: 127.0.0.1:8080].")] = None,
    docker_host: Annotated[Optional[str], typer.Option("--docker-host", help="Docker engine URL (default: DOCKER_HOST or the local socket).")] = None,
    log_level: Annotated[Optional[str], typer.Option("--log-level", help="debug, info, warn or error.")] = None,
) -> None:
    """Run the proxy.

    Examples:

        llamaswap-docker serve                      # the built-in demo

        llamaswap-docker serve -c config.yaml -l 0.0.0.0:8080
    """
    from llamaswap_docker.config import load_settings
    from llamaswap_docker.server import run_server

    settings = load_settings(config=config, listen=listen, docker_host=docker_host, log_level=log_level)
    raise typer.Exit(run_server(settings))


@config_app.command("check")
def config_check(
    path: Annotated[Path, typer.Argument(help="Config file to validate.")] = Path("config.yaml"),
) -> None:
    """Validate a config file; print each error with its line and field.

    Example:

        llamaswap-docker config check config.yaml
    """
    from llamaswap_docker.config import load_config

    config = load_config(path)
    typer.echo(f"{path}: OK ({len(config.models)} models, {len(config.groups)} groups)")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"llamaswap-docker {__version__}")


def main() -> None:
    """Entry point: LlamaswapError → one line on stderr and exit 1 (``LLAMASWAP_DEBUG=1``: traceback)."""
    try:
        app(standalone_mode=False)
    except LlamaswapError as exc:
        if os.environ.get("LLAMASWAP_DEBUG"):
            raise
        typer.echo(f"Error: {exc.message}", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
