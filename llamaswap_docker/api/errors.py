"""Error responses in the caller's dialect (shapes in ``proxy/dialects.py``).

``error_answer`` is the one way an exception becomes a response, for the hop (``ProxyApp``)
and for FastAPI's routes alike.
"""

from __future__ import annotations

from loguru import logger
from starlette.responses import JSONResponse

from llamaswap_docker.errors import ConcurrencyLimitExceeded, LlamaswapError
from llamaswap_docker.proxy.dialects import Dialect, dialect_for_path, error_payload

__all__ = ["INTERNAL_ERROR", "error_answer", "error_headers", "error_response"]

#: What a client is told of an error the proxy did not expect (the log has the details).
INTERNAL_ERROR = "internal error in llamaswap-docker; see the proxy log"


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


def error_answer(exc: Exception, path: str, *, traceback: bool = True) -> JSONResponse:
    """The answer to an exception raised before a response started, in the dialect of
    ``path``, logged once: a ``LlamaswapError`` as itself (a warning: its first line), any
    other as a 500 that tells nothing of the internals (an error, with the traceback unless
    ``traceback`` is False: the caller re-raises it and the server logs it)."""
    dialect = dialect_for_path(path)
    if isinstance(exc, LlamaswapError):
        logger.bind(path=path, status=exc.status_code).warning(
            "request failed: {}", (exc.message.splitlines() or [""])[0])
        return error_response(dialect, exc.status_code, exc.message, exc.code,
                              error_headers(exc))
    (logger.opt(exception=exc) if traceback else logger).bind(path=path).error(
        "unexpected error: {}: {}", type(exc).__name__, exc)
    return error_response(dialect, 500, INTERNAL_ERROR, "internal_error")
