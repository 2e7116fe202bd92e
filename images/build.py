#!/usr/bin/env python3
"""Build the local images llamaswap-docker's demo and tests run, with no registry.

Idempotent: an image built from the current inputs is left alone; one whose Dockerfile folder
(or, for the proxy, the package) changed since is rebuilt (``--force`` rebuilds regardless).

Two sources for the base images:

* ``--source local`` (default): base root filesystems are made with ``debootstrap`` from
  Debian's mirror and imported into the engine. Needs root and the ``debootstrap`` package;
  works on a machine that can reach a Debian mirror but no container registry.
* ``--source registry``: the Dockerfiles build ``FROM`` the usual public bases
  (``python:3.11-slim``, ``debian:sid-slim``), pulled by the engine.

Images (tags are what the demo config and the tests name):

* ``llamaswap/python-base:bookworm``    Debian bookworm + python3 (local source only)
* ``llamaswap/debian-llama:forky``      Debian forky + ``llama.cpp-tools`` (local source only)
* ``llamaswap/fake-upstream:local``     ``images/fake-upstream`` on the Python base
* ``llamaswap/llama-server:local``      ``images/llama-server``: Debian's CPU ``llama-server``
* ``llamaswap/llamaswap-docker:local``  ``images/proxy``: the proxy, installed from a wheelhouse
  that ``pip wheel`` builds from this checkout first (needs PyPI or a pip cache)
* ``llamaswap/nginx-upstream:local``    ``images/nginx-upstream``: a fixed-answer nginx, for the
  relay benchmark only (not built by default)

Usage: ``python images/build.py [--source local|registry] [--force] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

IMAGES_DIR = Path(__file__).resolve().parent

PYTHON_BASE = "llamaswap/python-base:bookworm"
LLAMA_BASE = "llamaswap/debian-llama:forky"
FAKE_UPSTREAM = "llamaswap/fake-upstream:local"
LLAMA_SERVER = "llamaswap/llama-server:local"
PROXY = "llamaswap/llamaswap-docker:local"
NGINX_UPSTREAM = "llamaswap/nginx-upstream:local"

# Paths left out of imported root filesystems: kernel filesystems and what no server reads.
_ROOTFS_EXCLUDES = (
    "./proc/*", "./sys/*", "./dev/*", "./run/*", "./tmp/*",
    "./usr/share/doc/*", "./usr/share/man/*", "./usr/share/info/*", "./usr/share/locale/*",
    "./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*", "./var/log/*",
)


@dataclass(frozen=True)
class Rootfs:
    """A base image made by debootstrap."""

    tag: str
    suite: str
    packages: tuple[str, ...]
    # debootstrap has no script for every suite (forky): reuse sid's.
    script: str | None = None


@dataclass(frozen=True)
class DockerfileImage:
    """An image built from a folder under images/."""

    tag: str
    context: str
    local_base: str
    registry_base: str
    extra_args: dict[str, str] = field(default_factory=dict)


ROOTFS = {
    PYTHON_BASE: Rootfs(PYTHON_BASE, "bookworm", ("python3", "ca-certificates")),
    LLAMA_BASE: Rootfs(
        LLAMA_BASE, "forky", ("llama.cpp-tools", "ca-certificates"),
        script="/usr/share/debootstrap/scripts/sid",
    ),
}

BUILDS = {
    FAKE_UPSTREAM: DockerfileImage(FAKE_UPSTREAM, "fake-upstream", PYTHON_BASE, "python:3.11-slim"),
    LLAMA_SERVER: DockerfileImage(LLAMA_SERVER, "llama-server", LLAMA_BASE, "debian:sid-slim"),
    PROXY: DockerfileImage(PROXY, "proxy", PYTHON_BASE, "python:3.11-slim"),
    # Only for benchmarks/bench_relay.py (built when it runs).
    NGINX_UPSTREAM: DockerfileImage(NGINX_UPSTREAM, "nginx-upstream", PYTHON_BASE,
                                    "debian:bookworm-slim"),
}

#: The images the test suite and the demo config need.
DEFAULT_IMAGES = (FAKE_UPSTREAM, LLAMA_SERVER, PROXY)
REPO_DIR = IMAGES_DIR.parent


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (debootstrap needs one)."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in candidates:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


#: Label holding the hash of what an image was built from: a changed input means a rebuild.
INPUTS_LABEL = "io.llamaswap.build-inputs"


def build_inputs_hash(spec: DockerfileImage) -> str:
    """Hash of the build context (and, for the proxy, of the package it installs)."""
    roots = [IMAGES_DIR / spec.context]
    if spec.tag == PROXY:
        roots += [REPO_DIR / "llamaswap_docker", REPO_DIR / "pyproject.toml"]
    digest = hashlib.sha256()
    for root in roots:
        files = [root] if root.is_file() else sorted(
            path for path in root.rglob("*")
            if path.is_file() and "wheelhouse" not in path.parts and "__pycache__" not in path.parts
        )
        for path in files:
            digest.update(str(path.relative_to(REPO_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def image_up_to_date(client: docker.DockerClient, spec: DockerfileImage) -> bool:
    """The image exists and was built from the inputs as they are now."""
    try:
        image = client.images.get(spec.tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(INPUTS_LABEL) == build_inputs_hash(spec)


def build_rootfs(client: docker.DockerClient, spec: Rootfs) -> None:
    """debootstrap a minimal root filesystem and import it as an image."""
    if shutil.which("debootstrap") is None:
        raise SystemExit(
            "debootstrap is not installed: run `apt-get install -y debootstrap` "
            "(or build with --source registry on a machine that can pull)"
        )
    mirror = debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llamaswap-rootfs-") as tmp:
        root = Path(tmp) / "root"
        command = [
            "debootstrap", "--variant=minbase", f"--include={','.join(spec.packages)}",
            spec.suite, str(root), mirror,
        ]
        if spec.script:
            command.append(spec.script)
        log(f"debootstrap suite={spec.suite} packages={','.join(spec.packages)} mirror={mirror}")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise SystemExit(f"debootstrap failed for {spec.tag}:\n{tail}")
        archive = Path(tmp) / "rootfs.tar"
        excludes = [f"--exclude={pattern}" for pattern in _ROOTFS_EXCLUDES]
        subprocess.run(["tar", "-C", str(root), *excludes, "-cf", str(archive), "."], check=True)
        repository, tag = spec.tag.rsplit(":", 1)
        client.api.import_image_from_file(
            str(archive), repository=repository, tag=tag, changes=["ENV LANG=C.UTF-8"]
        )
    log(f"built {spec.tag} in {time.monotonic() - started:.0f}s")


def build_wheelhouse(target: Path) -> None:
    """Wheels of the package and its runtime dependencies, for an offline ``pip install``."""
    if target.exists():
        shutil.rmtree(target)
    # setuptools builds in-tree: a stale build/ could ship modules deleted since.
    shutil.rmtree(REPO_DIR / "build", ignore_errors=True)
    log(f"building wheelhouse in {target.relative_to(REPO_DIR)}")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(target), str(REPO_DIR)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"pip wheel failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def prepare_context(spec: DockerfileImage) -> None:
    """Generated files a build context needs, written before its inputs are hashed."""
    if spec.tag == LLAMA_SERVER:
        # The demo's tiny model, inside the image: `docker compose up` serves it with no
        # host folder to mount (written deterministically: same bytes, same hash).
        sys.path.insert(0, str(REPO_DIR))
        try:
            from llamaswap_docker.tinymodel import ensure_tiny_gguf
        except ImportError as exc:
            raise SystemExit(f"{exc}: install the package first (pip install -e '.[demo]')") from exc
        ensure_tiny_gguf(IMAGES_DIR / spec.context / "models")


def build_dockerfile(client: docker.DockerClient, spec: DockerfileImage, source: str) -> None:
    if spec.tag == PROXY:
        build_wheelhouse(IMAGES_DIR / spec.context / "wheelhouse")
    base = spec.local_base if source == "local" else spec.registry_base
    started = time.monotonic()
    log(f"building {spec.tag} from images/{spec.context} on {base}")
    try:
        client.images.build(
            path=str(IMAGES_DIR / spec.context),
            tag=spec.tag,
            buildargs={"BASE_IMAGE": base, **spec.extra_args},
            labels={INPUTS_LABEL: build_inputs_hash(spec)},
            pull=source == "registry",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        lines = [chunk.get("stream", chunk.get("error", "")) for chunk in exc.build_log]
        tail = "".join(lines)[-3000:]
        raise SystemExit(f"building {spec.tag} failed: {exc.msg}\n{tail}") from exc
    log(f"built {spec.tag} in {time.monotonic() - started:.0f}s")


def ensure_images(
    names: tuple[str, ...] = DEFAULT_IMAGES,
    *,
    source: str = "local",
    force: bool = False,
    client: docker.DockerClient | None = None,
) -> list[str]:
    """Build each named image (and its base) unless it is up to date; return the tags built.

    Up to date: it exists and its ``INPUTS_LABEL`` matches the build inputs now, so an edited
    fake server or proxy is rebuilt instead of silently tested as it was.
    """
    client = client or docker.from_env()
    built: list[str] = []
    for name in names:
        spec = BUILDS[name]
        prepare_context(spec)
        if image_up_to_date(client, spec) and not force:
            continue
        if source == "local" and not image_exists(client, spec.local_base):
            build_rootfs(client, ROOTFS[spec.local_base])
            built.append(spec.local_base)
        build_dockerfile(client, spec, source)
        built.append(spec.tag)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("local", "registry"),
                        default=os.environ.get("LLAMASWAP_IMAGE_SOURCE", "local"))
    parser.add_argument("--force", action="store_true",
                        help="rebuild the images even if present (bases are kept)")
    parser.add_argument("--only", nargs="*", choices=sorted(BUILDS), default=list(DEFAULT_IMAGES))
    args = parser.parse_args(argv)
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise SystemExit(
            f"no Docker engine answers ({exc}). Start one (`dockerd &`, or "
            "`apt-get install -y docker.io` first) or set DOCKER_HOST."
        ) from exc
    built = ensure_images(tuple(args.only), source=args.source, force=args.force, client=client)
    log(f"up to date: {', '.join(args.only)} ({len(built)} built: {', '.join(built) or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
