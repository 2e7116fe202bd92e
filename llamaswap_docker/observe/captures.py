"""Request captures (``captureBuffer``): recent requests' bodies, for ``GET /api/captures/<id>``.

A bounded buffer: the oldest captures go when the newest would not fit; one larger than the
whole buffer is not kept. Credentials never enter it (their header values are redacted).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Capture", "CaptureBuffer", "REDACTED_HEADERS"]

REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization", "cookie",
                              "set-cookie", "api-key"})


@dataclass(frozen=True)
class Capture:
    id: int
    req_path: str
    req_headers: dict[str, str]
    req_body: bytes
    resp_headers: dict[str, str]
    resp_body: bytes

    @property
    def size(self) -> int:
        return len(self.req_body) + len(self.resp_body)

    def to_json(self) -> dict[str, Any]:
        """llama-swap's capture shape; bodies as text (UTF-8, invalid bytes replaced)."""
        return {"id": self.id, "req_path": self.req_path, "req_headers": self.req_headers,
                "req_body": self.req_body.decode("utf-8", "replace"),
                "resp_headers": self.resp_headers,
                "resp_body": self.resp_body.decode("utf-8", "replace")}


def redact(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        out[key] = "[redacted]" if key in REDACTED_HEADERS else value.decode("latin-1")
    return out


class CaptureBuffer:
    """At most ``limit_bytes`` of bodies, newest kept."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self._items: OrderedDict[int, Capture] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def add(self, capture: Capture) -> bool:
        """Keep it (dropping the oldest as needed); False when it alone exceeds the buffer."""
        if capture.size > self.limit:
            return False
        while self._items and self.used + capture.size > self.limit:
            _, oldest = self._items.popitem(last=False)
            self.used -= oldest.size
        self._items[capture.id] = capture
        self.used += capture.size
        return True

    def get(self, capture_id: int) -> Capture | None:
        return self._items.get(capture_id)
