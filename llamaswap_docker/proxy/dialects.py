"""Errors in the caller's dialect: OpenAI's shape, or Anthropic's on ``/v1/messages``.

OpenAI:    ``{"error": {"message", "type", "code"}}``
Anthropic: ``{"type": "error", "error": {"type", "message"}}``

Pure formatting: the hop (``proxy/forward.py``) writes these in-band into streams whose headers
are sent; ``api/errors.py`` wraps them in responses.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from llamaswap_docker.proxy.sse import DONE, sse_event

__all__ = ["Dialect", "dialect_for_path", "end_of_stream_error", "error_payload", "error_body",
           "sse_error_event"]

Dialect = Literal["openai", "anthropic"]

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 415: "invalid_request_error",
                 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    415: "invalid_request_error",
                    429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


def dialect_for_path(path: str) -> Dialect:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def error_payload(dialect: Dialect, status: int, message: str, code: str) -> dict[str, Any]:
    if dialect == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"),
                                           "message": message}}
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"),
                      "code": code}}


def error_body(dialect: Dialect, status: int, message: str, code: str) -> bytes:
    """The JSON body of an error response."""
    return json.dumps(error_payload(dialect, status, message, code)).encode()


def sse_error_event(dialect: Dialect, status: int, message: str, code: str) -> bytes:
    """An in-band error for a stream whose headers were already sent."""
    payload = error_body(dialect, status, message, code)
    return sse_event(payload, "error") if dialect == "anthropic" else sse_event(payload)


def end_of_stream_error(dialect: Dialect, status: int, message: str, code: str) -> bytes:
    """The last bytes of an event stream we opened (loading progress) that an error ends: the
    error event, then the dialect's end of stream. OpenAI's is ``data: [DONE]``; Anthropic's
    stream has no such marker (its ``event: error`` is the last event)."""
    event = sse_error_event(dialect, status, message, code)
    return event if dialect == "anthropic" else event + DONE
