"""The demo's images: built on this machine from the Dockerfiles shipped in the package.

``llamaswap-docker serve`` with no config builds the missing ones before it listens (a fresh
machine: about 2 minutes, the bases included); ``python3 images/build.py`` builds the same
recipes (and the proxy's image) for the tests and CI.

* ``llamaswap/fake-upstream:local``: ``dockerfiles/fake-upstream``, the fake OpenAI/Anthropic
  server (vLLM or llama-server stand-in) on a Python base;
* ``llamaswap/llama-server:local``: ``dockerfiles/llama-server``, Debian's CPU ``llama-server``
  with the demo's tiny GGUF at ``/models/tiny.gguf``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from llamaswap_docker.runtime.builds import (
    BuildProgress,
    ImageSource,
    Recipe,
    Rootfs,
    ensure_images,
    log_progress,
)
from llamaswap_docker.runtime.engine import Engine

__all__ = [
    "DEMO_IMAGES",
    "DOCKERFILES",
    "FAKE_UPSTREAM",
    "LLAMA_BASE",
    "LLAMA_SERVER",
    "PYTHON_BASE",
    "demo_models_dir",
    "demo_recipes",
    "ensure_demo_images",
]

#: The Dockerfile folders shipped with the package.
DOCKERFILES = Path(__file__).resolve().parent.parent / "dockerfiles"

FAKE_UPSTREAM = "llamaswap/fake-upstream:local"
LLAMA_SERVER = "llamaswap/llama-server:local"
#: The images the demo config names, built here and never pulled.
DEMO_IMAGES = (FAKE_UPSTREAM, LLAMA_SERVER)

#: Bases made with debootstrap when no registry answers.
PYTHON_BASE = Rootfs("llamaswap/python-base:bookworm", "bookworm", ("python3", "ca-certificates"))
# Debian ships llama-server (llama.cpp-tools) in forky/sid only; debootstrap has no forky script.
LLAMA_BASE = Rootfs("llamaswap/debian-llama:forky", "forky", ("llama.cpp-tools", "ca-certificates"),
                    script="/usr/share/debootstrap/scripts/sid")


def demo_models_dir() -> Path:
    """Where the demo's tiny model lives on the host (``LLAMASWAP_DEMO_DIR`` overrides)."""
    configured = os.environ.get("LLAMASWAP_DEMO_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "llamaswap-docker" / "demo-models"


def demo_recipes(models_dir: Path | None = None) -> tuple[Recipe, ...]:
    """The demo's images; the llama-server one carries ``models_dir``'s tiny model (written
    there first when missing; the default: ``demo_models_dir()``)."""

    def tiny_model() -> dict[str, Path]:
        # Imported here: only a build or its up-to-date check needs gguf (the demo extra).
        from llamaswap_docker.tinymodel import TINY_GGUF_NAME, ensure_tiny_gguf

        return {f"models/{TINY_GGUF_NAME}": ensure_tiny_gguf(models_dir or demo_models_dir())}

    return (
        Recipe(FAKE_UPSTREAM, DOCKERFILES / "fake-upstream", PYTHON_BASE, "python:3.11-slim"),
        Recipe(LLAMA_SERVER, DOCKERFILES / "llama-server", LLAMA_BASE, "debian:sid-slim",
               generated=tiny_model),
    )


def ensure_demo_images(
    engine: Engine,
    models_dir: Path | None = None,
    *,
    source: ImageSource = "auto",
    on_progress: Callable[[BuildProgress], None] = log_progress,
) -> list[str]:
    """Build the demo's images that are missing or out of date; return the tags made.

    Blocking (minutes on a fresh machine): call it before serving, or from a worker thread.

    Raises:
        LlamaswapError: a base could be neither pulled nor made, or a build failed.
    """
    announced = False

    def report(progress: BuildProgress) -> None:
        nonlocal announced
        if progress.event != "image up to date" and not announced:
            announced = True  # once, before the first build: why the demo is not up yet
            logger.info("building the demo's missing images: once per machine, a few minutes "
                        "when their bases have to be made too")
        on_progress(progress)

    return ensure_images(engine, demo_recipes(models_dir), source=source, on_progress=report)
