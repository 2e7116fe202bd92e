"""Run the proxy: settings → config → engine → app → uvicorn, with a clean exit on signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from loguru import logger

from llamaswap_docker.api import create_app
from llamaswap_docker.config import Config, Settings, load_config, load_demo_config
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.logs import configure_logging, intercept_stdlib_logging
from llamaswap_docker.runtime import Engine

__all__ = ["ProxyServer", "load_serving_config", "run_server", "demo_models_dir"]

#: Seconds in-flight requests get to finish after SIGTERM before they are cut.
GRACEFUL_SHUTDOWN_S = 30


def demo_models_dir() -> Path:
    """Where the demo's tiny model lives on the host (``LLAMASWAP_DEMO_DIR`` overrides)."""
    configured = os.environ.get("LLAMASWAP_DEMO_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "llamaswap-docker" / "demo-models"


def load_serving_config(settings: Settings) -> tuple[Config, str]:
    """The config to serve and where it came from (the demo when no file is given)."""
    if settings.config is not None:
        return load_config(settings.config), str(settings.config)
    from llamaswap_docker.tinymodel import ensure_tiny_gguf

    directory = demo_models_dir()
    ensure_tiny_gguf(directory)
    return load_demo_config(directory), "built-in demo config"


class ProxyServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM/SIGINT end in a graceful shutdown and exit code 0.

    uvicorn re-raises the captured signal after its shutdown, which makes the process die
    with -15; a service manager (and ``docker stop``) should see a clean exit instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Queued requests are not in-flight work: fail them now rather than let the graceful
        # shutdown wait for a model start that will not happen.
        state = getattr(self.config.app.state, "llamaswap", None)
        if state is not None:
            asyncio.get_event_loop().call_soon_threadsafe(state.manager.reject_waiters)


def run_server(settings: Settings) -> int:
    """Serve until a signal; return the process exit code.

    Raises:
        LlamaswapError: invalid config, or no engine (the CLI prints it as one line).
    """
    config, source = load_serving_config(settings)
    configure_logging(settings.log_level or config.log_level)
    intercept_stdlib_logging(quiet=(LlamaswapError,))
    engine = Engine.from_settings(settings.docker_host or config.docker.host)
    app = create_app(config, engine)
    uv_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = ProxyServer(uv_config)
    url = f"http://{settings.host}:{settings.port}"
    models = ", ".join(sorted(config.models))
    logger.bind(url=url, config=source, models=models).info("llamaswap-docker listening")
    print(f"llamaswap-docker listening on {url} ({source})", flush=True)
    print(f"models: {models}", flush=True)
    try:
        server.run()
    finally:
        engine.close()
    return 0 if server.started else 1
