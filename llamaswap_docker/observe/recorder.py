"""What the hop tells about each request (``Trace``) and where it goes when it ends
(``Recorder``): the activity log, the Prometheus counters, captures and live events.

The request path only queues a finished trace (a tuple append); turning traces into rows,
counters and captures happens in batches, a moment later or as soon as anyone reads them
(``flush``): in a tight loop that work costs a fraction of what it costs spread between
requests, and the relay keeps its throughput (README: benchmarks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from llamaswap_docker.observe.activity import ActivityLog, ActivityRow
from llamaswap_docker.observe.bus import EventBus
from llamaswap_docker.observe.captures import Capture, CaptureBuffer, redact
from llamaswap_docker.observe.prometheus import Metrics
from llamaswap_docker.observe.usage import Usage, UsageScanner

__all__ = ["CLIENT_GONE", "FLUSH_AFTER_S", "Recorder", "Trace"]

#: Status recorded for a request whose client left before the end (nginx's convention).
CLIENT_GONE = 499
#: Seconds a finished request may wait in the queue before it becomes a row.
FLUSH_AFTER_S = 0.2
#: The end of a large JSON response kept for its usage object (the body is not kept).
BODY_TAIL_BYTES = 64 * 1024
#: Finished requests that make a batch worth processing at once.
FLUSH_BATCH = 64
_NO_USAGE = Usage()


class _Capture:
    """The bytes of one request and its response, kept when captures are on."""

    __slots__ = ("request_headers", "request_body", "response_body")

    def __init__(self) -> None:
        self.request_headers: list[tuple[bytes, bytes]] = []
        self.request_body = b""
        self.response_body: list[bytes] = []


class Trace:
    """One request's timings and the bytes it saw, filled in by the hop as it goes.

    Kept cheap on purpose: the hop makes one per request and sets its fields directly
    (``admitted``, ``status``, ``headers``); what it never sets is read from the class. A whole
    (small) body is only referenced here; it is parsed for usage later, with the batch
    (``Recorder.flush``).
    """

    #: When the body was read and the model known: waiting for the model starts here.
    routed: float | None = None
    admitted: float | None = None
    first_byte: float | None = None
    status = 0
    #: The response's raw headers (its content type is read from them later).
    headers: Sequence[tuple[bytes, bytes]] = ()
    body_bytes: bytes | None = None
    scanner: UsageScanner | None = None
    capture: _Capture | None = None
    # Set when the request ends (Recorder.finish).
    model = ""
    final_status = 0
    ended = 0.0

    def __init__(self, path: str, capture: bool) -> None:
        self.path = path
        self.started = time.monotonic()
        if capture:
            self.capture = _Capture()

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The request's bytes, kept when captures are on."""
        if self.capture is not None:
            self.capture.request_headers, self.capture.request_body = headers, body

    def body(self, body: bytes) -> None:
        """A whole response body, relayed at once."""
        self.first_byte = time.monotonic()
        self.body_bytes = body
        if self.capture is not None:
            self.capture.response_body.append(body)

    def chunk(self, chunk: bytes) -> None:
        """One relayed chunk of a large or streamed response (not kept whole)."""
        if self.first_byte is None:
            self.first_byte = time.monotonic()
            if not self.content_type().startswith("text/event-stream"):
                self.body_bytes = b""  # a large JSON body: its usage is in its tail
        if self.body_bytes is not None:
            self.body_bytes = (self.body_bytes + chunk)[-BODY_TAIL_BYTES:]
        else:
            if self.scanner is None:
                self.scanner = UsageScanner()
            self.scanner.chunk(chunk)
        if self.capture is not None:
            self.capture.response_body.append(chunk)

    def usage(self) -> Usage | None:
        if self.body_bytes:
            scanner = self.scanner = UsageScanner()
            scanner.body(self.body_bytes)
            self.body_bytes = None
        return self.scanner.usage if self.scanner is not None else None

    def content_type(self) -> str:
        for name, value in self.headers:
            if name == b"content-type":
                return value.decode("latin-1").lower()
        return ""


class Recorder:
    """Turns finished traces into activity rows, counters, captures and events."""

    def __init__(self, activity: ActivityLog, metrics: Metrics, bus: EventBus,
                 captures: CaptureBuffer) -> None:
        self.activity = activity
        self.metrics = metrics
        self.bus = bus
        self.captures = captures
        self._queue: list[Trace] = []
        self._timer: asyncio.Handle | None = None

    def trace(self, path: str) -> Trace:
        return Trace(path, self.captures.enabled)

    def finish(self, trace: Trace, model: str, status: int) -> None:
        """Queue a finished request (the request path's only cost of recording it)."""
        # The trace is kept as it is: parsing its usage now would cost the relay more than
        # parsing a batch of them a moment later (bench_relay).
        trace.model, trace.final_status, trace.ended = model, status, time.monotonic()
        self._queue.append(trace)
        if self.bus.subscribers:  # someone watches live: no delay
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER_S, self.flush)
        elif len(self._queue) >= FLUSH_BATCH:
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
        to_wall = time.time() - time.monotonic()
        for trace in queue:
            self._record(trace, trace.model, trace.final_status, trace.ended,
                         trace.ended + to_wall)

    def _record(self, trace: Trace, model: str, status: int, ended: float, wall: float) -> None:
        admitted = trace.admitted if trace.admitted is not None else ended
        wait_s = admitted - (trace.routed if trace.routed is not None else trace.started)
        duration_s = ended - trace.started
        usage = trace.usage() or _NO_USAGE
        prompt_rate, token_rate = usage.prompt_per_second, usage.tokens_per_second
        first = trace.first_byte
        content_type = trace.content_type()
        if not usage.from_timings and first is not None and content_type.startswith(
                "text/event-stream"):
            # No server timings: a stream's first byte splits prompt time from generation.
            if usage.output_tokens > 0 and ended - first > 0:
                token_rate = usage.output_tokens / (ended - first)
            if usage.input_tokens > 0 and first - admitted > 0:
                prompt_rate = usage.input_tokens / (first - admitted)
        row = self.activity.add(ActivityRow(
            id=0, timestamp=wall, model=model, path=trace.path, status=status,
            content_type=content_type, wait_ms=round(wait_s * 1000),
            duration_ms=round(max(duration_s * 1000, usage.timings_ms)),
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens, prompt_per_second=prompt_rate,
            tokens_per_second=token_rate,
        ))
        # /upstream/<model>/<any path>: one series, not one per path a client makes up.
        label = "/upstream" if trace.path.startswith("/upstream/") else trace.path
        self.metrics.request(model, label, status, duration_s, wait_s, usage.input_tokens,
                             usage.output_tokens, usage.cached_tokens)
        kept = trace.capture
        if kept is not None:
            row.has_capture = self.captures.add(Capture(
                row.id, trace.path, redact(kept.request_headers), kept.request_body,
                redact(trace.headers), b"".join(kept.response_body)))
        self.activity.persist(row)
        if self.bus.subscribers:  # the row's JSON is not free: only for someone listening
            self.bus.publish("activity", row.to_json())
