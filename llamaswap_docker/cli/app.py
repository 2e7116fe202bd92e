"""The ``llamaswap-docker`` command: flags map onto settings or API calls; errors print as one line.

Every ``LlamaswapError`` (and any unexpected error) ends as ``Error: <message>`` on stderr and
exit code 1, never a traceback; ``--debug`` (or ``LLAMASWAP_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

from llamaswap_docker import __version__
from llamaswap_docker.cli import cleanup as cleanup_command
from llamaswap_docker.cli import config as config_commands
from llamaswap_docker.cli import pull as pull_command
from llamaswap_docker.cli import remote
from llamaswap_docker.cli.client import DockerHostOption
from llamaswap_docker.cli.output import print_error
from llamaswap_docker.errors import LlamaswapError

__all__ = ["app", "main"]

#: Where the root callback leaves ``--debug`` for the error handler.
_DEBUG_KEY = "llamaswap.debug"

_PANEL_SERVER = "Run the proxy"
_PANEL_MODELS = "Models on a running proxy"
_PANEL_MAINTENANCE = "Config and maintenance"


#: Exceptions that steer the CLI (exit codes, usage errors): passed on, never reported here.
#: Click's base of usage errors is found through typer's public BadParameter, because typer
#: bundles its own click in some versions and uses the installed one in others.
_CONTROL_FLOW: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    *[base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException"],
)


class _Group(typer.core.TyperGroup):
    """Runs a command; turns our errors into one line and exit code 1 (tracebacks on --debug)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _CONTROL_FLOW:
            raise
        except LlamaswapError as exc:
            if ctx.meta.get(_DEBUG_KEY):
                raise
            print_error(exc.message)
            raise typer.Exit(1) from None
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, keep the exit code
            if ctx.meta.get(_DEBUG_KEY):
                raise
            print_error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
            raise typer.Exit(1) from None


app = typer.Typer(
    name="llamaswap-docker",
    cls=_Group,
    epilog="Run `llamaswap-docker COMMAND --help` for a command's options and examples. "
    "Commands that talk to a proxy read `--url` / LLAMASWAP_URL and `--api-key` / "
    "LLAMASWAP_API_KEY.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals may hold API keys
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"llamaswap-docker {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="LLAMASWAP_DEBUG", show_envvar=True,
        help="Show tracebacks of errors.")] = False,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Run local LLM servers as Docker containers behind one OpenAI- and Anthropic-compatible
    URL; each request's `model` decides which container runs.

    **Examples**

    ```
    llamaswap-docker serve -c config.yaml     # run the proxy
    llamaswap-docker ps                       # what runs, in which container
    llamaswap-docker load qwen-7b             # start a model before it is asked for
    llamaswap-docker logs qwen-7b -f          # follow its container's output
    llamaswap-docker config check config.yaml
    ```
    """
    ctx.meta[_DEBUG_KEY] = debug
    if debug:
        from llamaswap_docker.logs import configure_logging

        configure_logging("debug")  # what the runtime does on the way (serve sets its own)


@app.command(rich_help_panel=_PANEL_SERVER)
def serve(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", dir_okay=False, show_default=False,
        help="Config file [default: LLAMASWAP_CONFIG, else the built-in demo].")] = None,
    config_dir: Annotated[Optional[Path], typer.Option(
        "--config-dir", file_okay=False, show_default=False,
        help="A folder whose *.yaml / *.yml files are merged after --config, by llama-swap's "
             "-config-dir rules [default: LLAMASWAP_CONFIG_DIR].")] = None,
    listen: Annotated[Optional[str], typer.Option(
        "--listen", "-l", show_default=False,
        help="host:port to serve on [default: 127.0.0.1:8080].")] = None,
    watch_config: Annotated[bool, typer.Option(
        "--watch-config", help="Reload the config when the file changes.")] = False,
    docker_host: DockerHostOption = None,
    log_level: Annotated[Optional[str], typer.Option(
        "--log-level", show_default=False, help="debug, info, warn or error.")] = None,
) -> None:
    """Run the proxy (the built-in demo when no config is given).

    Listens on 127.0.0.1 unless told otherwise; to listen on other interfaces, set `apiKeys`
    in the config.

    **Examples**

    ```
    llamaswap-docker serve                               # the built-in demo
    llamaswap-docker serve -c config.yaml --watch-config
    llamaswap-docker serve -c config.yaml -l 0.0.0.0:8080
    llamaswap-docker serve --config-dir /etc/llamaswap/conf.d   # one file per model
    ```
    """
    from llamaswap_docker.config import load_settings
    from llamaswap_docker.server import run_server

    settings = load_settings(
        config=config, config_dir=config_dir, listen=listen, docker_host=docker_host,
        log_level=log_level,
        # None leaves LLAMASWAP_WATCH_CONFIG in charge.
        watch_config=True if watch_config else None,
    )
    raise typer.Exit(run_server(settings))


app.command("ps", rich_help_panel=_PANEL_MODELS)(remote.ps)
app.command("status", hidden=True)(remote.ps)
app.command("models", rich_help_panel=_PANEL_MODELS)(remote.models)
app.command("load", rich_help_panel=_PANEL_MODELS)(remote.load)
app.command("unload", rich_help_panel=_PANEL_MODELS)(remote.unload)
app.command("logs", rich_help_panel=_PANEL_MODELS)(remote.logs)
app.add_typer(config_commands.app, name="config", rich_help_panel=_PANEL_MAINTENANCE)
app.command("pull", rich_help_panel=_PANEL_MAINTENANCE)(pull_command.pull)
app.command("cleanup", rich_help_panel=_PANEL_MAINTENANCE)(cleanup_command.cleanup)


@app.command(rich_help_panel=_PANEL_MAINTENANCE)
def version() -> None:
    """Print the version.

    **Examples**

    ```
    llamaswap-docker version
    ```
    """
    typer.echo(f"llamaswap-docker {__version__}")


def main() -> None:
    """Entry point of ``llamaswap-docker`` and ``python -m llamaswap_docker``."""
    from llamaswap_docker.logs import configure_logging

    # Commands print their own results; of the library's log only warnings belong on screen.
    configure_logging("warn")
    app(prog_name="llamaswap-docker")
