"""Token counts for every stream: ask the server for a stream's usage, and hold the usage
chunk back from a client that did not ask for it.

OpenAI-style servers (vLLM, llama-server, most others) say how many tokens a streamed answer
took only when the request asks, ``stream_options: {"include_usage": true}``: one more event
before ``data: [DONE]``, with no choices and a ``usage`` object. Most clients never ask (Open
WebUI does not), and activity and metrics would then have no token counts but llama-server's
own ``timings``. So the hop asks on the client's behalf and drops that one event from what the
client gets: the stream reads as it would have without the proxy. A client that asked gets
the server's bytes unchanged. A model (or peer) whose ``filters`` name ``stream_options`` is
never asked: stripping it is how to keep this away from a server that refuses the option.

The activity row and a capture see the stream as the server sent it, usage chunk included. A
server that, once asked, also puts ``"usage": null`` on every other chunk (OpenAI's own API
does; vLLM and llama-server do not) shows the client those nulls: only the usage chunk goes.
"""

from __future__ import annotations

from typing import Any

import orjson

from llamaswap_docker.config import ModelFilters

__all__ = ["USAGE_PATHS", "UsageHoldBack", "filters_name_stream_options", "usage_options"]

#: Routes whose streamed answers carry usage only when the request asks.
USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
#: A fragment longer than this cannot be the start of a usage chunk: it is relayed.
MAX_CARRY = 64 * 1024
_OPTIONS = "stream_options"


def usage_options(path: str, payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``stream_options`` to send instead of the client's, asking for usage; None when
    the request is no OpenAI-style stream or asked for usage itself."""
    if path not in USAGE_PATHS or payload is None or payload.get("stream") is not True:
        return None
    options = payload.get(_OPTIONS)
    if options is None:
        return {"include_usage": True}
    if type(options) is not dict or options.get("include_usage"):
        return None  # asked already, or no object: the server says what it makes of it
    return {**options, "include_usage": True}


def filters_name_stream_options(filters: ModelFilters) -> bool:
    """Whether a model's filters strip or set ``stream_options`` (then the hop leaves it be)."""
    named = [*filters.effective_set_params, *(key for params in filters.set_params_by_id.values()
                                               for key in params)]
    return (_OPTIONS in filters.stripped_params
            or any(key.removesuffix("?") == _OPTIONS for key in named))


def _last_boundary(data: bytes) -> int:
    """Where the last complete event of ``data`` ends (after its blank line); 0: none does."""
    ends = [at + len(mark) for mark in (b"\n\n", b"\r\r", b"\n\r\n")
            if (at := data.rfind(mark)) >= 0]
    return max(ends) if ends else 0


def _usage_only(data: bytes) -> bool:
    """Whether an event's data is a usage chunk: a ``usage`` object and no choices."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return type(document) is dict and bool(document.get("usage")) and not document.get("choices")


class UsageHoldBack:
    """An event stream as the client gets it: without the first usage chunk, every other
    byte as it came. An event cut across chunks waits for its end (it may be that chunk)."""

    __slots__ = ("carry", "held")

    def __init__(self) -> None:
        #: The start of an event whose end has not come yet (held until it does).
        self.carry = b""
        #: The usage chunk was found and held back (the rest passes untouched).
        self.held = False

    def chunk(self, chunk: bytes) -> bytes:
        """What of ``chunk`` goes to the client now (may be empty)."""
        if self.carry:
            chunk = self.carry + chunk
            self.carry = b""
        if self.held:
            return chunk
        if not chunk.endswith(b"\n\n"):
            end = _last_boundary(chunk)
            if len(chunk) - end <= MAX_CARRY:
                chunk, self.carry = chunk[:end], chunk[end:]
        return self._without_usage(chunk) if b'"usage"' in chunk else chunk

    def rest(self) -> bytes:
        """What is left at the end of the stream (an event the server did not end)."""
        carry, self.carry = self.carry, b""
        return self._without_usage(carry) if not self.held and b'"usage"' in carry else carry

    def _without_usage(self, data: bytes) -> bytes:
        start = 0
        while (at := data.find(b'"usage"', start)) >= 0:
            line_start = data.rfind(b"\n", 0, at) + 1
            line_end = data.find(b"\n", at)
            if line_end < 0:
                line_end = len(data)
            line = data[line_start:line_end].rstrip(b"\r")
            if line.startswith(b"data:") and _usage_only(line[5:]):
                self.held = True
                # The line and the blank line that ends its event (\n or \r\n).
                end = line_end + 1
                if data.startswith(b"\r\n", end):
                    end += 2
                elif data.startswith(b"\n", end):
                    end += 1
                return data[:line_start] + data[end:]
            start = line_end
        return data
