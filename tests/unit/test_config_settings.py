"""Process settings from LLAMASWAP_* environment variables and CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaswap_docker.config import Settings, load_settings
from llamaswap_docker.errors import ConfigError

_VARS = ("CONFIG", "LISTEN", "DOCKER_HOST", "WATCH_CONFIG", "LOG_LEVEL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARS:
        monkeypatch.delenv(f"LLAMASWAP_{name}", raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.config is None  # the embedded demo config
    assert (settings.listen, settings.host, settings.port) == ("127.0.0.1:8080", "127.0.0.1", 8080)
    assert settings.docker_host is None and settings.watch_config is False
    assert settings.log_level is None


def test_settings_come_from_llamaswap_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMASWAP_CONFIG", "/etc/llamaswap/config.yaml")
    monkeypatch.setenv("LLAMASWAP_LISTEN", "0.0.0.0:9292")
    monkeypatch.setenv("LLAMASWAP_DOCKER_HOST", "tcp://10.0.0.2:2375")
    monkeypatch.setenv("LLAMASWAP_WATCH_CONFIG", "true")
    monkeypatch.setenv("LLAMASWAP_LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert settings.config == Path("/etc/llamaswap/config.yaml")
    assert (settings.host, settings.port) == ("0.0.0.0", 9292)
    assert settings.docker_host == "tcp://10.0.0.2:2375"
    assert settings.watch_config is True and settings.log_level == "debug"


def test_cli_overrides_win_and_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMASWAP_LISTEN", "0.0.0.0:9292")
    monkeypatch.setenv("LLAMASWAP_LOG_LEVEL", "warn")
    settings = load_settings(listen="127.0.0.1:7000", log_level=None, config=Path("c.yaml"))
    assert settings.port == 7000 and settings.log_level == "warn"
    assert settings.config == Path("c.yaml")


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [(":8080", "0.0.0.0", 8080), ("[::1]:9000", "::1", 9000), ("localhost:1", "localhost", 1)],
)
def test_listen_forms(listen: str, host: str, port: int) -> None:
    settings = Settings(listen=listen)
    assert (settings.host, settings.port) == (host, port)


@pytest.mark.parametrize("listen", ["8080", "host:", "host:99999", "::1:80", "a:b"])
def test_invalid_listen_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, listen: str
) -> None:
    monkeypatch.setenv("LLAMASWAP_LISTEN", listen)
    with pytest.raises(ConfigError, match="^invalid settings: listen \\(LLAMASWAP_LISTEN\\): "):
        load_settings()


def test_invalid_flag_is_named_as_a_flag() -> None:
    with pytest.raises(ConfigError, match="log_level \\(flag\\)"):
        load_settings(log_level="chatty")


def test_unrelated_llamaswap_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMASWAP_DEMO_MODELS", "/tmp/models")
    assert load_settings().config is None
