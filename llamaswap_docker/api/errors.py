"""Error responses in the caller's dialect (shapes in ``proxy/dialects.py``)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from llamaswap_docker.errors import ConcurrencyLimitExceeded, LlamaswapError
from llamaswap_docker.proxy.dialects import Dialect, dialect_for_path, error_payload

__all__ = ["error_headers", "error_response", "llamaswap_error_response"]


def error_response(
    dialect: Dialect, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_payload(dialect, status, message, code), status_code=status,
                        headers=headers)


def error_headers(exc: LlamaswapError) -> dict[str, str] | None:
    """Headers an error answer carries (``Retry-After`` for a concurrency limit)."""
    if isinstance(exc, ConcurrencyLimitExceeded):
        return {"Retry-After": str(exc.retry_after)}
    return None


def llamaswap_error_response(exc: LlamaswapError, path: str) -> JSONResponse:
    return error_response(dialect_for_path(path), exc.status_code, exc.message, exc.code,
                          error_headers(exc))
