"""Hostile and broken input at every stage of the hop, on the real engine.

After each case: an answer below 500 (a 4xx in the caller's dialect where the proxy refuses),
nothing logged at ERROR, nothing held (``in_flight`` and ``waiting`` back to 0 in
``/running``), and a swap to the other model still completes — one leaked lease would block it
forever.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from loguru import logger

from tests.conftest import fake_model

LIMIT = 1024 * 1024  # maxRequestBodySize for these proxies: oversized bodies stay cheap


@pytest.fixture
def errors_logged() -> Iterator[list[str]]:
    """Every record logged at ERROR or above while the test runs (uvicorn's too)."""
    from llamaswap_docker.logs import intercept_stdlib_logging

    intercept_stdlib_logging()
    records: list[str] = []
    sink = logger.add(lambda message: records.append(str(message)), level="ERROR")
    yield records
    logger.remove(sink)


@pytest.fixture
def proxy(start_proxy):
    # a and b share the default swap group: serving one means stopping the other.
    return start_proxy(
        {
            "a": fake_model("--model-name", "a"),
            # b takes larger bodies than the global limit (a per-model override).
            "b": fake_model("--model-name", "b", maxRequestBodySize=2 * LIMIT),
            "slow-start": fake_model("--load-delay", "3"),
            "slow-answer": fake_model("--tokens", "400", "--token-rate", "10"),  # 40 s
            "hangs": fake_model("--hang"),
        },
        maxRequestBodySize=LIMIT,
    )


def hang_up(sock: socket.socket) -> None:
    """Leave with a reset, as a killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def raw_http(url: str, head: bytes, body: bytes = b"", *, close_after: float | None = None,
             read: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; return (status, headers, body). ``close_after``: hang up after
    that many seconds without reading the answer (status 0)."""
    with connect(url) as sock:
        sock.sendall(head + body)
        if close_after is not None:
            time.sleep(close_after)
            hang_up(sock)
            return 0, {}, b""
        if not read:
            return 0, {}, b""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest


def post_head(path: str, length: int, content_type: str = "application/json",
              extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n").encode() + extra + b"Connection: close\r\n\r\n"


def chat_body(model: str, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2, **extra}).encode()


def running(url: str) -> dict[str, dict[str, Any]]:
    return {e["model"]: e for e in httpx.get(f"{url}/running?all=true", timeout=10).json()["running"]}


def assert_nothing_held(url: str, case: str) -> None:
    """in_flight and waiting return to 0 (the proxy notices a gone client; polled)."""
    deadline = time.monotonic() + 30
    while True:
        held = {m: (e.get("in_flight"), e.get("waiting")) for m, e in running(url).items()
                if e.get("in_flight") or e.get("waiting")}
        if not held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{case}: still held after 30 s: {held}")
        time.sleep(0.05)


def assert_swap_completes(url: str, case: str) -> None:
    for model in ("b", "a"):
        response = httpx.post(f"{url}/v1/chat/completions", content=chat_body(model),
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 200, f"{case}: swap to {model}: {response.text}"
    assert running(url)["a"]["state"] == "ready"


def assert_openai_error(status: int, body: bytes, expected: int, case: str) -> None:
    assert status == expected, f"{case}: {status} {body[:300]!r}"
    error = json.loads(body)["error"]
    assert error["message"] and error["type"], case


def test_malformed_bodies_get_400_in_the_callers_dialect(proxy, errors_logged) -> None:
    deep = b'{"model": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    boundary_missing = (b"--nowhere\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n")
    cases = {
        "invalid UTF-8": (b'{"model": "a", "x": "\xff\xfe"}', "application/json"),
        "array": (b'[{"model": "a"}]', "application/json"),
        "string": (b'"a"', "application/json"),
        "nested 100,000 deep": (deep, "application/json"),
        "model is a number": (b'{"model": 42}', "application/json"),
        "model is null": (b'{"model": null}', "application/json"),
        "model is an object": (b'{"model": {"id": "a"}}', "application/json"),
    }
    httpx.post(f"{proxy.url}/api/models/load/a", timeout=30).raise_for_status()
    for case, (body, content_type) in cases.items():
        status, _, answer = raw_http(proxy.url, post_head("/v1/chat/completions", len(body),
                                                          content_type), body)
        assert_openai_error(status, answer, 400, case)
        assert_nothing_held(proxy.url, case)
        assert_swap_completes(proxy.url, case)
    # A file upload whose multipart boundary never appears: no model field to be found.
    status, _, answer = raw_http(proxy.url, post_head(
        "/v1/audio/transcriptions", len(boundary_missing),
        "multipart/form-data; boundary=not-in-the-body"), boundary_missing)
    assert_openai_error(status, answer, 400, "boundary never appears")
    assert_nothing_held(proxy.url, "boundary never appears")
    assert_swap_completes(proxy.url, "boundary never appears")
    # Anthropic's clients get Anthropic's shape.
    status, _, answer = raw_http(proxy.url, post_head("/v1/messages", 5), b"[1,2]")
    assert status == 400 and json.loads(answer)["type"] == "error", answer
    assert_nothing_held(proxy.url, "Anthropic array")
    assert_swap_completes(proxy.url, "Anthropic array")
    assert errors_logged == []


def test_odd_header_bytes_and_paths_are_forwarded_or_refused_cleanly(proxy, errors_logged) -> None:
    httpx.post(f"{proxy.url}/api/models/load/a", timeout=30).raise_for_status()
    base = proxy.manager.models["a"].container.base_url
    body = chat_body("a")

    # Latin-1 and UTF-8 bytes ≥ 0x80: forwarded, the request served.
    for value in (b"caf\xe9", "café ☃".encode()):
        status, _, answer = raw_http(proxy.url, post_head("/v1/chat/completions", len(body),
                                                          extra=b"X-Note: " + value + b"\r\n"), body)
        assert status == 200, (value, answer[:300])
        seen = httpx.get(f"{base}/debug/stats", timeout=5).json()["last_headers"]["x-note"]
        assert seen.encode("latin-1") == value  # the fake reads header bytes as Latin-1
        assert_nothing_held(proxy.url, f"header {value!r}")
        assert_swap_completes(proxy.url, f"header {value!r}")
        base = proxy.manager.models["a"].container.base_url  # a new container after the swap

    # Control bytes: refused by the HTTP parser, before any route runs — still a 400 in
    # OpenAI's shape (the only dialect known before the request line is parsed).
    for value in (b"a\x01b", b"a\x7fb", b"a\x00b"):
        status, _, answer = raw_http(proxy.url, post_head("/v1/chat/completions", len(body),
                                                          extra=b"X-Note: " + value + b"\r\n"), body)
        assert_openai_error(status, answer, 400, f"header {value!r}")
        assert_nothing_held(proxy.url, f"header {value!r}")
        assert_swap_completes(proxy.url, f"header {value!r}")

    # %00 and %2F in /upstream paths reach the model server as written; its 404 is relayed.
    for path in ("/upstream/a/a%2Fb%00", "/upstream/a/%2e%2e/%00", "/upstream/a/x%zz?q=%00"):
        status, _, answer = raw_http(
            proxy.url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        assert status == 404, (path, status, answer[:300])
        assert path.removeprefix("/upstream/a").split("?")[0] in answer.decode(), answer
        assert_nothing_held(proxy.url, path)
        assert_swap_completes(proxy.url, path)
    status, _, answer = raw_http(
        proxy.url, b"GET /upstream/nope/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert_openai_error(status, answer, 404, "unknown model in /upstream")
    assert_nothing_held(proxy.url, "unknown model in /upstream")
    assert_swap_completes(proxy.url, "unknown model in /upstream")
    assert errors_logged == []


def wait_for(url: str, model: str, what: str, case: str) -> None:
    """Until ``/running`` shows ``what`` (``in_flight`` or ``waiting``) ≥ 1 for ``model``:
    the client leaves at the stage the case names, not before it."""
    deadline = time.monotonic() + 30
    while not (running(url)[model].get(what) or 0) >= 1:
        assert time.monotonic() < deadline, f"{case}: {model} never showed {what}"
        time.sleep(0.02)


def poll_stats(base_url: str, check, what: str) -> None:
    """Until the fake model server's own counters satisfy ``check`` (30 s deadline)."""
    deadline = time.monotonic() + 30
    while not check(stats := httpx.get(f"{base_url}/debug/stats", timeout=10).json()):
        assert time.monotonic() < deadline, f"{what}: {stats}"
        time.sleep(0.05)


def test_clients_leaving_at_every_stage_release_the_model(proxy, errors_logged) -> None:
    httpx.post(f"{proxy.url}/api/models/load/a", timeout=30).raise_for_status()
    body = chat_body("a")

    # Mid-body: 10 of 1,000 promised bytes, then gone.
    raw_http(proxy.url, post_head("/v1/chat/completions", 1000), body[:10], close_after=0.3)
    assert_nothing_held(proxy.url, "mid-body")
    assert_swap_completes(proxy.url, "mid-body")

    # While its cold model starts (3 s load): the queued request is dropped.
    slow = chat_body("slow-start")
    sock = connect(proxy.url)
    sock.sendall(post_head("/v1/chat/completions", len(slow)) + slow)
    wait_for(proxy.url, "slow-start", "waiting", "waiting for a cold model")
    hang_up(sock)
    assert_nothing_held(proxy.url, "waiting for a cold model")
    assert_swap_completes(proxy.url, "waiting for a cold model")

    # While waiting for upstream headers (a non-streamed answer that never comes).
    hang = chat_body("hangs")
    sock = connect(proxy.url)
    sock.sendall(post_head("/v1/chat/completions", len(hang)) + hang)
    wait_for(proxy.url, "hangs", "in_flight", "waiting for upstream headers")
    hangs = proxy.manager.models["hangs"].container
    assert hangs is not None
    poll_stats(hangs.base_url, lambda stats: stats["in_flight"] >= 1,
               "the request never reached the model server")  # its answer pending from here
    hang_up(sock)
    assert_nothing_held(proxy.url, "waiting for upstream headers")
    poll_stats(hangs.base_url, lambda stats: stats["in_flight"] == 0,
               "the model server kept working for a client that left")
    assert_swap_completes(proxy.url, "waiting for upstream headers")

    # Mid-stream: read the first chunk of a slow stream, then gone.
    stream = chat_body("slow-answer", stream=True, max_tokens=400)
    sock = connect(proxy.url)
    sock.sendall(post_head("/v1/chat/completions", len(stream)) + stream)
    assert b"200" in sock.recv(65536).split(b"\r\n")[0]
    hang_up(sock)
    assert_nothing_held(proxy.url, "mid-stream")
    slow_answer = proxy.manager.models["slow-answer"].container
    assert slow_answer is not None
    poll_stats(slow_answer.base_url, lambda stats: stats["cancelled_streams"] >= 1,
               "the cancel never reached the model server")
    assert_swap_completes(proxy.url, "mid-stream")
    assert errors_logged == []


def padded_chat(model: str, size: int) -> bytes:
    """A valid chat request of about ``size`` bytes."""
    return chat_body(model, user="x" * size)


def test_oversized_bodies_get_413_before_the_body_is_read(proxy, errors_logged) -> None:
    httpx.post(f"{proxy.url}/api/models/load/a", timeout=30).raise_for_status()

    def refused(case: str, status: int, answer: bytes) -> None:
        assert_openai_error(status, answer, 413, case)
        settled(case)

    def settled(case: str) -> None:
        assert_nothing_held(proxy.url, case)
        assert_swap_completes(proxy.url, case)

    # Declared: answered from the headers alone, while the body is still unsent.
    status, headers, answer = raw_http(proxy.url, post_head("/v1/chat/completions", 50 * LIMIT))
    refused("declared too large", status, answer)
    assert "maxRequestBodySize" in json.loads(answer)["error"]["message"]
    status, _, answer = raw_http(proxy.url, post_head("/v1/messages", 50 * LIMIT))
    assert status == 413 and json.loads(answer)["error"]["type"] == "request_too_large"
    settled("declared too large, Anthropic")
    # Chunked: refused once the bytes received cross the limit.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    piece = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(40)) + b"0\r\n\r\n"
    status, _, answer = raw_http(proxy.url, head, chunked)
    refused("chunked too large", status, answer)
    # The same limit bounds /upstream bodies; a body under it is served.
    status, _, answer = raw_http(proxy.url, post_head("/upstream/a/v1/chat/completions",
                                                      2 * LIMIT))
    refused("upstream too large", status, answer)
    small = chat_body("a")
    status, _, _ = raw_http(proxy.url, post_head("/v1/chat/completions", len(small)), small)
    assert status == 200

    # A per-model override: b takes 2 MiB, a keeps the global 1 MiB.
    big = padded_chat("b", LIMIT + LIMIT // 2)
    status, _, answer = raw_http(proxy.url, post_head("/v1/chat/completions", len(big)), big)
    assert status == 200, answer[:300]
    too_big_for_a = padded_chat("a", LIMIT + LIMIT // 2)
    status, _, answer = raw_http(proxy.url, post_head("/v1/chat/completions",
                                                      len(too_big_for_a)), too_big_for_a)
    refused("over a's limit, under b's", status, answer)
    assert "model 'a'" in json.loads(answer)["error"]["message"]
    status, _, answer = raw_http(proxy.url, post_head("/upstream/b/v1/chat/completions",
                                                      3 * LIMIT))
    refused("declared over b's limit", status, answer)
    assert errors_logged == []
