"""The activity store across releases: a file an earlier release wrote is migrated and keeps
every row; one this release cannot use is moved aside with one warning, never dropped.

``tests/data/activity-v0.db`` was written by the first release's code (commit b798dd6, schema
0: no ``user_version``) through its own ``ActivityLog``: five rows, ids 1-5, then checkpointed
into one file. Never regenerate it with newer code: it stands for files users have.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from llamaswap_docker.logs import format_record
from llamaswap_docker.observe import activity
from llamaswap_docker.observe.activity import (
    COLUMNS,
    SCHEMA_VERSION,
    ActivityLog,
    ActivityQuery,
    ActivityRow,
)

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "activity-v0.db"
#: What the first release wrote into the fixture, in COLUMNS order.
FIRST_RELEASE_ROWS = [
    (1, 1760000001.5, "qwen", "/v1/chat/completions", 200, "application/json", 0, 812, 24, 96,
     0, 512.25, 41.5, False),
    (2, 1760000002.25, "qwen", "/v1/chat/completions", 200, "text/event-stream", 1530, 2400,
     120, 300, 64, 900.0, 38.75, True),
    (3, 1760000003.0, "gemma", "/v1/messages", 499, "text/event-stream", 12, 77, -1, -1, -1,
     -1.0, -1.0, False),
    (4, 1760000004.0, "gemma", "/v1/embeddings", 200, "application/json", 0, 15, 8, -1, -1,
     -1.0, -1.0, False),
    (5, 1760000005.0, "qwen", "/v1/completions", 502, "application/json", 0, 3, -1, -1, -1,
     -1.0, -1.0, False),
]


def row(row_id: int, model: str = "qwen") -> tuple[object, ...]:
    return (row_id, 1770000000.0 + row_id, model, "/v1/chat/completions", 200,
            "application/json", 0, 10, 1, 2, 0, 1.0, 2.0, False)


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A copy of the first release's file (tests write to it)."""
    path = tmp_path / "activity.db"
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The proxy's log lines at WARNING and above, as the server formats them."""
    lines: list[str] = []
    sink = logger.add(lines.append, format=format_record, level="WARNING")
    yield lines
    logger.remove(sink)


@pytest.fixture
def opened() -> Iterator[list[ActivityLog]]:
    """Logs a test opened; closed at the end whatever happened."""
    logs: list[ActivityLog] = []
    yield logs
    for log in logs:
        log.close()


def open_log(opened: list[ActivityLog], path: Path, limit: int = 100) -> ActivityLog:
    log = ActivityLog(limit, str(path))
    opened.append(log)
    log.open()
    return log


def test_fixture_is_the_first_releases_unversioned_file() -> None:
    assert user_version(FIXTURE) == 0
    db = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM activity").fetchone()[0] == 5
    finally:
        db.close()


