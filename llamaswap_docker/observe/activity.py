"""The activity log: one row per inference request, kept in memory and optionally in SQLite.

Rows carry llama-swap's activity fields (``id``, ``timestamp``, ``model``, ``req_path``,
``resp_content_type``, ``resp_status_code``, ``tokens``, ``duration_ms``, ``has_capture``) and
add ours: ``wait_ms`` (time waiting for the model to load or swap). With ``store.path`` every
row is also written to a SQLite file by a thread of its own (the request path only queues
it), and the last ``metricsMaxInMemory`` rows are read back at start.

The store's file says its schema in ``PRAGMA user_version`` (0: the first release's file,
which had none); opening it runs the migrations it has not had, in order, in one transaction.
Rows are written and read by column name, so a column a later migration adds breaks no
insert. A file this release cannot use (written by a newer one, damaged, not SQLite) is moved
aside with a warning naming both paths, and a new store starts in its place: never dropped.

Rows are kept as plain tuples (``COLUMNS`` order) and become ``ActivityRow`` objects only when
read: a tuple of numbers and strings is cheap to build and, once the garbage collector has seen
it, left out of its passes (a thousand live row objects would lengthen every one).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = ["COLUMNS", "SCHEMA_VERSION", "SORT_KEYS", "ActivityLog", "ActivityQuery",
           "ActivityRow", "percentile"]

COLUMNS = ("id", "timestamp", "model", "path", "status", "content_type", "wait_ms",
           "duration_ms", "input_tokens", "output_tokens", "cached_tokens",
           "prompt_per_second", "tokens_per_second", "has_capture")
_ID, _TIMESTAMP, _MODEL, _STATUS = (COLUMNS.index(name)
                                    for name in ("id", "timestamp", "model", "status"))
# By name, in COLUMNS order: a column a later schema adds changes neither statement.
_SELECTED = ", ".join(COLUMNS)
_INSERT = (f"INSERT OR REPLACE INTO activity ({_SELECTED}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
#: Sort keys of llama-swap's activity API (its UI's column ids) → our columns; ``wait`` is ours.
#: No draft tokens are recorded here: ``drafted`` sorts by id.
SORT_KEYS = {
    "id": "id", "time": "timestamp", "model": "model", "req_path": "path",
    "resp_status_code": "status", "resp_content_type": "content_type",
    "cached": "cached_tokens", "prompt": "input_tokens", "generated": "output_tokens",
    "drafted": "id", "prompt_speed": "prompt_per_second", "gen_speed": "tokens_per_second",
    "duration": "duration_ms", "wait": "wait_ms",
}


@dataclass(frozen=True)
class ActivityQuery:
    """Which rows, in what order: every filter set must match (llama-swap's ActivityQuery)."""

    models: tuple[str, ...] = ()  # any of these; () = every model
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None
    min_id: int | None = None  # inclusive
    max_id: int | None = None
    statuses: tuple[int, int] | None = None  # [low, high): response statuses kept
    sort: str = "id"  # a SORT_KEYS key; ties are ordered by id, the same way
    descending: bool = True
    limit: int = 100
    offset: int = 0


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
        # Queries' connection (the writer has its own): opened by the first, closed by close().
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    @property
    def rows(self) -> list[ActivityRow]:
        """The rows in memory, oldest first."""
        return [ActivityRow(*values) for values in self._rows]

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Create, migrate or read the SQLite store (when configured) and start its writer.

        A store this release cannot use is moved aside (a warning names both paths) and a new
        one is started in its place.

        Raises:
            sqlite3.Error: the store cannot be opened (locked past the timeout, unwritable).
            OSError: its folder cannot be made, or an unusable file cannot be moved aside.
        """
        if self.store_path is None:
            return
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db, migrated_from, last, recent = self._open_store()
        except _StoreUnusable as exc:
            aside = _move_aside(self.store_path)
            logger.bind(path=str(self.store_path), moved_to=str(aside)).warning(
                "activity store {} cannot be used ({}): moved aside to {}; a new one starts",
                self.store_path, exc, aside)
            db, migrated_from, last, recent = self._open_store()
        self.next_id = last + 1
        self._rows.extend(_values(values) for values in reversed(recent))
        # The writer thread owns this connection from here on (and closes it).
        self._writer = threading.Thread(target=self._write_loop, args=(db,),
                                        name="activity-store", daemon=True)
        self._writer.start()
        log = logger.bind(path=str(self.store_path), rows=last, schema=len(MIGRATIONS))
        if migrated_from is not None:
            log = log.bind(migrated_from=migrated_from)
        log.info("activity store opened")

    def _open_store(self) -> tuple[sqlite3.Connection, int | None, int, list[tuple[Any, ...]]]:
        """The writer's connection, the schema version migrated from (None: none needed), the
        last row id, and the newest rows (newest first)."""
        assert self.store_path is not None
        # Autocommit: transactions are explicit (BEGIN ... COMMIT), DDL included.
        db = sqlite3.connect(self.store_path, timeout=10, isolation_level=None,
                             check_same_thread=False)
        try:
            _check_version(db)  # before anything writes to a newer release's file
            db.execute("PRAGMA journal_mode=WAL")
            migrated_from = _migrate(db)
            last = db.execute("SELECT max(id) FROM activity").fetchone()[0] or 0
            recent = db.execute(f"SELECT {_SELECTED} FROM activity ORDER BY id DESC LIMIT ?",
                                (self._rows.maxlen or 0,)).fetchall()
        except sqlite3.DatabaseError as exc:
            db.close()
            if _damaged(exc):
                raise _StoreUnusable(str(exc)) from exc
            raise
        except BaseException:
            db.close()
            raise
        return db, migrated_from, last, recent

    def close(self) -> None:
        """Write what is queued and stop the writer; close the store."""
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join(timeout=10)
            self._writer = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

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

    def _write_loop(self, db: sqlite3.Connection) -> None:
        """Write queued rows in batches on the one connection ``open`` made, until ``None``."""
        try:
            while True:
                batch = [self._writes.get()]
                while not self._writes.empty() and len(batch) < 1000:
                    batch.append(self._writes.get())
                rows = [r for r in batch if r is not None]
                if rows:
                    try:
                        db.execute("BEGIN")
                        db.executemany(_INSERT, rows)
                        db.execute("COMMIT")
                    except sqlite3.Error as exc:
                        with suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                        logger.bind(path=str(self.store_path), rows=len(rows)).error(
                            "activity store: rows not written: {}", exc)
                with self._progress:
                    self._written += len(rows)
                    self._progress.notify_all()
                if None in batch:
                    return
        finally:
            db.close()

    # -- reading -------------------------------------------------------------------------------

    def query(self, query: ActivityQuery = ActivityQuery()) -> tuple[int, list[ActivityRow]]:
        """One page of the rows matching ``query``, in its order, and how many match in all.

        Blocking when a store is configured (it is read): call it in a thread.
        """
        if self.store_path is not None:
            return self._query_store(query)
        models = set(query.models)
        since, until, min_id, max_id = query.since, query.until, query.min_id, query.max_id
        low, high = query.statuses or (None, None)
        matching = [values for values in reversed(self._rows)
                    if (not models or values[_MODEL] in models)
                    and (since is None or values[_TIMESTAMP] >= since)
                    and (until is None or values[_TIMESTAMP] <= until)
                    and (min_id is None or values[_ID] >= min_id)
                    and (max_id is None or values[_ID] <= max_id)
                    and (low is None or low <= values[_STATUS] < high)]
        if not query.descending:
            matching.reverse()  # ids grow with time: memory is in id order
        column = SORT_KEYS.get(query.sort, "id")
        if column != "id":
            index = COLUMNS.index(column)
            # Stable sort of rows already in id order (as asked): ties keep it.
            matching.sort(key=lambda values: values[index], reverse=query.descending)
        page = matching[query.offset:query.offset + query.limit]
        return len(matching), [ActivityRow(*values) for values in page]

    def _query_store(self, query: ActivityQuery) -> tuple[int, list[ActivityRow]]:
        where: list[str] = []
        args: list[Any] = []
        if query.models:
            where.append(f"model IN ({','.join('?' * len(query.models))})")
            args += query.models
        low, high = query.statuses or (None, None)
        for clause, value in (("timestamp >= ?", query.since), ("timestamp <= ?", query.until),
                              ("id >= ?", query.min_id), ("id <= ?", query.max_id),
                              ("status >= ?", low), ("status < ?", high)):
            if value is not None:
                where.append(clause)
                args.append(value)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        direction = "DESC" if query.descending else "ASC"
        column = SORT_KEYS.get(query.sort, "id")  # a whitelisted name: safe in the SQL text
        order = f"id {direction}" if column == "id" else f"{column} {direction}, id {direction}"
        limit, offset = query.limit, query.offset
        queued = self._queued
        with self._progress:  # what was added before this query is in the store first
            self._progress.wait_for(lambda: self._written >= queued or self._writer is None,
                                    timeout=5)
        with self._read_lock:  # one reader connection, kept: queries come from worker threads
            if self._reader is None:
                self._reader = sqlite3.connect(self.store_path, timeout=10,
                                               check_same_thread=False)
            db = self._reader
            total = db.execute(f"SELECT count(*) FROM activity{condition}", args).fetchone()[0]
            rows = db.execute(
                f"SELECT {_SELECTED} FROM activity{condition} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, limit, offset]).fetchall()
        return total, [ActivityRow(*_values(values)) for values in rows]

    def stats(self, rows: list[ActivityRow] | None = None) -> dict[str, Any]:
        """Per model, over the rows in memory (``rows``: ``self.rows`` already read): counts,
        tokens, and speed and time percentiles."""
        by_model: dict[str, list[ActivityRow]] = {}
        for row in self.rows if rows is None else rows:
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


# -- the store's schema -------------------------------------------------------------------------

#: The first release's columns (schema 0, unversioned): a file without them is not ours.
_FIRST_COLUMNS = ("id", "timestamp", "model", "path", "status", "content_type", "wait_ms",
                  "duration_ms", "input_tokens", "output_tokens", "cached_tokens",
                  "prompt_per_second", "tokens_per_second", "has_capture")


class _StoreUnusable(Exception):
    """The store's file cannot be used by this release (the message says why)."""


def _version_1(db: sqlite3.Connection) -> None:
    """The first release's table and index (created in a new file), under a version."""
    found = {row[1] for row in db.execute("PRAGMA table_info(activity)")}
    if found and not found.issuperset(_FIRST_COLUMNS):
        missing = ", ".join(c for c in _FIRST_COLUMNS if c not in found)
        raise _StoreUnusable(f"its activity table lacks the columns {missing}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS activity (id INTEGER PRIMARY KEY, timestamp REAL, "
        "model TEXT, path TEXT, status INTEGER, content_type TEXT, wait_ms INTEGER, "
        "duration_ms INTEGER, input_tokens INTEGER, output_tokens INTEGER, "
        "cached_tokens INTEGER, prompt_per_second REAL, tokens_per_second REAL, "
        "has_capture INTEGER)")
    db.execute("CREATE INDEX IF NOT EXISTS activity_model_time ON activity (model, timestamp)")


#: Step N takes a file from schema N-1 to N. Append a step for a change (a new column: ``ALTER
#: TABLE activity ADD COLUMN ... DEFAULT ...``, and its name in COLUMNS); never edit one that
#: shipped: files in the field have had it.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_version_1]
#: The schema this release writes (``PRAGMA user_version``).
SCHEMA_VERSION = len(MIGRATIONS)


def _migrate(db: sqlite3.Connection) -> int | None:
    """Bring the store to ``SCHEMA_VERSION``: every step in one transaction, under the write
    lock (a second proxy on the same file waits, then finds it done). The version it was at,
    or None when it was current.

    Raises:
        _StoreUnusable: a newer release's schema, or an activity table that is not ours.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _check_version(db)
        for step in MIGRATIONS[version:]:
            step(db)
        if version != len(MIGRATIONS):
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS):d}")
        db.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return None if version == len(MIGRATIONS) else version


def _check_version(db: sqlite3.Connection) -> int:
    """The store's schema version.

    Raises:
        _StoreUnusable: a newer release's schema.
    """
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise _StoreUnusable(f"schema {version}, from a newer release; this one reads "
                             f"schema {len(MIGRATIONS)} and older")
    return version


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether an error says the file is not a (sound) SQLite database. A locked or unreadable
    file is not: moving it aside would not help."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _move_aside(path: Path) -> Path:
    """Rename an unusable store (with its -wal/-shm files) to a free ``<name>.unusable-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.unusable-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.unusable-{stamp}-{n}"), n + 1
    path.rename(aside)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(aside.with_name(aside.name + suffix))
    return aside


def _values(stored: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as SQLite gives it back, with ``has_capture`` a bool again."""
    return (*stored[:-1], bool(stored[-1]))
