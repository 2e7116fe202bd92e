"""Following a container's output: an engine that ends the stream early is followed again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from llamaswap_docker.api import logs


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


@dataclass
class _Containers:
    """Our runtime's container interface, as much of it as a follower uses."""

    running: bool
    reopened: list[_Stream] = field(default_factory=list)
    since: list[float | None] = field(default_factory=list)

    def state(self, container_id: str) -> _State:
        return _State(running=self.running)

    def follow_logs(self, container_id: str, tail: int, since: float | None = None) -> _Stream:
        self.since.append(since)
        stream = _Stream([b"after the engine ended the stream\n"], block=True)
        self.reopened.append(stream)
        return stream


async def _read(containers: _Containers, first: _Stream, chunks: int) -> list[bytes]:
    body = logs._follow(containers, "c1", first, "m", lambda: False)
    got = [await asyncio.wait_for(anext(body), 30) for _ in range(chunks)]
    await body.aclose()
    return got


def test_a_stream_the_engine_ends_while_the_container_runs_is_followed_again(monkeypatch) -> None:
    monkeypatch.setattr(logs, "REFOLLOW_INTERVAL_S", 0.01)
    containers = _Containers(running=True)
    got = asyncio.run(_read(containers, _Stream([b"first\n"], block=False), 2))
    assert got == [b"first\n", b"after the engine ended the stream\n"]
    assert containers.since[0] is not None, "the new follow must start where the old one ended"
    assert containers.reopened[0].closed.wait(30), "leaving must close the reopened stream"


def test_a_stream_of_a_stopped_container_just_ends() -> None:
    containers = _Containers(running=False)

    async def read_all() -> list[bytes]:
        body = logs._follow(containers, "c1", _Stream([b"last\n"], block=False), "m", lambda: False)
        return [chunk async for chunk in body]

    assert asyncio.run(asyncio.wait_for(read_all(), 30)) == [b"last\n"]
    assert containers.reopened == []
