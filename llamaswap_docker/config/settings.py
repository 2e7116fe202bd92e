"""Process settings: where the config is and how the proxy itself runs.

These come from ``LLAMASWAP_*`` environment variables and CLI flags (flags win), not
from the config file: they decide *which* config file to read. Precedence for the
Docker engine: ``Settings.docker_host`` > config ``docker.host`` > ``DOCKER_HOST`` >
the local socket (the runtime applies it); ``Settings.log_level`` overrides ``logLevel``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import ConfigError
from .schema import LogLevel

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "parse_listen"]

ENV_PREFIX = "LLAMASWAP_"


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8080`` for IPv6; ``:8080`` = all interfaces)."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {value!r} must be 'host:port', e.g. '127.0.0.1:8080'")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"listen port {port} must be between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen address {value!r}: write IPv6 hosts in brackets, '[::1]:8080'")
    return host or "0.0.0.0", port


class Settings(BaseSettings):
    """Settings of one proxy process (``LLAMASWAP_CONFIG``, ``LLAMASWAP_LISTEN``...)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    config: Path | None = None  # None: the embedded demo config (unless config_dir is set)
    # A folder of *.yaml files merged after `config` (llama-swap's -config-dir).
    config_dir: Path | None = None
    listen: str = "127.0.0.1:8080"  # host:port the proxy serves on
    docker_host: str | None = None  # engine URL; overrides the config's docker.host
    watch_config: bool = False  # reload the config when the file changes
    log_level: LogLevel | None = None  # overrides the config's logLevel
    # Comma-separated Host values served besides the config's allowedHosts (compose sets it).
    allowed_hosts: str = ""
    # false: no activity rows, request counters or captures (privacy, or to measure what
    # recording costs the relay: bench_relay.py).
    recording: bool = True

    @field_validator("config", "config_dir")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return {"warning": "warn", "": None}.get(value, value)
        return value

    @property
    def extra_allowed_hosts(self) -> list[str]:
        """``allowed_hosts`` as a list."""
        return [host.strip() for host in self.allowed_hosts.split(",") if host.strip()]

    @property
    def host(self) -> str:
        """Interface to bind (``0.0.0.0`` when ``listen`` is ``:PORT``)."""
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """TCP port to bind."""
        return parse_listen(self.listen)[1]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI ``overrides`` on top (None = not given).

    Raises ``ConfigError`` naming the setting and its environment variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            source = "flag" if field in given else f"{ENV_PREFIX}{field.upper()}"
            lines.append(f"{field} ({source}): {message}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
