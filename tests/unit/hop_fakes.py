"""The hop (``proxy.forward``) in one process, fast: a model server on a real socket, an ASGI
client whose leaving the test decides, and fakes of our own interfaces where the hop meets the
rest of the proxy (a ``ModelManager`` whose start the test finishes, a ``Recorder`` that keeps
what ends). The upstream client, the router, the in-flight registry and the traces are real.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from llamaswap_docker.config import Config, load_config_text
from llamaswap_docker.lifecycle import Lease, ModelState
from llamaswap_docker.observe import Trace
from llamaswap_docker.proxy import InFlightRequests, Router, UpstreamClient, forward

#: (request bytes, reader, writer) → keep the connection for another request?
Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait for ``check()`` to hold (the event a test means), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.002)


class Upstream:
    """A model server in this process: each request is answered by ``script``. It keeps the
    requests it read and counts the connections the proxy closed on it (a cancelled request,
    as the server sees it)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.closed_by_proxy = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    @property
    def bodies(self) -> list[bytes]:
        return [request.partition(b"\r\n\r\n")[2] for request in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.script(request, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @classmethod
    def never_answering(cls) -> "Upstream":
        """A model server that reads each request and never answers: it waits until the
        proxy closes the connection (counted in ``closed_by_proxy``)."""
        async def wait(request: bytes, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
            await upstream.wait_for_close(reader)
            return False

        upstream = cls(wait)
        return upstream

    async def wait_for_close(self, reader: asyncio.StreamReader) -> None:
        """Block until the proxy closes the connection (counted)."""
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.closed_by_proxy += 1


def sse_head() -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def json_reply(body: bytes = b'{"ok":true}', status: int = 200) -> bytes:
    return (b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body))


class Client:
    """The ASGI side of one request: its body (in ``parts``), what it was sent, and leaving
    (an ``http.disconnect``) when the test calls ``leave()``."""

    def __init__(self, path: str = "/v1/chat/completions", body: bytes = b"",
                 parts: list[bytes] | None = None, complete: bool = True) -> None:
        self.scope: dict[str, Any] = {
            "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
            "query_string": b"", "client": ("127.0.0.1", 40000),
            "headers": [(b"host", b"proxy"), (b"content-type", b"application/json")],
        }
        parts = parts if parts is not None else [body]
        self._pending = collections.deque(
            {"type": "http.request", "body": part,
             "more_body": index < len(parts) - 1 or not complete}
            for index, part in enumerate(parts))
        self._left = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    def leave(self) -> None:
        self._left.set()

    async def receive(self) -> dict[str, Any]:
        if self._pending:
            return self._pending.popleft()
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def ended(self) -> bool:
        """The response was finished (a last body message), not cut."""
        return any(m["type"] == "http.response.body" and not m.get("more_body", False)
                   for m in self.sent)


class FakeManager:
    """The ``ModelManager`` the hop sees: leases it counts, and a start the test finishes
    (``start.set_result(None)``) or fails (``set_exception``) when the model is not ready."""

    def __init__(self, config: Config, base_url: str) -> None:
        self.config = config
        self.base_url = base_url
        self.models = {m: SimpleNamespace(state=ModelState.READY) for m in config.models}
        self.start: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.leases_out = 0
        self.waiting = 0
        self.failures_reported = 0

    def stop(self, model_id: str) -> None:
        """The model is not ready: requests wait for ``start``."""
        self.models[model_id].state = ModelState.STOPPED

    def try_acquire(self, model_id: str) -> Lease | None:
        if self.models[model_id].state is not ModelState.READY:
            return None
        return self._lease(model_id)

    async def acquire(self, model_id: str) -> Lease:
        self.waiting += 1
        try:
            await asyncio.shield(self.start)
        finally:
            self.waiting -= 1
        self.models[model_id].state = ModelState.READY
        return self._lease(model_id)

    def describe_progress(self, model_id: str) -> str:
        return "starting the container"

    async def report_upstream_failure(self, lease: Lease) -> str | None:
        self.failures_reported += 1
        return None

    def _lease(self, model_id: str) -> Lease:
        self.leases_out += 1
        container = SimpleNamespace(base_url=self.base_url, authorization=None)
        return Lease(self._release, model_id, container)  # type: ignore[arg-type]

    def _release(self, model_id: str) -> None:
        self.leases_out -= 1


class Recorded:
    """The ``Recorder`` the hop sees: keeps each finished request's model, status, trace."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, Trace]] = []

    def trace(self, path: str) -> Trace:
        return Trace(path, False)

    def finish(self, trace: Trace, model: str) -> None:
        self.rows.append((model, trace.status, trace))

    @property
    def statuses(self) -> list[int]:
        return [status for _, status, _ in self.rows]


class Hop:
    """``forward`` with its collaborators, for one test."""

    def __init__(self, base_url: str, config: str = "models: {m: {image: x}}") -> None:
        self.config = load_config_text(config, source="hop-test.yaml")
        self.manager = FakeManager(self.config, base_url)
        self.upstream = UpstreamClient()
        self.inflight = InFlightRequests()
        self.recorder = Recorded()
        self.router = Router(lambda: self.config, lambda model_id: ModelState.READY)

    def request(self, client: Client) -> asyncio.Task[None]:
        return asyncio.ensure_future(forward(
            self.manager, self.upstream, self.inflight, self.recorder,  # type: ignore[arg-type]
            self.router, client.scope, client.receive, client.send))

    async def close(self) -> None:
        await self.upstream.close()
        await self.inflight.close()

    def assert_all_given_back(self) -> None:
        assert self.manager.leases_out == 0, "a lease was not released"
        assert self.manager.waiting == 0, "a wait for the model was left queued"
        assert self.inflight.list() == [], "an in-flight entry was left"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner() as runner:
        runner.run(scenario())  # type: ignore[arg-type]
