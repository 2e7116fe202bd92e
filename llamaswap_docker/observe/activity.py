"""The activity log: one row per inference request, kept in memory and optionally in SQLite.

Rows carry llama-swap's activity fields (``id``, ``timestamp``, ``model``, ``req_path``,
``resp_content_type``, ``resp_status_code``, ``tokens``, ``duration_ms``, ``has_capture``) and
add ours: ``wait_ms`` (time waiting for the model to load or swap). With ``store.path`` every
row is also written to a SQLite file by a thread of its own (the request path only queues
it), and the last ``metricsMaxInMemory`` rows are read back at start.

Rows are kept as plain tuples (``COLUMNS`` order) and become ``ActivityRow`` objects only when
read: a tuple of numbers and strings is cheap to build and, once the garbage collector has seen
it, left out of its passes (a thousand live row objects would lengthen every one).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections import deque
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = ["COLUMNS", "ActivityLog", "ActivityRow", "percentile"]

COLUMNS = ("id", "timestamp", "model", "path", "status", "content_type", "wait_ms",
           "duration_ms", "input_tokens", "output_tokens", "cached_tokens",
           "prompt_per_second", "tokens_per_second", "has_capture")
_TIMESTAMP, _MODEL = COLUMNS.index("timestamp"), COLUMNS.index("model")


@dataclass(slots=True)
class ActivityRow:
    """One row, as read (fields in ``COLUMNS`` order: ``ActivityRow(*values)``)."""

    id: int
    timestamp: float  # epoch seconds, when the request ended
    model: str
    path: str
    status: int  # 499: the client left before the end
    content_type: str
    wait_ms: int
    duration_ms: int
    input_tokens: int = -1  # -1: the response did not say
    output_tokens: int = -1
    cached_tokens: int = -1
    prompt_per_second: float = -1.0
    tokens_per_second: float = -1.0
    has_capture: bool = False

    def to_json(self) -> dict[str, Any]:
        """llama-swap's row shape, plus ``wait_ms``."""
        return {
            "id": self.id,
            "timestamp": datetime.fromtimestamp(self.timestamp, timezone.utc).isoformat(),
            "model": self.model,
            "req_path": self.path,
            "resp_content_type": self.content_type,
            "resp_status_code": self.status,
            "tokens": {
                "cache_tokens": self.cached_tokens,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "prompt_per_second": round(self.prompt_per_second, 2),
                "tokens_per_second": round(self.tokens_per_second, 2),
            },
            "duration_ms": self.duration_ms,
            "wait_ms": self.wait_ms,
            "has_capture": self.has_capture,
        }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class ActivityLog:
    """The last ``limit`` rows in memory, every row in SQLite when ``store_path`` is set."""

    def __init__(self, limit: int, store_path: str | None = None) -> None:
        self._rows: deque[tuple[Any, ...]] = deque(maxlen=limit)
        self.store_path = Path(store_path).expanduser() if store_path else None
        #: The id of the next new row (ids only grow, across restarts with a store).
        self.next_id = 1
        self._writes: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # Rows queued and rows written: a query waits until the store has what memory has.
        self._queued = self._written = 0
        self._progress = threading.Condition()

    @property
    def rows(self) -> list[ActivityRow]:
        """The rows in memory, oldest first."""
        return [ActivityRow(*values) for values in self._rows]

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Create or read the SQLite store (when configured) and start its writer."""
        if self.store_path is None:
            return
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS activity (id INTEGER PRIMARY KEY, timestamp REAL, "
                "model TEXT, path TEXT, status INTEGER, content_type TEXT, wait_ms INTEGER, "
                "duration_ms INTEGER, input_tokens INTEGER, output_tokens INTEGER, "
                "cached_tokens INTEGER, prompt_per_second REAL, tokens_per_second REAL, "
                "has_capture INTEGER)")
            db.execute("CREATE INDEX IF NOT EXISTS activity_model_time ON activity (model, timestamp)")
            db.commit()
            last = db.execute("SELECT max(id) FROM activity").fetchone()[0]
            recent = db.execute("SELECT * FROM activity ORDER BY id DESC LIMIT ?",
                                (self._rows.maxlen or 0,)).fetchall()
        self.next_id = (last or 0) + 1
        self._rows.extend(_values(values) for values in reversed(recent))
        self._writer = threading.Thread(target=self._write_loop, name="activity-store",
                                        daemon=True)
        self._writer.start()
        logger.bind(path=str(self.store_path), rows=last or 0).info("activity store opened")

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join(timeout=10)
            self._writer = None

    # -- writing -------------------------------------------------------------------------------

    def take_ids(self, count: int) -> int:
        """Reserve ``count`` row ids; the first of them."""
        first = self.next_id
        self.next_id += count
        return first

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        """Keep complete rows (``COLUMNS`` order) in memory, and queue them for the store."""
        self._rows.extend(rows)
        if self._writer is not None:
            self._queued += len(rows)
            for values in rows:
                self._writes.put(values)

    def _write_loop(self) -> None:
        db = self._connect()
        try:
            while True:
                batch = [self._writes.get()]
                while not self._writes.empty() and len(batch) < 1000:
                    batch.append(self._writes.get())
                rows = [r for r in batch if r is not None]
                if rows:
                    try:
                        db.executemany(
                            f"INSERT OR REPLACE INTO activity VALUES ({','.join('?' * len(COLUMNS))})",
                            rows)
                        db.commit()
                    except sqlite3.Error as exc:
                        logger.bind(path=str(self.store_path)).error("activity store: {}", exc)
                with self._progress:
                    self._written += len(rows)
                    self._progress.notify_all()
                if None in batch:
                    return
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        assert self.store_path is not None
        db = sqlite3.connect(self.store_path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    # -- reading -------------------------------------------------------------------------------

    def query(self, model: str | None = None, since: float | None = None,
              until: float | None = None, limit: int = 100, offset: int = 0
              ) -> tuple[int, list[ActivityRow]]:
        """Rows matching the filters, newest first, and how many match in all.

        Blocking when a store is configured (it is read): call it in a thread.
        """
        if self.store_path is not None:
            return self._query_store(model, since, until, limit, offset)
        matching = [values for values in reversed(self._rows)
                    if (model is None or values[_MODEL] == model)
                    and (since is None or values[_TIMESTAMP] >= since)
                    and (until is None or values[_TIMESTAMP] <= until)]
        return len(matching), [ActivityRow(*values) for values in matching[offset:offset + limit]]

    def _query_store(self, model: str | None, since: float | None, until: float | None,
                     limit: int, offset: int) -> tuple[int, list[ActivityRow]]:
        where, args = [], []
        for clause, value in (("model = ?", model), ("timestamp >= ?", since),
                              ("timestamp <= ?", until)):
            if value is not None:
                where.append(clause)
                args.append(value)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        queued = self._queued
        with self._progress:  # what was added before this query is in the store first
            self._progress.wait_for(lambda: self._written >= queued or self._writer is None,
                                    timeout=5)
        with closing(self._connect()) as db:
            total = db.execute(f"SELECT count(*) FROM activity{condition}", args).fetchone()[0]
            rows = db.execute(f"SELECT * FROM activity{condition} ORDER BY id DESC LIMIT ? OFFSET ?",
                              [*args, limit, offset]).fetchall()
        return total, [ActivityRow(*_values(values)) for values in rows]

    def stats(self) -> dict[str, Any]:
        """Per model, over the rows in memory: counts, tokens, and speed and time percentiles."""
        by_model: dict[str, list[ActivityRow]] = {}
        for row in self.rows:
            by_model.setdefault(row.model, []).append(row)
        models = {}
        for model, rows in sorted(by_model.items()):
            models[model] = {
                "requests": len(rows),
                "errors": sum(1 for r in rows if r.status >= 400),
                "input_tokens": sum(max(r.input_tokens, 0) for r in rows),
                "output_tokens": sum(max(r.output_tokens, 0) for r in rows),
                "cached_tokens": sum(max(r.cached_tokens, 0) for r in rows),
                "tokens_per_second": _spread([r.tokens_per_second for r in rows
                                              if r.tokens_per_second >= 0]),
                "prompt_per_second": _spread([r.prompt_per_second for r in rows
                                              if r.prompt_per_second >= 0]),
                "duration_ms": _spread([float(r.duration_ms) for r in rows]),
                "wait_ms": _spread([float(r.wait_ms) for r in rows]),
            }
        first = self._rows[0][_TIMESTAMP] if self._rows else None
        return {"rows": len(self._rows), "since": first, "models": models}


def _spread(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": (round(v, 2) if (v := percentile(values, q)) is not None else None)
            for q in (50, 90, 99)}


def _values(stored: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as SQLite gives it back, with ``has_capture`` a bool again."""
    return (*stored[:-1], bool(stored[-1]))
