"""Make sure a model's image is on the engine, as ``pullPolicy`` says; never a silent pull."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import docker.errors
from loguru import logger

from llamaswap_docker.errors import ImageNotFound, ImagePullFailed
from llamaswap_docker.runtime.engine import Engine

__all__ = ["PullPolicy", "PullProgress", "ensure_image", "split_reference"]

PullPolicy = Literal["always", "missing", "never"]


@dataclass(frozen=True)
class PullProgress:
    """One progress event of a pull: a layer's status and bytes so far."""

    image: str
    layer: str | None
    status: str
    current: int | None = None
    total: int | None = None

    @classmethod
    def from_engine(cls, image: str, event: dict[str, Any]) -> "PullProgress":
        detail = event.get("progressDetail") or {}
        return cls(image, event.get("id"), event.get("status", ""), detail.get("current"),
                   detail.get("total"))


def split_reference(image: str) -> tuple[str, str]:
    """``repo[:tag]`` → (repo, tag), defaulting the tag to ``latest`` as the engine does."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def _image_present(engine: Engine, image: str) -> bool:
    try:
        engine.run_sync(f"inspecting image {image}", engine.client.images.get, image)
    except ImageNotFound:
        return False
    return True


def _pull(engine: Engine, image: str, on_progress: Callable[[PullProgress], None] | None) -> None:
    repository, tag = split_reference(image)
    logger.bind(image=image).info("pulling image")
    try:
        stream = engine.client.api.pull(repository, tag=tag, stream=True, decode=True)
        for event in stream:
            if "error" in event:
                raise ImagePullFailed(f"pulling image {image!r} failed: {event['error']}")
            if on_progress is not None:
                on_progress(PullProgress.from_engine(image, event))
    except docker.errors.APIError as exc:
        raise ImagePullFailed(f"pulling image {image!r} failed: {exc.explanation or exc}") from exc
    logger.bind(image=image).info("pulled image")


def ensure_image(
    engine: Engine,
    image: str,
    policy: PullPolicy,
    on_progress: Callable[[PullProgress], None] | None = None,
) -> None:
    """Make ``image`` present per ``policy`` (blocking: call from a worker thread).

    Raises:
        ImageNotFound: the image is missing and ``policy`` is ``never``.
        ImagePullFailed: the engine could not pull it.
    """
    if policy == "always" or not _image_present(engine, image):
        if policy == "never":
            raise ImageNotFound(
                f"image {image!r} is not on the engine and pullPolicy is 'never': "
                f"build or load it (docker build / docker load), or set pullPolicy: missing"
            )
        _pull(engine, image, on_progress)
