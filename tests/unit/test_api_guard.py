"""Which Host and Origin values the guard serves, for each listen address and config."""

from __future__ import annotations

import pytest

from llamaswap_docker.api.guard import _Policy, is_loopback
from llamaswap_docker.config import load_config_text


def policy(listen: str, extra: str = "", hosts: list[str] | None = None) -> _Policy:
    text = "models: {m: {image: x}}\n" + extra
    config = load_config_text(text, source="t.yaml")
    return _Policy(config, listen, hosts or [])


@pytest.mark.parametrize(("listen", "extra", "check"), [
    ("127.0.0.1", "", True),
    ("::1", "", True),
    ("localhost", "", True),
    ("0.0.0.0", "", False),  # exposed on purpose: no Host check (the apiKeys warning stays)
    ("0.0.0.0", "allowedHosts: [llm.lan]", True),
    ("192.168.1.5", "", False),
])
def test_host_check_is_on_for_loopback_or_allowed_hosts(listen, extra, check) -> None:
    assert policy(listen, extra).check_host is check


@pytest.mark.parametrize(("origin", "host", "allowed"), [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
    ("http://localhost:3000", "127.0.0.1:8080", True),  # a loopback page (any port)
    ("http://[::1]:8080", "[::1]:8080", True),
    ("https://evil.example", "127.0.0.1:8080", False),
    ("http://127.0.0.1.evil.example", "127.0.0.1:8080", False),
    ("null", "127.0.0.1:8080", False),  # sandboxed frames, file:// pages
    ("https://chat.example.com", "127.0.0.1:8080", True),  # listed in cors.allowOrigins
    ("https://chat.example.com:8443", "127.0.0.1:8080", False),  # another origin
])
def test_origin_on_a_loopback_proxy(origin, host, allowed) -> None:
    guard = policy("127.0.0.1", "cors: {allowOrigins: ['https://chat.example.com']}")
    assert guard.origin_allowed(origin, host) is allowed


@pytest.mark.parametrize(("origin", "host", "allowed"), [
    ("http://llm.lan:8080", "llm.lan:8080", True),  # the page the proxy itself serves
    ("http://evil.example", "llm.lan:8080", False),
    ("http://llm.lan:9999", "llm.lan:8080", False),
])
def test_origin_without_a_host_check_must_match_the_request_host(origin, host, allowed) -> None:
    assert policy("0.0.0.0").origin_allowed(origin, host) is allowed


def test_bad_cors_origins_are_config_errors() -> None:
    from llamaswap_docker.errors import ConfigError

    with pytest.raises(ConfigError, match="cors.allowOrigins.*scheme://host"):
        policy("127.0.0.1", "cors: {allowOrigins: ['chat.example.com/path']}")


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "::"))
