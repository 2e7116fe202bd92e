"""Errors in the caller's dialect: OpenAI's shape, or Anthropic's on ``/v1/messages``.

OpenAI:    ``{"error": {"message", "type", "code"}}``
Anthropic: ``{"type": "error", "error": {"type", "message"}}``

Pure formatting: the hop (``proxy/forward.py``) writes these in-band into streams whose headers
are sent; ``api/errors.py`` wraps them in responses.
"""

from __future__ import annotations

import json
from typing import Any, Literal

__all__ = ["Dialect", "dialect_for_path", "error_payload", "error_body", "sse_error_event"]

Dialect = Literal["openai", "anthropic"]

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 415: "invalid_request_error",
                 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    415: "invalid_request_error",
                    429: "rate_limit_error", 503: "overloaded_error"}


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
    payload = json.dumps(error_payload(dialect, status, message, code))
    if dialect == "anthropic":
        return f"event: error\ndata: {payload}\n\n".encode()
    return f"data: {payload}\n\n".encode()
