"""Run the proxy: settings → config → engine → app → uvicorn, with a clean exit on signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from loguru import logger

from llamaswap_docker.api import create_app
from llamaswap_docker.api.auth import warn_if_exposed
from llamaswap_docker.config import (
    Config,
    Settings,
    config_sources,
    load_config_sources,
    load_demo_config,
)
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.logs import configure_logging, intercept_stdlib_logging
from llamaswap_docker.proxy.dialects import error_body
from llamaswap_docker.runtime import Engine
from llamaswap_docker.runtime.demo_images import demo_models_dir, ensure_demo_images
from llamaswap_docker.runtime.owner import claim_instance, release_instance

__all__ = [
    "ProxyServer",
    "demo_models_dir",
    "load_serving_config",
    "run_server",
    "uvicorn_config",
]

#: Seconds in-flight requests get to finish after SIGTERM before they are cut.
GRACEFUL_SHUTDOWN_S = 30


def _no_delay_protocol() -> type[asyncio.Protocol]:
    """uvicorn's fastest HTTP protocol, with Nagle's algorithm off on every connection and
    parser errors answered in OpenAI's shape.

    asyncio sets ``TCP_NODELAY`` only on sockets created with ``IPPROTO_TCP``; a listener from
    ``socket.create_server`` (protocol 0) hands out connections with Nagle on, and a response
    written in two parts then waits for the client's delayed ACK: +40 ms per request on a
    keep-alive connection. Set here, it holds however the socket was bound and on any loop.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools missing: uvicorn's pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class NoDelayProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

        def send_400_response(self, msg: str) -> None:
            # A request the HTTP parser refuses (a control byte in a header, a broken request
            # line) gets OpenAI's error shape too, not uvicorn's plain text: no route, and so
            # no other dialect, is known yet.
            body = error_body("openai", 400, msg, "invalid_http_request")
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return NoDelayProtocol


def uvicorn_config(app: object, host: str, port: int, **overrides: object) -> uvicorn.Config:
    """How the proxy is served: uvloop and httptools when installed (``uvicorn[standard]``),
    ``TCP_NODELAY`` on every connection, no access log (the hop logs what matters)."""
    options: dict[str, object] = {
        "host": host, "port": port, "loop": "auto", "http": _no_delay_protocol(),
        "log_config": None, "access_log": False, "lifespan": "on",
        # X-Forwarded-For is not trusted (and not parsed on every request).
        "proxy_headers": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]


def load_serving_config(settings: Settings) -> tuple[Config, str]:
    """The config to serve and where it came from (the demo when no file is given)."""
    if settings.config is not None or settings.config_dir is not None:
        source = " + ".join(filter(None, [
            str(settings.config) if settings.config else None,
            f"{settings.config_dir}/" if settings.config_dir else None]))
        return load_config_sources(settings.config, settings.config_dir), source
    from llamaswap_docker.demomodel import ensure_real_model
    from llamaswap_docker.tinymodel import ensure_tiny_gguf

    directory = demo_models_dir()
    ensure_tiny_gguf(directory)
    real = ensure_real_model(directory)
    return (load_demo_config(directory, real.name if real else None),
            "built-in demo config" + (" with a real model" if real else ""))


