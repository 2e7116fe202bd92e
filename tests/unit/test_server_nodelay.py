"""Every accepted connection has Nagle's algorithm off, however the listener was bound; a
request the HTTP parser refuses still gets an error a client can read.

With Nagle on, a response written in two parts (headers, body) waits for the client's delayed
ACK: +40 ms per request on a keep-alive connection (what the OpenAI SDK uses).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from llamaswap_docker.server import uvicorn_config


async def app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_socket_from_create_server_keeps_nagle_on_by_default() -> None:
    # The trap this guards against: protocol-0 listeners hand out connections with Nagle on.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


@contextlib.contextmanager
def serving(loop: str) -> Iterator[tuple[uvicorn.Server, int]]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)  # protocol 0, as `serve` binds
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, loop=loop, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield server, port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_accepted_connection_has_tcp_nodelay(loop: str) -> None:
    with serving(loop) as (server, port):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):  # one keep-alive connection
                assert client.get("/").text == "ok"
            connections = list(server.server_state.connections)
            assert len(connections) == 1
            sock = connections[0].transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x00b", b"a\x7fb"])
def test_a_request_the_http_parser_refuses_gets_a_400_in_openai_shape(value: bytes) -> None:
    with serving("uvloop") as (_, port), socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: " + value + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
