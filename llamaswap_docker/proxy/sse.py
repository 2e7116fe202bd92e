"""Server-sent events as the proxy writes them itself: loading progress, in-band errors, the
end of a stream, ``GET /api/events``. One framing for all (the WHATWG ``text/event-stream``
format: ``event:`` and ``data:`` lines, a blank line ending each event)."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DONE", "sse_event", "typed_event"]

#: The end of an OpenAI-style stream.
DONE = b"data: [DONE]\n\n"


def sse_event(data: bytes, event: str | None = None) -> bytes:
    """One event carrying ``data`` (one line: JSON), named ``event`` when given."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def typed_event(kind: str, data: Any) -> bytes:
    """llama-swap's event envelope, ``data: {"type": kind, "data": data}`` (``/api/events``,
    a model's container stats)."""
    return sse_event(orjson.dumps({"type": kind, "data": data}))
