"""What the hop tells about each request (``Trace``) and where it goes when it ends
(``Recorder``): the activity log, the Prometheus counters, captures and live events.

The request path only queues a finished request's values (a tuple); turning them into rows,
counters and captures happens in batches, a moment later or as soon as anyone reads them
(``flush``): in a tight loop that work costs a fraction of what it costs spread between
requests, and the relay keeps its throughput (README: benchmarks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from llamaswap_docker.observe.activity import ActivityLog, ActivityRow
from llamaswap_docker.observe.bus import EventBus
from llamaswap_docker.observe.captures import Capture, CaptureBuffer, redact
from llamaswap_docker.observe.prometheus import Ended, Metrics
from llamaswap_docker.observe.usage import UsageScanner, body_usage

__all__ = ["CLIENT_GONE", "FLUSH_AFTER_S", "Recorder", "RecordingOff", "Trace"]

#: Status recorded for a request whose client left before the end (nginx's convention).
CLIENT_GONE = 499
#: Seconds a finished request may wait in the queue before it becomes a row.
FLUSH_AFTER_S = 0.2
#: The end of a large JSON response kept for its usage object (the body is not kept).
BODY_TAIL_BYTES = 64 * 1024
#: Finished requests that make a batch worth processing at once.
FLUSH_BATCH = 64


class _Capture:
    """The bytes of one request and its response, kept when captures are on."""

    __slots__ = ("request_headers", "request_body", "response_body")

    def __init__(self) -> None:
        self.request_headers: list[tuple[bytes, bytes]] = []
        self.request_body = b""
        self.response_body: list[bytes] = []


class Trace:
    """One request's timings and the bytes it saw, filled in by the hop as it goes.

    Kept cheap on purpose (slots; the hop sets ``routed``, ``admitted``, ``status`` and
    ``headers`` directly). It lives as long as its request: ``Recorder.finish`` keeps only
    plain values of it for the batch, where a whole (small) body is parsed for usage.
    """

    __slots__ = ("path", "started", "routed", "admitted", "first_byte", "status", "headers",
                 "body_bytes", "scanner", "capture")

    def __init__(self, path: str, capture: bool) -> None:
        self.path = path
        self.started = time.monotonic()
        #: When the body was read and the model known: waiting for the model starts here.
        self.routed: float | None = None
        #: When the model took it (``routed`` when it did not wait; None: it never did).
        self.admitted: float | None = None
        self.first_byte: float | None = None
        #: The status the request ended with (the hop sets it as it goes; 0: none yet).
        self.status = 0
        #: The response's raw headers (its content type is read from them when it ends).
        self.headers: Sequence[tuple[bytes, bytes]] = ()
        self.body_bytes: bytes | None = None
        self.scanner: UsageScanner | None = None
        self.capture = _Capture() if capture else None

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The request's bytes, kept when captures are on (the hop calls this only then)."""
        if self.capture is not None:
            self.capture.request_headers, self.capture.request_body = headers, body

    def body(self, body: bytes) -> None:
        """A whole response body, relayed at once (``first_byte`` stays unset: it only splits
        a stream's prompt time from its generation)."""
        self.body_bytes = body
        if self.capture is not None:
            self.capture.response_body.append(body)

    def chunk(self, chunk: bytes) -> None:
        """One relayed chunk of a large or streamed response (not kept whole)."""
        if self.first_byte is None:
            self.first_byte = time.monotonic()
            if not _content_type(self.headers).startswith("text/event-stream"):
                self.body_bytes = b""  # a large JSON body: its usage is in its tail
        if self.body_bytes is not None:
            self.body_bytes = (self.body_bytes + chunk)[-BODY_TAIL_BYTES:]
        else:
            if self.scanner is None:
                self.scanner = UsageScanner()
            self.scanner.chunk(chunk)
        if self.capture is not None:
            self.capture.response_body.append(chunk)


_CONTENT_TYPES: dict[bytes, str] = {}