def test_first_release_store_is_migrated_keeps_every_row_and_takes_new_ones(
        store: Path, opened: list[ActivityLog], warnings: list[str]) -> None:
    log = open_log(opened, store)

    assert user_version(store) == SCHEMA_VERSION
    assert [r for r in log.rows] == [ActivityRow(*values) for values in FIRST_RELEASE_ROWS]
    assert log.next_id == 6
    first = log.take_ids(2)
    log.extend([row(first), row(first + 1, "gemma")])
    total, rows = log.query(ActivityQuery(sort="id", descending=False))
    assert total == 7
    assert [r.id for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[1] == ActivityRow(*FIRST_RELEASE_ROWS[1])  # has_capture a bool again
    log.close()

    again = open_log(opened, store)  # a restart reads every row back, ids keep growing
    assert [r.id for r in again.rows] == [1, 2, 3, 4, 5, 6, 7]
    assert again.next_id == 8
    assert warnings == []


def test_a_new_store_starts_at_the_current_schema(tmp_path: Path,
                                                  opened: list[ActivityLog]) -> None:
    path = tmp_path / "deep" / "activity.db"
    log = open_log(opened, path)
    log.extend([row(log.take_ids(1))])
    assert log.query()[0] == 1
    assert user_version(path) == SCHEMA_VERSION


def test_a_column_a_later_release_adds_breaks_no_insert(
        store: Path, opened: list[ActivityLog], monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure the version exists for: positional inserts into a table that grew a
    column failed, and the rows were lost. A next schema adds one; writes go on."""
    def add_draft_tokens(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE activity ADD COLUMN draft_tokens INTEGER DEFAULT -1")

    monkeypatch.setattr(activity, "MIGRATIONS", [*activity.MIGRATIONS, add_draft_tokens])
    log = open_log(opened, store)
    log.extend([row(log.take_ids(1))])
    total, rows = log.query()
    assert (total, rows[0].id) == (6, 6)
    assert user_version(store) == SCHEMA_VERSION + 1
    db = sqlite3.connect(store)
    try:
        assert db.execute("SELECT draft_tokens FROM activity WHERE id = 6").fetchone() == (-1,)
    finally:
        db.close()


def assert_moved_aside(path: Path, warnings: list[str]) -> Path:
    [aside] = [p for p in path.parent.iterdir() if p.name.startswith("activity.db.unusable-")]
    [line] = warnings
    assert "\n" not in line.rstrip("\n")
    assert str(path) in line and str(aside) in line and "moved aside" in line
    return aside


def test_a_store_from_a_newer_release_is_moved_aside_not_dropped(
        store: Path, opened: list[ActivityLog], warnings: list[str]) -> None:
    db = sqlite3.connect(store)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
    db.commit()
    db.close()
    before = store.read_bytes()

    log = open_log(opened, store)

    aside = assert_moved_aside(store, warnings)
    assert "newer release" in warnings[0]
    assert aside.read_bytes() == before  # kept as the newer release left it
    assert log.rows == [] and log.next_id == 1
    log.extend([row(log.take_ids(1))])
    assert log.query()[0] == 1
    assert user_version(store) == SCHEMA_VERSION


@pytest.mark.parametrize("content", [
    b"not a database at all\n" * 400,  # not SQLite
    None,  # SQLite's header, its pages overwritten
], ids=["not-sqlite", "damaged-pages"])
def test_a_damaged_store_is_moved_aside_and_a_new_one_starts(
        store: Path, content: bytes | None, opened: list[ActivityLog],
        warnings: list[str]) -> None:
    if content is None:
        data = bytearray(store.read_bytes())
        data[100:] = b"\xff" * (len(data) - 100)  # keep the 100-byte header, ruin the pages
        content = bytes(data)
    store.write_bytes(content)

    log = open_log(opened, store)

    aside = assert_moved_aside(store, warnings)
    assert aside.read_bytes() == content
    log.extend([row(log.take_ids(1))])
    assert log.query()[0] == 1


def test_a_foreign_activity_table_is_moved_aside(
        tmp_path: Path, opened: list[ActivityLog], warnings: list[str]) -> None:
    path = tmp_path / "activity.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE activity (id INTEGER PRIMARY KEY, what TEXT)")
    db.execute("INSERT INTO activity (id, what) VALUES (1, 'someone else''s')")
    db.commit()
    db.close()

    open_log(opened, path)

    aside = assert_moved_aside(path, warnings)
    assert "lacks the columns" in warnings[0]
    check = sqlite3.connect(aside)
    try:
        assert check.execute("SELECT what FROM activity").fetchall() == [("someone else's",)]
    finally:
        check.close()


def test_other_tables_in_the_file_are_left_alone(store: Path, opened: list[ActivityLog]) -> None:
    """The store's file also keeps measured GPU needs (``lifecycle/need.py``)."""
    db = sqlite3.connect(store)
    db.execute("CREATE TABLE measured_vram (spec_hash TEXT PRIMARY KEY, model TEXT, "
               "bytes INTEGER, measured_at REAL)")
    db.execute("INSERT INTO measured_vram VALUES ('abc', 'qwen', 42, 1.0)")
    db.commit()
    db.close()
    open_log(opened, store).close()
    db = sqlite3.connect(store)
    try:
        assert db.execute("SELECT bytes FROM measured_vram").fetchall() == [(42,)]
    finally:
        db.close()


def test_writes_and_reads_reuse_one_connection_each(
        store: Path, opened: list[ActivityLog], monkeypatch: pytest.MonkeyPatch) -> None:
    connections: list[str] = []
    real_connect = sqlite3.connect

    def counting_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        connections.append(threading.current_thread().name)
        return real_connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(activity.sqlite3, "connect", counting_connect)
    log = open_log(opened, store)
    for _ in range(20):  # each query waits until the writer wrote the row before it
        log.extend([row(log.take_ids(1))])
        assert log.query(ActivityQuery(limit=1))[1][0].id == log.next_id - 1
    assert len(connections) == 2  # the writer's (made by open) and the queries'
    assert log.query()[0] == 25


def test_rows_are_written_by_column_name() -> None:
    assert activity._INSERT.startswith(f"INSERT OR REPLACE INTO activity ({', '.join(COLUMNS)})")


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "store"])
def test_a_status_range_is_filtered_before_paging_in_memory_and_in_the_store(
        tmp_path: Path, opened: list[ActivityLog], stored: bool) -> None:
    # 30 rows, every third a 5xx: the match count and the pages are the 5xx rows' own.
    log = ActivityLog(100, str(tmp_path / "activity.db") if stored else None)
    opened.append(log)
    log.open()
    first = log.take_ids(30)
    log.extend([(*row(first + i)[:4], 503 if i % 3 == 0 else 200, *row(first + i)[5:])
                for i in range(30)])
    total, page = log.query(ActivityQuery(statuses=(500, 600), limit=4, offset=4))
    assert total == 10
    assert [r.id for r in page] == [first + 15, first + 12, first + 9, first + 6]
    assert all(r.status == 503 for r in page)
    assert log.query(ActivityQuery(statuses=(0, 400)))[0] == 20
    assert log.query(ActivityQuery(statuses=(404, 405)))[0] == 0
