"""API keys on a real proxy: three ways to send one, 401 in the caller's dialect, never forwarded."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from loguru import logger

from llamaswap_docker.api.auth import warn_if_exposed
from llamaswap_docker.config import load_config_text
from tests.conftest import fake_model

KEY = "sk-test-key-1"
OTHER_KEY = "sk-test-key-2"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
MESSAGE = {"model": "fake", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def proxy(start_proxy, monkeypatch):
    monkeypatch.setenv("LLAMASWAP_TEST_KEY", OTHER_KEY)
    return start_proxy({"fake": fake_model("--model-name", "fake")},
                       apiKeys=[KEY, "${env.LLAMASWAP_TEST_KEY}"])


@pytest.mark.parametrize("auth", [
    {"headers": {"Authorization": f"Bearer {KEY}"}},
    {"auth": ("any-user", KEY)},  # HTTP Basic: the password is the key
    {"headers": {"x-api-key": KEY}},
    {"headers": {"Authorization": f"Bearer {OTHER_KEY}"}},  # second key, from ${env.X}
], ids=["bearer", "basic-password", "x-api-key", "env-key"])
def test_each_way_of_sending_a_key_is_accepted(proxy, auth) -> None:
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=60, **auth)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{proxy.url}/running", timeout=10, **auth).status_code == 200


def test_wrong_key_is_401_in_openai_shape(proxy) -> None:
    response = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10,
                          headers={"Authorization": "Bearer sk-wrong"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert "invalid API key" in error["message"]


def test_missing_key_is_401_in_anthropic_shape_on_messages(proxy) -> None:
    response = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGE, timeout=10)

    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert "missing API key" in body["error"]["message"]


def test_sdks_see_authentication_errors_with_a_wrong_key(proxy) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=proxy.url, api_key="wrong", max_retries=0).messages.create(**MESSAGE)
    # And with the right one they work: OpenAI sends Bearer, Anthropic sends x-api-key.
    assert openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=KEY, max_retries=0).models.list().data
    reply = anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0).messages.create(**MESSAGE)
    assert reply.content


def test_health_needs_no_key_but_management_and_logs_do(proxy) -> None:
    assert httpx.get(f"{proxy.url}/health").text == "OK"
    for path in ("/running", "/logs", "/v1/models", "/logs/stream/fake", "/metrics",
                 "/api/metrics/activity", "/api/events"):
        assert httpx.get(f"{proxy.url}{path}", timeout=10).status_code == 401, path
    # The UI's and the API docs' pages load without a key; they hold nothing of the config.
    for path in ("/ui/", "/ui/app.js", "/docs", "/openapi.json"):
        response = httpx.get(f"{proxy.url}{path}", timeout=10)
        assert response.status_code == 200, path
        assert "fake" not in response.text, path
    root = httpx.get(f"{proxy.url}/", timeout=10, follow_redirects=False)
    assert root.headers["location"] == "/ui/"
    assert httpx.post(f"{proxy.url}/api/models/unload", timeout=10).status_code == 401
    assert httpx.get(f"{proxy.url}/unload", timeout=10).status_code == 401


@pytest.mark.parametrize("auth", [
    {"headers": {"Authorization": f"Bearer {KEY}"}},
    {"auth": ("user", KEY)},
    {"headers": {"x-api-key": KEY}},
], ids=["bearer", "basic-password", "x-api-key"])
def test_the_key_is_not_forwarded_to_the_model(proxy, auth) -> None:
    assert httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=60,
                      **auth).status_code == 200

    stats = httpx.get(f"{proxy.url}/upstream/fake/debug/stats", timeout=10, **auth).json()

    seen = stats["last_headers"]
    assert seen, "the fake upstream recorded no inference request"
    assert "authorization" not in seen
    assert "x-api-key" not in seen


def test_without_api_keys_every_route_is_open(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model()})
    assert httpx.get(f"{proxy.url}/running", timeout=10).status_code == 200


@pytest.fixture
def warnings_logged():
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING")
    yield lines
    logger.remove(sink)


@pytest.mark.parametrize("host, keys, warned", [
    ("0.0.0.0", [], True),
    ("192.168.1.5", [], True),
    ("::", [], True),
    ("127.0.0.1", [], False),
    ("::1", [], False),
    ("localhost", [], False),
    ("0.0.0.0", ["k"], False),
])
def test_binding_beyond_loopback_without_keys_warns(warnings_logged, host, keys, warned) -> None:
    config = load_config_text(
        "models: {m: {image: x}}\n" + (f"apiKeys: {keys}\n" if keys else "")
    )

    warn_if_exposed(host, config)

    assert any("without apiKeys" in line for line in warnings_logged) is warned
