"""Logging set up in one place: loguru, one line per event, ``key=value`` fields.

Call sites bind their fields (``logger.bind(model=..., container=...).info("container started")``)
and every line reads ``2026-01-01 12:00:00.000 INFO  container started model=x container=y``,
so ``grep model=x`` finds a model's whole story. Recent lines are also kept in memory for the
``/logs`` API.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from typing import Any

from loguru import logger

__all__ = ["configure_logging", "intercept_stdlib_logging", "LogBuffer", "log_buffer", "logger"]

#: Our own errors carry a full message; their tracebacks stay out of the log unless debugging.
_QUIET_EXCEPTIONS: tuple[type[BaseException], ...] = ()

# llama-swap's level names, mapped onto loguru's.
_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING",
           "error": "ERROR"}


#: Every character that could end a line (``str.splitlines`` splits on \x0b, \x1c, \x85,
#: \u2028…) or drive a terminal (ESC and the other C0/C1 controls, DEL), escaped.
_CONTROL = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    0x2028: "\\u2028", 0x2029: "\\u2029",
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
}


def _one_line(text: str) -> str:
    """Control characters escaped: one event stays one line, and a client-chosen path or
    model name can neither forge a log line nor send escape codes to a terminal."""
    return text.translate(_CONTROL)


def _quote(value: Any) -> str:
    text = _one_line(str(value))
    if text == "" or any(ch.isspace() or ch in '"=' for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_record(record: dict[str, Any]) -> str:
    """Render a record as ``time LEVEL message k=v ...`` (braces escaped for loguru)."""
    fields = " ".join(f"{key}={_quote(value)}" for key, value in record["extra"].items())
    message = _one_line(record["message"])
    line = f"{record['time']:YYYY-MM-DD HH:mm:ss.SSS} {record['level'].name:<7} {message}"
    if fields:
        line += " " + fields
    return line.replace("{", "{{").replace("}", "}}") + "\n{exception}"


class LogBuffer:
    """The most recent log lines, with subscribers for live streaming."""

    def __init__(self, capacity: int = 2000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._subscribers: list[Any] = []

    def write(self, message: str) -> None:
        line = message.rstrip("\n")
        with self._lock:
            self._lines.append(line)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(line)

    def history(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def subscribe(self, callback: Any) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Any) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)


#: The process-wide buffer behind ``GET /logs``.
log_buffer = LogBuffer()


def configure_logging(level: str = "info") -> None:
    """Send log lines to stderr and to ``log_buffer`` at ``level`` (llama-swap names)."""
    loguru_level = _LEVELS.get(level.lower(), level.upper())
    logger.remove()
    logger.add(sys.stderr, level=loguru_level, format=format_record, backtrace=False,
               diagnose=False)
    logger.add(log_buffer.write, level=loguru_level, format=format_record, backtrace=False,
               diagnose=False)


class _InterceptHandler(logging.Handler):
    """Route the stdlib loggers (uvicorn's) through loguru, so every line has one format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        exc_info = record.exc_info
        if exc_info and _QUIET_EXCEPTIONS and isinstance(exc_info[1], _QUIET_EXCEPTIONS):
            message = f"{record.getMessage()} {exc_info[1]}"
            logger.bind(source=record.name).log(level, message)
            return
        logger.bind(source=record.name).opt(exception=exc_info).log(level, record.getMessage())


def intercept_stdlib_logging(quiet: tuple[type[BaseException], ...] = ()) -> None:
    """Send uvicorn's and other stdlib log records to loguru; ``quiet`` errors lose tracebacks."""
    global _QUIET_EXCEPTIONS
    _QUIET_EXCEPTIONS = quiet
    handler = _InterceptHandler()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        stdlib_logger = logging.getLogger(name)
        stdlib_logger.handlers = [handler]
        stdlib_logger.propagate = False
