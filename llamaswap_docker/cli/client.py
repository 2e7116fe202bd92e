"""Talking to a running proxy: one ``httpx`` client, its errors mapped to one-line messages.

    ProxyUnreachable     nothing answers at ``--url``
    ProxyRequestFailed   the proxy answered with an error (its own message is kept)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from llamaswap_docker.errors import LlamaswapError

__all__ = [
    "DEFAULT_URL",
    "ApiKeyOption",
    "ProxyClient",
    "ProxyRequestFailed",
    "ProxyUnreachable",
    "UrlOption",
    "model_path",
]

#: Where ``serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8080"

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="LLAMASWAP_URL", show_envvar=True, metavar="URL",
    help="The running proxy.")]
DockerHostOption = Annotated[str | None, typer.Option(
    "--docker-host", show_default=False,
    help="Docker engine URL [default: the config's docker.host, DOCKER_HOST, the local socket].")]
ApiKeyOption = Annotated[str | None, typer.Option(
    "--api-key", envvar="LLAMASWAP_API_KEY", show_envvar=True, show_default=False,
    help="Key for a proxy with apiKeys.")]


class ProxyUnreachable(LlamaswapError):
    """No llamaswap-docker answers at the URL the CLI was given."""

    code = "proxy_unreachable"


class ProxyRequestFailed(LlamaswapError):
    """The proxy answered a CLI request with an error."""

    code = "proxy_request_failed"

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


def model_path(model: str) -> str:
    """A model id as a URL path segment (ids may hold '/', which the routes accept)."""
    return quote(model, safe="/")


def _error_message(response: httpx.Response) -> str:
    """The server's own message (OpenAI or Anthropic shape), else the status and body."""
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(payload.get("detail"), str):
            return payload["detail"]
    text = response.text.strip()
    reason = f"{response.status_code} {response.reason_phrase}".strip()
    return f"{reason}: {text[:200]}" if text else reason


class ProxyClient:
    """A connection to the proxy at ``url`` (``http://`` assumed when no scheme is given)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        if "://" not in url:
            url = f"http://{url}"
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "ProxyClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> httpx.Response:
        """Send a request; return the response when it is a success.

        Raises:
            ProxyUnreachable: nothing answers at the URL.
            ProxyRequestFailed: the proxy answered 4xx/5xx, or the exchange broke off.
        """
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        with self._errors(method, path):
            response = self._http.request(method, path, params=params, **extra)
        self._check(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except json.JSONDecodeError:
            raise ProxyRequestFailed(
                f"{self.url}{path} answered something that is not JSON: is it llamaswap-docker?"
            ) from None

    @contextlib.contextmanager
    def stream(self, path: str, *, params: dict[str, Any] | None = None) -> Iterator[httpx.Response]:
        """GET ``path`` as a stream that may stay quiet for a long time (no read timeout)."""
        timeout = httpx.Timeout(10.0, read=None)
        with self._errors("GET", path):
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    self._check(response)
                yield response

    def _check(self, response: httpx.Response) -> None:
        if not response.is_error:
            return
        message = _error_message(response)
        if response.status_code == 401:
            message += " (pass --api-key, or set LLAMASWAP_API_KEY)"
        raise ProxyRequestFailed(message, response.status_code)

    @contextlib.contextmanager
    def _errors(self, method: str, path: str) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise ProxyUnreachable(
                f"no llamaswap-docker answers at {self.url}: start one with "
                "`llamaswap-docker serve`, or pass --url"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ProxyRequestFailed(
                f"{method} {self.url}{path}: no answer in time ({type(exc).__name__})", 504
            ) from exc
        except httpx.HTTPError as exc:
            raise ProxyRequestFailed(f"{method} {self.url}{path}: {exc}", 502) from exc
