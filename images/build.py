#!/usr/bin/env python3
"""Build the local images llamaswap-docker's demo, tests and compose stack run, with no registry.

Idempotent: an image built from the current inputs is left alone; one whose Dockerfile folder
(or, for the proxy, the package) changed since is rebuilt (``--force`` rebuilds regardless).
The build itself is the package's (``llamaswap_docker/runtime/builds.py``): the demo's images
are the ones ``llamaswap-docker serve`` builds when they are missing.

Three sources for the base images:

* ``--source local`` (default): base root filesystems are made with ``debootstrap`` from
  Debian's mirror and imported into the engine. Needs root and the ``debootstrap`` package;
  works on a machine that can reach a Debian mirror but no container registry.
* ``--source registry``: the Dockerfiles build ``FROM`` the usual public bases
  (``python:3.11-slim``, ``debian:sid-slim``), pulled by the engine.
* ``--source auto``: the bases the engine has, else public ones if a registry answers, else
  debootstrap (what ``serve`` does).

Images (tags are what the demo config and the tests name):

* ``llamaswap/python-base:bookworm``    Debian bookworm + python3 (local source only)
* ``llamaswap/debian-llama:forky``      Debian forky + ``llama.cpp-tools`` (local source only)
* ``llamaswap/fake-upstream:local``     ``llamaswap_docker/dockerfiles/fake-upstream`` on the
  Python base
* ``llamaswap/llama-server:local``      ``llamaswap_docker/dockerfiles/llama-server``: Debian's
  CPU ``llama-server`` with the demo's tiny GGUF
* ``llamaswap/llamaswap-docker:local``  ``images/proxy``: the proxy, installed from a wheelhouse
  that ``pip wheel`` builds from this checkout first (needs PyPI or a pip cache)
* ``llamaswap/nginx-upstream:local``    ``images/nginx-upstream``: a fixed-answer nginx, for the
  relay benchmark only (not built by default)

Usage: ``python images/build.py [--source local|registry|auto] [--force] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

IMAGES_DIR = Path(__file__).resolve().parent
REPO_DIR = IMAGES_DIR.parent
# This checkout's package builds this checkout's images, whichever copy pip installed last.
sys.path.insert(0, str(REPO_DIR))

try:
    from llamaswap_docker.errors import LlamaswapError
    from llamaswap_docker.logs import configure_logging
    from llamaswap_docker.runtime import Engine
    from llamaswap_docker.runtime.builds import INPUTS_LABEL, BuildProgress, Recipe
    from llamaswap_docker.runtime.builds import ensure_images as _ensure
    from llamaswap_docker.runtime.demo_images import (
        FAKE_UPSTREAM,
        LLAMA_SERVER,
        PYTHON_BASE,
        demo_recipes,
    )
except ImportError as exc:
    raise SystemExit(f"{exc}: install the package first (pip install -e '.[test]')") from exc

__all__ = ["BUILDS", "DEFAULT_IMAGES", "FAKE_UPSTREAM", "INPUTS_LABEL", "LLAMA_SERVER",
           "NGINX_UPSTREAM", "PROXY", "ensure_images", "main"]

PROXY = "llamaswap/llamaswap-docker:local"
NGINX_UPSTREAM = "llamaswap/nginx-upstream:local"


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def build_wheelhouse(scratch: Path) -> dict[str, Path]:
    """Wheels of the package and its runtime dependencies, for an offline ``pip install`` in
    the proxy's image: ``wheelhouse/NAME`` in its build context → the wheel in ``scratch``.

    Built from a copy of the package: setuptools builds in-tree, and a shared build/ folder
    could ship modules deleted since or mix two builds running at once.
    """
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_DIR / name, source / name)
    shutil.copytree(REPO_DIR / "llamaswap_docker", source / "llamaswap_docker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = scratch / "wheelhouse"
    log("building the proxy's wheelhouse (pip wheel of this checkout)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(target), str(source)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"pip wheel failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return {f"wheelhouse/{wheel.name}": wheel for wheel in sorted(target.iterdir())}


BUILDS: dict[str, Recipe] = {
    **{recipe.tag: recipe for recipe in demo_recipes()},
    PROXY: Recipe(
        PROXY, IMAGES_DIR / "proxy", PYTHON_BASE, "python:3.11-slim",
        extra_inputs={"llamaswap_docker": REPO_DIR / "llamaswap_docker",
                      "pyproject.toml": REPO_DIR / "pyproject.toml"},
        prepare=build_wheelhouse,
    ),
    # Only for benchmarks/bench_relay.py (built when it runs).
    NGINX_UPSTREAM: Recipe(NGINX_UPSTREAM, IMAGES_DIR / "nginx-upstream", PYTHON_BASE,
                           "debian:bookworm-slim"),
}

#: The images the test suite, the demo config and the compose stack need.
DEFAULT_IMAGES = (FAKE_UPSTREAM, LLAMA_SERVER, PROXY)


def _print(progress: BuildProgress) -> None:
    log(progress.line())


def ensure_images(
    names: tuple[str, ...] = DEFAULT_IMAGES,
    *,
    source: str = "local",
    force: bool = False,
    client: Any = None,
) -> list[str]:
    """Build each named image (and its base) unless it is up to date; return the tags built.

    ``client``: a docker-py client (the tests' own), else one from the environment.

    Raises:
        LlamaswapError: a base could be neither pulled nor made, or a build failed.
    """
    engine = Engine(client) if client is not None else Engine.from_settings()
    try:
        return _ensure(engine, tuple(BUILDS[name] for name in names), source=source,  # type: ignore[arg-type]
                       force=force, on_progress=_print)
    finally:
        if client is None:
            engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("local", "registry", "auto"),
                        default=os.environ.get("LLAMASWAP_IMAGE_SOURCE", "local"))
    parser.add_argument("--force", action="store_true",
                        help="rebuild the images even if present (bases are kept)")
    parser.add_argument("--only", nargs="*", choices=sorted(BUILDS), default=list(DEFAULT_IMAGES))
    args = parser.parse_args(argv)
    configure_logging("warn")  # the [images] lines tell the story; the package's only warnings
    try:
        built = ensure_images(tuple(args.only), source=args.source, force=args.force)
    except LlamaswapError as exc:
        raise SystemExit(exc.message) from exc
    log(f"up to date: {', '.join(args.only)} ({len(built)} built: {', '.join(built) or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