def _content_type(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The response's content type, lower case ("" when it has none)."""
    for name, value in headers:
        if name == b"content-type":
            found = _CONTENT_TYPES.get(value)
            if found is None:
                found = value.decode("latin-1").lower()
                if len(_CONTENT_TYPES) < 256:  # the few a model server sends, remembered
                    _CONTENT_TYPES[value] = found
            return found
    return ""


#: A finished request as it waits for its batch: model, path, started, routed, admitted,
#: first byte, ended, status, content type, whole body, stream scanner, capture, and the
#: response headers (kept only with a capture).
_Finished = tuple[str, str, float, float | None, float | None, float | None, float, int, str,
                  bytes | None, UsageScanner | None, _Capture | None,
                  Sequence[tuple[bytes, bytes]] | None]


class Recorder:
    """Turns finished traces into activity rows, counters, captures and events."""

    def __init__(self, activity: ActivityLog, metrics: Metrics, bus: EventBus,
                 captures: CaptureBuffer) -> None:
        self.activity = activity
        self.metrics = metrics
        self.bus = bus
        self.captures = captures
        self._queue: list[_Finished] = []
        self._timer: asyncio.Handle | None = None

    def trace(self, path: str) -> Trace:
        return Trace(path, self.captures.enabled)

    def finish(self, trace: Trace, model: str) -> None:
        """Queue a finished request (the request path's only cost of recording it)."""
        # Its usage is parsed a moment later, with a batch: that costs the relay less than
        # parsing it now. Only plain values wait for the batch, not the trace and the objects
        # it holds: kept alive that long, those cost the collector more than the tuple costs
        # to build (bench_recording, and CPU per request at c=64: README, benchmarks).
        capture = trace.capture
        self._queue.append((
            model, trace.path, trace.started, trace.routed, trace.admitted, trace.first_byte,
            time.monotonic(), trace.status, _content_type(trace.headers), trace.body_bytes,
            trace.scanner, capture, None if capture is None else trace.headers))
        if self.bus.subscribers:  # someone watches live: no delay
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER_S, self.flush)
        elif len(self._queue) == FLUSH_BATCH:  # once per batch, however many end at once
            # Small batches: the traces waiting stay few (and their memory warm).
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Turn every queued request into its row, counters and capture (readers call this
        first, so they see every request that has ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, []
        if not queue:
            return
        # One loop, names bound once, no call that can be left out: this runs for every
        # request, and calls and lookups were most of its cost (bench_recording). The rows go
        # to the activity log and the counters a batch at a time.
        to_wall = time.time() - time.monotonic()
        captures = self.captures
        rows: list[tuple[Any, ...]] = []
        ended: list[Ended] = []
        for row_id, (model, path, started, routed, admitted, first, end, status, content_type,
                     body, scanner, kept, headers) in enumerate(
                         queue, self.activity.take_ids(len(queue))):
            status = status or 500
            if admitted is None:  # it never got its model: it waited until the end
                admitted = end
            wait_s = admitted - (started if routed is None else routed)
            duration_s = end - started
            tokens = body_usage(body) if body else (
                scanner.usage.tokens if scanner is not None and scanner.usage else None)
            if tokens is None:
                input_tokens = output_tokens = cached_tokens = -1
                prompt_rate = token_rate = timings_ms = -1.0
            else:
                (input_tokens, output_tokens, cached_tokens, prompt_rate, token_rate, timings_ms,
                 from_timings) = tokens
                if not from_timings and first is not None and content_type.startswith(
                        "text/event-stream"):
                    # No server timings: a stream's first byte splits prompt time from
                    # generation.
                    if output_tokens > 0 and end - first > 0:
                        token_rate = output_tokens / (end - first)
                    if input_tokens > 0 and first - admitted > 0:
                        prompt_rate = input_tokens / (first - admitted)
            has_capture = kept is not None and captures.add(Capture(
                row_id, path, redact(kept.request_headers), kept.request_body,
                redact(headers), b"".join(kept.response_body)))
            duration_ms = duration_s * 1000
            if timings_ms > duration_ms:  # the server's own clock saw more of it
                duration_ms = timings_ms
            rows.append((row_id, end + to_wall, model, path, status, content_type,
                         round(wait_s * 1000) if wait_s else 0, round(duration_ms),
                         input_tokens, output_tokens, cached_tokens, prompt_rate, token_rate,
                         has_capture))
            ended.append((model, path, status, duration_s, wait_s, input_tokens, output_tokens,
                          cached_tokens))
        self.activity.extend(rows)
        self.metrics.requests_ended(ended)
        if self.bus.subscribers:  # the row's JSON is not free: only for someone listening
            for values in rows:
                self.bus.publish("activity", ActivityRow(*values).to_json())


class _NoTrace(Trace):
    """The one trace a proxy that records nothing hands every request: it keeps nothing."""

    __slots__ = ()

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        pass

    def body(self, body: bytes) -> None:
        pass

    def chunk(self, chunk: bytes) -> None:
        pass


class RecordingOff(Recorder):
    """Records nothing (``LLAMASWAP_RECORDING=false``): no activity rows, request counters or
    captures; the model and load metrics the manager keeps stay."""

    def __init__(self, activity: ActivityLog, metrics: Metrics, bus: EventBus,
                 captures: CaptureBuffer) -> None:
        super().__init__(activity, metrics, bus, captures)
        self._trace = _NoTrace("", False)

    def trace(self, path: str) -> Trace:
        return self._trace

    def finish(self, trace: Trace, model: str) -> None:
        pass
