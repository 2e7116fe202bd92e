"""Token usage read from a response as it is relayed, never delaying it.

Sources, best first: llama-server's ``timings`` (its own token counts and speeds), then the
``usage`` object of OpenAI (chat, completions, responses' ``response.usage``) and Anthropic
(``message_start``'s ``message.usage`` and ``message_delta``'s ``usage``), as vLLM and
llama-server send them. A streamed answer is scanned chunk by chunk: only ``data:`` lines that
name ``usage`` or ``timings`` are parsed, so the relay pays a substring search per chunk.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["Tokens", "Usage", "UsageScanner", "body_usage"]

#: The longest partial SSE line kept between chunks (usage lines are short).
MAX_CARRY = 1 << 20
_MARKERS = (b'"usage"', b'"timings"')
#: How far before a body's usage object its llama-server timings may start.
TIMINGS_NEAR = 4096
#: What a response says of its tokens: input, output and cached tokens (-1: not said),
#: prompt and generation tokens per second and the server's own milliseconds (-1: not
#: said), and whether llama-server's timings said it.
Tokens = tuple[int, int, int, float, float, float, bool]


class Usage:
    """What a response said of its tokens (-1: it did not say)."""

    __slots__ = ("input_tokens", "output_tokens", "cached_tokens", "prompt_per_second",
                 "tokens_per_second", "timings_ms", "from_timings")

    def __init__(self) -> None:
        self.input_tokens = -1
        self.output_tokens = -1
        self.cached_tokens = -1
        self.prompt_per_second = -1.0
        self.tokens_per_second = -1.0
        #: llama-server's prompt_ms + predicted_ms, when it sent timings.
        self.timings_ms = -1.0
        self.from_timings = False

    @property
    def tokens(self) -> Tokens:
        return (self.input_tokens, self.output_tokens, self.cached_tokens,
                self.prompt_per_second, self.tokens_per_second, self.timings_ms,
                self.from_timings)

    def absorb(self, document: Any) -> None:
        """Take what a JSON document (a body, or one SSE event) says of usage."""
        if isinstance(document, list):  # /infill answers a list; the last item has timings
            document = document[-1] if document else None
        if not isinstance(document, dict):
            return
        timings = document.get("timings")
        if isinstance(timings, dict):
            self._timings(timings)
        usage = document.get("usage")
        if not isinstance(usage, dict):
            nested = document.get("response") or document.get("message")  # responses, Anthropic
            usage = nested.get("usage") if isinstance(nested, dict) else None
        if isinstance(usage, dict):
            self._usage(usage)

    def _timings(self, timings: dict[str, Any]) -> None:
        self.input_tokens = _int(timings.get("prompt_n"), self.input_tokens)
        self.output_tokens = _int(timings.get("predicted_n"), self.output_tokens)
        self.cached_tokens = _int(timings.get("cache_n"), self.cached_tokens)
        self.prompt_per_second = _float(timings.get("prompt_per_second"), self.prompt_per_second)
        self.tokens_per_second = _float(timings.get("predicted_per_second"),
                                        self.tokens_per_second)
        ms = _float(timings.get("prompt_ms"), 0.0) + _float(timings.get("predicted_ms"), 0.0)
        if ms > 0:
            self.timings_ms = ms
        self.from_timings = True

    def _usage(self, usage: dict[str, Any]) -> None:
        if self.from_timings:
            # llama-server's own counts win; usage may still say what was cached.
            if self.cached_tokens < 0:
                self.cached_tokens = _cached(usage, self.cached_tokens)
            return
        # An Anthropic stream says input tokens at the start and output tokens at the end:
        # keep what each event says, never a missing field as 0.
        self.input_tokens, self.output_tokens, self.cached_tokens = _counts(
            usage, self.input_tokens, self.output_tokens, self.cached_tokens)


def _counts(usage: dict[str, Any], input_tokens: int, output_tokens: int,
            cached_tokens: int) -> tuple[int, int, int]:
    """The input, output and cached tokens a usage object says (the defaults where not)."""
    # Runs for every request: plain ints, as servers send them, are taken as they are, and
    # the cache fields are looked for only where there are any.
    get = usage.get
    count = get("prompt_tokens")
    if type(count) is not int:
        count = _int(get("input_tokens") if count is None else count, input_tokens)
    output = get("completion_tokens")
    if type(output) is not int:
        output = _int(get("output_tokens") if output is None else output, output_tokens)
    if get("prompt_tokens_details") or get("input_tokens_details") or (
            "cache_read_input_tokens" in usage):
        cached_tokens = _cached(usage, cached_tokens)
    return count, output, cached_tokens


def _cached(usage: dict[str, Any], default: int) -> int:
    get = usage.get
    for key in ("prompt_tokens_details", "input_tokens_details"):
        details = get(key)
        if details is not None and type(details) is dict and "cached_tokens" in details:
            return _int(details["cached_tokens"], default)
    return _int(get("cache_read_input_tokens"), default)


def _int(value: Any, default: int) -> int:
    if type(value) is int:  # the usual case, checked first: this runs for every request
        return value
    return int(value) if isinstance(value, float) else default


def _float(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def body_usage(body: bytes) -> Tokens | None:
    """What a whole JSON body says of its tokens (None: nothing)."""
    at = body.rfind(_MARKERS[0])
    # This runs for every request, and each call costs more than the bytes it scans: the
    # usual answers take as few as possible. The slices tried are only proofs of a shape:
    # orjson refuses one that is not a complete object, and then the whole body is parsed.
    found = None
    # llama-server's timings sit near usage (before or after it, by version): with them, the
    # whole body is parsed.
    if body.find(_MARKERS[1], at - TIMINGS_NEAR if at > TIMINGS_NEAR else 0) < 0:
        if at < 0:
            return None  # neither usage nor timings
        if body[-1] == 125:
            # OpenAI's order: usage is the last key, all of it up to the body's last "}".
            try:
                found = orjson.loads(body[at + 8:-1])
            except orjson.JSONDecodeError:
                pass
        if found is None:
            # A flat usage object elsewhere (vLLM's order): the slice up to its first "}" is
            # unbalanced when it is nested.
            start = body.find(b"{", at)
            try:
                found = orjson.loads(body[start:body.find(b"}", start) + 1]) if start > 0 else None
            except orjson.JSONDecodeError:
                pass
    if type(found) is not dict:
        usage = _parsed(body, None)
        return None if usage is None else usage.tokens
    return (*_counts(found, -1, -1, -1), -1.0, -1.0, -1.0, False)


def _parsed(data: bytes, usage: Usage | None) -> Usage | None:
    """``usage`` (made if None) with what the JSON document in ``data`` says of usage."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return usage
    if usage is None:
        usage = Usage()
    usage.absorb(document)
    return usage


class UsageScanner:
    """Feeds a response's bytes, as relayed, into a ``Usage`` (made when one is found)."""

    __slots__ = ("usage", "_carry")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._carry = b""

    def _absorb(self, data: bytes) -> None:
        self.usage = _parsed(data, self.usage)

    def chunk(self, chunk: bytes) -> None:
        """One chunk of an event stream."""
        data = self._carry + chunk if self._carry else chunk
        if _MARKERS[0] not in data and _MARKERS[1] not in data:
            # A marker split across chunks sits in the last, unfinished line: keep that.
            end = data.rfind(b"\n")
            self._carry = data[end + 1:] if end + 1 < len(data) else b""
            if len(self._carry) > MAX_CARRY:
                self._carry = b""
            return
        lines = data.split(b"\n")
        carry = lines.pop()
        self._carry = carry if len(carry) <= MAX_CARRY else b""
        for line in lines:
            if line.startswith(b"data:") and (_MARKERS[0] in line or _MARKERS[1] in line):
                self._absorb(line[5:])
