"""What the hop tells about each request (``Trace``) and where it goes when it ends
(``Recorder``): the activity log, the Prometheus counters, captures and live events."""

from __future__ import annotations

import time

from llamaswap_docker.observe.activity import ActivityLog, ActivityRow
from llamaswap_docker.observe.bus import EventBus
from llamaswap_docker.observe.captures import Capture, CaptureBuffer, redact
from llamaswap_docker.observe.prometheus import Metrics
from llamaswap_docker.observe.usage import UsageScanner

__all__ = ["Recorder", "Trace"]

#: Status recorded for a request whose client left before the end (nginx's convention).
CLIENT_GONE = 499


class Trace:
    """One request's timings and the bytes it saw, filled in by the hop as it goes."""

    __slots__ = ("path", "started", "admitted", "first_byte", "status", "content_type",
                 "scanner", "request_headers", "request_body", "response_headers",
                 "response_body")

    def __init__(self, path: str, capture: bool) -> None:
        self.path = path
        self.started = time.monotonic()
        self.admitted: float | None = None
        self.first_byte: float | None = None
        self.status = 0
        self.content_type = ""
        self.scanner = UsageScanner()
        self.request_headers: list[tuple[bytes, bytes]] | None = None
        self.request_body: bytes | None = b"" if capture else None
        self.response_headers: list[tuple[bytes, bytes]] = []
        # None: captures are off, nothing is kept.
        self.response_body: list[bytes] | None = [] if capture else None

    def body(self, body: bytes) -> None:
        """A whole response body, relayed at once."""
        self.first_byte = time.monotonic()
        self.scanner.body(body)
        if self.response_body is not None:
            self.response_body.append(body)

    def chunk(self, chunk: bytes) -> None:
        """One relayed chunk of a streamed response."""
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        self.scanner.chunk(chunk)
        if self.response_body is not None:
            self.response_body.append(chunk)


class Recorder:
    """Turns finished traces into activity rows, counters, captures and events."""

    def __init__(self, activity: ActivityLog, metrics: Metrics, bus: EventBus,
                 captures: CaptureBuffer) -> None:
        self.activity = activity
        self.metrics = metrics
        self.bus = bus
        self.captures = captures

    def trace(self, path: str) -> Trace:
        return Trace(path, self.captures.enabled)

    def finish(self, trace: Trace, model: str, status: int) -> ActivityRow:
        ended = time.monotonic()
        admitted = trace.admitted if trace.admitted is not None else ended
        wait_s = admitted - trace.started
        duration_s = ended - trace.started
        usage = trace.scanner.usage
        prompt_rate, token_rate = usage.prompt_per_second, usage.tokens_per_second
        first = trace.first_byte
        if not usage.from_timings and first is not None and trace.content_type.startswith(
                "text/event-stream"):
            # No server timings: a stream's first byte splits prompt time from generation.
            if usage.output_tokens > 0 and ended - first > 0:
                token_rate = usage.output_tokens / (ended - first)
            if usage.input_tokens > 0 and first - admitted > 0:
                prompt_rate = usage.input_tokens / (first - admitted)
        row = self.activity.add(ActivityRow(
            id=0, timestamp=time.time(), model=model, path=trace.path, status=status,
            content_type=trace.content_type, wait_ms=round(wait_s * 1000),
            duration_ms=round(max(duration_s * 1000, usage.timings_ms)),
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens, prompt_per_second=prompt_rate,
            tokens_per_second=token_rate,
        ))
        self.metrics.request(model, trace.path, status, duration_s, wait_s, usage.input_tokens,
                             usage.output_tokens, usage.cached_tokens)
        if trace.response_body is not None and trace.request_body is not None:
            row.has_capture = self.captures.add(Capture(
                row.id, trace.path, redact(trace.request_headers or []), trace.request_body,
                redact(trace.response_headers), b"".join(trace.response_body)))
        self.bus.publish("activity", row.to_json())
        return row