# The uvicorn internals overridden here are checked against the installed uvicorn by
# tests/unit/test_server_uvicorn_hooks.py (pyproject.toml pins the range tested).
class ProxyServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM/SIGINT end in a graceful shutdown and exit code 0.

    uvicorn re-raises the captured signal after its shutdown, which makes the process die
    with -15; a service manager (and ``docker stop``) should see a clean exit instead.
    SIGHUP, or a change of the config file when watching, reloads the config.
    """

    def __init__(self, config: uvicorn.Config, config_path: Path | None = None,
                 watch_config: bool = False, config_dir: Path | None = None) -> None:
        super().__init__(config)
        self.config_path = config_path
        self.config_dir = config_dir
        self.watch_config = watch_config and (config_path is not None or config_dir is not None)
        self.reload_requested = False
        self._config_mtime = _mtimes(config_path, config_dir)
        self._reload_task: asyncio.Task[None] | None = None

    async def on_tick(self, counter: int) -> bool:
        # Every 0.1 s; look at the file once a second.
        if self.watch_config and counter % 10 == 0:
            mtime = _mtimes(self.config_path, self.config_dir)
            if mtime != self._config_mtime:
                self._config_mtime = mtime
                self.reload_requested = True
        if self.reload_requested and (self._reload_task is None or self._reload_task.done()):
            self.reload_requested = False
            self._reload_task = asyncio.create_task(self._reload())
        return await super().on_tick(counter)

    async def _reload(self) -> None:
        state = getattr(self.config.app.state, "llamaswap", None)
        if state is None or (self.config_path is None and self.config_dir is None):
            logger.warning("config reload requested, but the demo config has no file to reload")
            return
        try:
            config = await asyncio.to_thread(load_config_sources, self.config_path,
                                             self.config_dir)
        except LlamaswapError as exc:
            logger.error("config reload failed, keeping the running config: {}", exc.message)
            return
        _log_config_warnings(config)
        try:
            await state.manager.apply_config(config)
        except Exception as exc:  # noqa: BLE001 - a reload must never take the server down
            logger.opt(exception=exc).error("applying the reloaded config failed: {}", exc)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        original[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle_hangup)
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _handle_hangup(self, sig: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Queued requests are not in-flight work: fail them now rather than let the graceful
        # shutdown wait for a model start that will not happen.
        state = getattr(self.config.app.state, "llamaswap", None)
        if state is not None:
            asyncio.get_event_loop().call_soon_threadsafe(state.manager.reject_waiters)


def _log_config_warnings(config: Config) -> None:
    for warning in config.warnings:
        what = "config gives the host away" if warning.kind == "risk" else "config"
        logger.bind(file=warning.file, line=warning.line, field=warning.field).warning(
            "{}: {}", what, warning.message)


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None


def _mtimes(path: Path | None, folder: Path | None) -> tuple[tuple[str, float | None], ...]:
    """The config's files and their modification times: a file added to, changed in or
    removed from the folder changes it."""
    if folder is None:
        return ((str(path), _mtime(path)),)
    try:
        files = config_sources(path, folder)
    except LlamaswapError:
        files = [path] if path is not None else []  # a folder gone or emptied: reload says so
    return tuple((str(file), _mtime(file)) for file in files)


def run_server(settings: Settings) -> int:
    """Serve until a signal; return the process exit code.

    Raises:
        LlamaswapError: invalid config, or no engine (the CLI prints it as one line).
    """
    config, source = load_serving_config(settings)
    configure_logging(settings.log_level or config.log_level)
    intercept_stdlib_logging(quiet=(LlamaswapError,))
    warn_if_exposed(settings.host, config)
    _log_config_warnings(config)
    if config.engines:
        # Several engines: the app connects to each (one that is down is taken in when it
        # answers) and claims the instance on each.
        if settings.docker_host:
            logger.bind(docker_host=settings.docker_host).warning(
                "--docker-host is ignored: the config's engines: names the engines")
        return _serve(settings, config, source, None)
    engine = Engine.from_settings(settings.docker_host or config.docker.host)
    owner = None
    try:
        # Before anything touches the instance's containers: a second proxy on it would adopt,
        # reap and remove the first one's models.
        owner = claim_instance(engine, config.docker.instance, f"{settings.host}:{settings.port}")
        if settings.config is None and settings.config_dir is None:
            # The demo's images are built on this machine, never pulled: missing ones are
            # built now (minutes, with progress) rather than failing the first chat with 503.
            ensure_demo_images(engine, demo_models_dir())
        return _serve(settings, config, source, engine)
    finally:
        if owner is not None:
            release_instance(engine, config.docker.instance, owner)
        engine.close()


def _serve(settings: Settings, config: Config, source: str, engine: Engine | None) -> int:
    app = create_app(config, engine, settings.host, settings.extra_allowed_hosts,
                     settings.recording)
    uv_config = uvicorn_config(app, settings.host, settings.port)
    server = ProxyServer(uv_config, settings.config, settings.watch_config, settings.config_dir)
    # Bind before the app starts: uvicorn runs the startup (adopting containers) before its
    # own bind, and a port in use would then shut down — stopping the models another proxy
    # on that port is serving.
    listener = _bind(settings.host, settings.port)
    url = f"http://{settings.host}:{settings.port}"
    models = ", ".join(sorted(config.models))
    logger.bind(url=url, config=source, models=models).info("llamaswap-docker listening")
    print(f"llamaswap-docker listening on {url} ({source})", flush=True)
    print(f"models: {models}", flush=True)
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False, backlog=2048)
    except OSError as exc:
        raise LlamaswapError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another proxy running "
            "there? Pick another address with --listen"
        ) from exc
