"""A second real Docker engine on this machine, for the several-engines tests (``engines:``).

A ``dockerd`` of its own: socket, data root, exec root, pidfile, bridge and address pool
(never ``--bridge none``: that deletes the host's docker0). ``--live-restore`` keeps its
containers running while it is stopped, as a remote machine's containers run on while the
proxy cannot reach its engine; started again, it reports them as before. The images the
tests use are loaded into it (it cannot pull). At the end its containers are removed, it is
stopped, its mounts and its bridge are removed, also when tests failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.conftest import FAKE_UPSTREAM_IMAGE, RUN_ID, unused_tcp_port

#: The second engine's bridge and its containers' networks: clear of the main engine's pools.
BRIDGE_CIDR = "192.168.251.1/24"
ADDRESS_POOL = "base=10.213.0.0/16,size=24"


class SecondEngine:
    """A second ``dockerd``: ``url`` to reach it, ``stop()`` / ``start()`` to take it away and
    bring it back (its containers live on meanwhile)."""

    def __init__(self, root: Path, bridge: str) -> None:
        self.root = root
        self.bridge = bridge
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.pidfile = root / "docker.pid"
        #: Also a TLS port (``--tlsverify``): the URL, and the client's files (CA, cert, key).
        self.tls_port = unused_tcp_port()
        self.tls_url = f"tcp://127.0.0.1:{self.tls_port}"
        certs = root / "certs"
        self.tls = {"ca": str(certs / "ca.pem"), "cert": str(certs / "cert.pem"),
                    "key": str(certs / "key.pem")}
        self.log_path = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 60) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(_as_root(
            ["dockerd", "--config-file", str(self.root / "daemon.json"), "--host", self.url,
             "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.pidfile), "--bridge", self.bridge,
             "--default-address-pool", ADDRESS_POOL, "--iptables=false", "--ip6tables=false",
             "--live-restore", "--host", self.tls_url, "--tlsverify",
             "--tlscacert", self.tls["ca"], "--tlscert", str(self.root / "certs" / "server.pem"),
             "--tlskey", str(self.root / "certs" / "server-key.pem")]),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + deadline_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the second dockerd did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60) -> None:
        """Stop it (SIGTERM, as a service manager would); its containers keep running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def freeze(self) -> None:
        """Stop the engine's process (SIGSTOP): its socket still accepts, nothing answers, as
        an engine across a network that stopped carrying packets. Its containers serve on."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        pid = self.pidfile.read_text().strip()  # dockerd's own (Popen's may be sudo's)
        subprocess.run(_as_root(["kill", f"-{sig.name.removeprefix('SIG')}", pid]), check=True)

    def answers(self) -> bool:
        try:
            client = docker.DockerClient(base_url=self.url, timeout=5)
        except docker.errors.DockerException:  # not (yet) answering
            return False
        try:
            return bool(client.ping())
        except Exception:  # noqa: BLE001 - not (yet) answering
            return False
        finally:
            client.close()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def make_certs(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as Docker's guide
    to protecting the engine's TCP port makes them (openssl)."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=llamaswap test CA")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n"
                                       "extendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=llamaswap proxy")):
        key = "server-key.pem" if name == "server" else "key.pem"
        cert = "server.pem" if name == "server" else "cert.pem"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", f"{name}.csr",
                "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", f"{name}.ext")


def _as_root(command: list[str]) -> list[str]:
    """A second engine and its bridge need root: sudo when the tests run as another user."""
    return command if os.geteuid() == 0 else ["sudo", "-n", *command]


def _ip(*args: str) -> None:
    subprocess.run(_as_root(["ip", *args]), check=True, capture_output=True)


@pytest.fixture(scope="session")
def second_engine(docker_client: docker.DockerClient,
                  images: dict[str, str]) -> Iterator[SecondEngine]:
    """A second engine with the fake upstream's image, for the whole session."""
    if shutil.which("dockerd") is None:
        raise AssertionError("dockerd is not installed: `apt-get install -y docker.io` "
                             "(`bash .ci/run` does it)")
    root = Path(tempfile.mkdtemp(prefix="llsw-d2-"))
    (root / "daemon.json").write_text("{}")  # /etc/docker/daemon.json's data-root: not ours
    engine = SecondEngine(root, f"llsw{RUN_ID[:6]}")
    make_certs(root / "certs")
    bridge_made = False
    try:
        _ip("link", "add", "name", engine.bridge, "type", "bridge")
        bridge_made = True
        _ip("addr", "add", BRIDGE_CIDR, "dev", engine.bridge)
        _ip("link", "set", engine.bridge, "up")
        engine.start()
        save = subprocess.Popen(["docker", "save", FAKE_UPSTREAM_IMAGE], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", engine.url, "load"], stdin=save.stdout,
                              capture_output=True)
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0 and load.returncode == 0, load.stderr.decode()
        yield engine
    finally:
        try:
            if not engine.answers() and engine.process is not None:
                engine.start()  # a test left it stopped: its containers must still go
            client = engine.client()
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.close()
        except Exception as exc:  # noqa: BLE001 - keep tearing down
            print(f"second engine cleanup: {exc}")
        engine.stop()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mount_point = line.split()[1]
            if mount_point.startswith(str(root)):
                subprocess.run(_as_root(["umount", "-l", mount_point]), capture_output=True)
        if bridge_made:
            subprocess.run(_as_root(["ip", "link", "del", engine.bridge]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
