"""The hop to a peer against real sockets: its base URL's path kept, TLS for https://, its
key in the headers, its timeouts, and failures as ``UpstreamUnavailable`` (502) or, past
``timeouts.responseHeader``, ``UpstreamTimeout`` (504)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.errors import UpstreamTimeout, UpstreamUnavailable
from llamaswap_docker.proxy.forward import PROXY_AUTH_HEADERS
from llamaswap_docker.proxy.peers import peer_headers, send_to_peer
from llamaswap_docker.proxy.routing import Route, Router
from llamaswap_docker.proxy.upstream import UpstreamClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def route_to(proxy: str, **peer: object) -> Route:
    extra = "".join(f"    {key}: {value}\n" for key, value in peer.items())
    config = load_config_text(f"models: {{m: {{image: x}}}}\npeers:\n  lab:\n"
                              f"    proxy: {proxy}\n    models: [llama]\n{extra}")
    return Router(lambda: config, lambda model_id: None).route("lab/llama")


class Server:
    """Answers every request with ``reply`` (None: never answers); keeps what it read."""

    def __init__(self, reply: bytes | None, tls: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.tls = tls
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.received.append(await reader.readuntil(b"\r\n\r\n"))
            if self.reply is None:
                await reader.read()  # hold the connection until the client closes it
            else:
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl, as on every Debian)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_an_https_peer_is_reached_over_verified_tls_with_its_path_prefix(
        certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        server = Server(OK, tls=served)
        async with server as port:
            route = route_to(f"https://localhost:{port}/api/")
            client = UpstreamClient(tls=trusting)
            response = await send_to_peer(client, route, "POST", "/v1/chat/completions",
                                          [], b"{}")
            assert (response.status, await response.read()) == (200, b"{}")
            response.close()
            await client.close()
            # Unverifiable (the system's CAs do not know it): no request is sent.
            stranger = UpstreamClient()
            with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await send_to_peer(stranger, route, "GET", "/v1/models", [], None)
            await stranger.close()
        assert len(server.received) == 1
        head = server.received[0].decode()
        assert head.startswith("POST /api/v1/chat/completions HTTP/1.1\r\n")
        assert f"host: localhost:{port}\r\n" in head

    asyncio.run(scenario())


def test_a_peer_that_sends_no_headers_in_time_is_a_504_naming_the_setting() -> None:
    async def scenario() -> None:
        async with Server(None) as port:
            route = route_to(f"http://127.0.0.1:{port}", timeouts="{responseHeader: 0.3}")
            client = UpstreamClient()
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout, match=r"timeouts.responseHeader") as caught:
                await send_to_peer(client, route, "POST", "/v1/chat/completions", [], b"{}")
            assert time.monotonic() - started < 5
            assert caught.value.status_code == 504
            assert "peer 'lab'" in caught.value.message
            await client.close()

    asyncio.run(scenario())


def test_a_peer_nobody_listens_on_is_a_502() -> None:
    async def scenario() -> None:
        async with Server(OK) as port:
            pass  # closed: nothing listens there any more
        client = UpstreamClient()
        with pytest.raises(UpstreamUnavailable, match="did not answer.*cannot connect"):
            await send_to_peer(client, route_to(f"http://127.0.0.1:{port}"), "GET", "/x", [], None)
        await client.close()

    asyncio.run(scenario())


def test_a_peers_key_replaces_the_clients_credentials() -> None:
    client = [(b"authorization", b"Bearer proxy-key"), (b"x-api-key", b"proxy-key"),
              (b"content-type", b"application/json")]
    keyed = route_to("http://h", apiKey="sk-peer").peer
    assert keyed is not None
    assert peer_headers(client, keyed, (), PROXY_AUTH_HEADERS) == [
        (b"content-type", b"application/json"), (b"authorization", b"Bearer sk-peer"),
        (b"x-api-key", b"sk-peer")]
    open_peer = route_to("http://h").peer
    assert open_peer is not None
    # No key of its own: the client's go on, unless they were this proxy's (apiKeys set).
    assert peer_headers(client, open_peer, (), PROXY_AUTH_HEADERS) == client
    assert peer_headers(client, open_peer, PROXY_AUTH_HEADERS, PROXY_AUTH_HEADERS) == [
        (b"content-type", b"application/json")]
