"""Following a container's output: an engine that ends the stream early is followed again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from llamaswap_docker.api import logs


#: When the first stream was opened (epoch seconds).
OPENED_AT = 1_700_000_000.0


class _Stream:
    """An engine log stream: some chunks, then either the end or a block until closed."""

    def __init__(self, chunks: list[bytes], block: bool) -> None:
        self._chunks = chunks
        self._block = block
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        if self._block:
            self.closed.wait()

    def close(self) -> None:
        self.closed.set()


@dataclass
class _State:
    running: bool
    status: str


@dataclass
class _Containers:
    """Our runtime's container interface, as much of it as a follower uses."""

    running: bool
    reopened: list[_Stream] = field(default_factory=list)
    since: list[float | None] = field(default_factory=list)
    #: States to report first (then running or exited, as ``running`` says).
    states: list[str] = field(default_factory=list)

    def state(self, container_id: str) -> _State:
        if self.states:
            return _State(running=False, status=self.states.pop(0))
        return _State(running=self.running, status="running" if self.running else "exited")

    def follow_logs(self, container_id: str, tail: int, since: float | None = None) -> _Stream:
        self.since.append(since)
        stream = _Stream([b"after the engine ended the stream\n"], block=True)
        self.reopened.append(stream)
        return stream


async def _read(containers: _Containers, first: _Stream, lines: int) -> list[bytes]:
    """The first ``lines`` lines the follower relays (it writes what waits in one chunk)."""
    body = logs._follow(containers, "c1", first, "m", lambda: False, OPENED_AT)
    got = b""
    while got.count(b"\n") < lines:
        got += await asyncio.wait_for(anext(body), 30)
    await body.aclose()
    return got.splitlines(keepends=True)


def test_a_stream_the_engine_ends_while_the_container_runs_is_followed_again(monkeypatch) -> None:
    monkeypatch.setattr(logs, "REFOLLOW_INTERVAL_S", 0.01)
    containers = _Containers(running=True)
    got = asyncio.run(_read(containers, _Stream([b"first\n"], block=False), 2))
    assert got == [b"first\n", b"after the engine ended the stream\n"]
    assert containers.since[0] is not None, "the new follow must start where the old one ended"
    assert containers.reopened[0].closed.wait(30), "leaving must close the reopened stream"


def test_a_stream_ended_before_the_container_wrote_anything_is_followed_again_from_its_opening(
        monkeypatch) -> None:
    # Opened while the container was created but not started, the engine ends the stream at
    # once; what the container writes from then on must all come through the new follow.
    monkeypatch.setattr(logs, "REFOLLOW_INTERVAL_S", 0.01)
    containers = _Containers(running=True, states=["created"])
    got = asyncio.run(_read(containers, _Stream([], block=False), 1))
    assert got == [b"after the engine ended the stream\n"]
    assert containers.since == [OPENED_AT]


def test_a_stream_of_a_stopped_container_just_ends() -> None:
    containers = _Containers(running=False)

    async def read_all() -> list[bytes]:
        body = logs._follow(containers, "c1", _Stream([b"last\n"], block=False), "m",
                            lambda: False, OPENED_AT)
        return [chunk async for chunk in body]

    assert asyncio.run(asyncio.wait_for(read_all(), 30)) == [b"last\n"]
    assert containers.reopened == []


def test_a_feed_hands_the_reader_every_waiting_item_at_once_then_ends_after_them() -> None:
    async def run() -> tuple[list[list[bytes]], bool]:
        feed: logs.Feed[bytes] = logs.Feed(asyncio.get_running_loop(), lambda: False)
        pusher = threading.Thread(target=lambda: ([feed.push(b"%d\n" % i) for i in range(12000)],
                                                  feed.end()))
        pusher.start()
        pusher.join()  # a burst far faster than any reader: all of it waits at once
        batches = [batch async for batch in feed.batches() if batch]
        return batches, feed.ended

    batches, ended = asyncio.run(asyncio.wait_for(run(), 30))
    assert b"".join(b"".join(batch) for batch in batches) == b"".join(b"%d\n" % i for i in range(12000))
    assert len(batches) == 1 and ended


def test_a_feed_bounds_what_waits_by_bytes_and_counts_what_it_dropped() -> None:
    async def run() -> tuple[list[bytes], int]:
        feed: logs.Feed[bytes] = logs.Feed(asyncio.get_running_loop(), lambda: False, limit=10)
        for chunk in (b"12345", b"67890", b"x", b"y"):
            feed.push(chunk)
        feed.end()
        got = [item async for item in feed]
        return got, feed.dropped

    got, dropped = asyncio.run(asyncio.wait_for(run(), 30))
    assert got == [b"12345", b"67890"] and dropped == 2


def test_a_stopped_feed_ends_without_its_end_and_a_quiet_one_says_so() -> None:
    async def run() -> tuple[list[list[bytes]], bool]:
        stopping = []
        feed: logs.Feed[bytes] = logs.Feed(asyncio.get_running_loop(), lambda: bool(stopping))
        seen = []
        async for batch in feed.batches():
            seen.append(batch)
            stopping.append(True)  # the proxy begins to shut down after a quiet spell
        return seen, feed.ended

    seen, ended = asyncio.run(asyncio.wait_for(run(), 30))
    assert seen == [[]] and not ended
