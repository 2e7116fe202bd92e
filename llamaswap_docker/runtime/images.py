"""Make sure a model's image is on the engine, as ``pullPolicy`` says; never a silent pull.

A pull streams the engine's JSON progress lines; each becomes a ``PullProgress`` event (one
layer's status and bytes) carrying the pull's overall ``fraction`` from a ``PullTracker``, so
the CLI can draw one bar and the API report one number. A pull the engine refuses (registry
unreachable, image unknown, access denied) raises ``ImagePullFailed`` with the engine's own
reason as soon as the engine answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import docker.errors
from loguru import logger

from llamaswap_docker.errors import ImageNotFound, ImagePullFailed
from llamaswap_docker.runtime.engine import Engine, translate_errors

__all__ = [
    "PullPolicy",
    "PullProgress",
    "PullTracker",
    "ensure_image",
    "image_labels",
    "is_demo_image",
    "is_local_reference",
    "missing_image_hint",
    "pull_image",
    "split_reference",
]

PullPolicy = Literal["always", "missing", "never"]

#: Share of a layer's progress given to its download; extraction gets the rest.
_DOWNLOAD_SHARE = 0.8
#: Layer statuses the engine reports during a pull, and where each puts the layer.
_WAITING = frozenset({"Pulling fs layer", "Waiting"})
_DOWNLOADED = frozenset({"Verifying Checksum", "Download complete"})
_DONE = frozenset({"Pull complete", "Already exists"})


@dataclass(frozen=True)
class PullProgress:
    """One progress event of a pull: a layer's status and bytes so far, and the pull's share done."""

    image: str
    layer: str | None
    status: str
    current: int | None = None
    total: int | None = None
    #: The whole pull's progress in [0, 1]; None until the engine has named any layer.
    fraction: float | None = None

    @classmethod
    def from_engine(cls, image: str, event: dict[str, Any]) -> "PullProgress":
        """One decoded line of the engine's pull stream."""
        detail = event.get("progressDetail") or {}
        return cls(image, event.get("id"), event.get("status", ""), detail.get("current"),
                   detail.get("total"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return dataclasses.asdict(self)


@dataclass
class _Layer:
    progress: float = 0.0  # 0..1 of this layer's download + extraction
    size: int | None = None  # compressed bytes, once the engine reports them
    downloaded: int = 0
    present: bool = False  # "Already exists": nothing to fetch


class PullTracker:
    """Aggregates a pull's per-layer events into bytes and one overall fraction.

    A layer's progress is its download (80 %) then its extraction (20 %). Layers are weighted
    by size; one whose size the engine has not reported yet weighs as much as the average known
    layer, so the fraction does not race ahead before big layers start. Layers already on the
    engine are no work and count for nothing. The fraction never goes back (a layer's size can
    turn out smaller than its stand-in weight), which is what a progress bar wants.
    """

    def __init__(self) -> None:
        self.layers: dict[str, _Layer] = {}
        #: The engine's final status line ("Status: Downloaded newer image for ...").
        self.final_status: str | None = None
        self._fraction: float | None = None

    def update(self, event: PullProgress) -> None:
        """Account for one event; events that name no layer only update ``final_status``."""
        status = event.status
        if status.startswith("Status:"):  # the engine's last line: the pull is done
            self.final_status, self._fraction = status, 1.0
            return
        if event.layer is None or not _is_layer_status(status):
            return
        layer = self.layers.setdefault(event.layer, _Layer())
        if event.total and event.total > 0 and status in ("Downloading", "Extracting"):
            layer.size = event.total
        share = _ratio(event.current, event.total)
        if status == "Downloading":
            layer.downloaded = event.current or 0
            layer.progress = max(layer.progress, _DOWNLOAD_SHARE * share)
        elif status in _DOWNLOADED:
            layer.downloaded = layer.size or layer.downloaded
            layer.progress = max(layer.progress, _DOWNLOAD_SHARE)
        elif status == "Extracting":
            layer.downloaded = layer.size or layer.downloaded
            layer.progress = max(layer.progress, _DOWNLOAD_SHARE + (1 - _DOWNLOAD_SHARE) * share)
        elif status == "Already exists":
            layer.present, layer.progress = True, 1.0
        elif status in _DONE:
            layer.downloaded = layer.size or layer.downloaded
            layer.progress = 1.0
        self._fraction = max(self._fraction or 0.0, self._estimate())

    @property
    def bytes_done(self) -> int:
        """Bytes downloaded so far (layers already on the engine excluded)."""
        return sum(layer.downloaded for layer in self.layers.values() if not layer.present)

    @property
    def bytes_total(self) -> int:
        """Bytes to download, over the layers whose size the engine has reported so far."""
        return sum(layer.size or 0 for layer in self.layers.values() if not layer.present)

    @property
    def fraction(self) -> float | None:
        """Overall progress in [0, 1]; None before the engine names any layer."""
        return self._fraction

    def _estimate(self) -> float:
        work = [layer for layer in self.layers.values() if not layer.present]
        if not work:
            return 0.0  # only present layers so far: the ones to fetch may follow
        sizes = [layer.size for layer in work if layer.size]
        stand_in = sum(sizes) / len(sizes) if sizes else 1.0
        weights = [layer.size or stand_in for layer in work]
        done = sum(weight * layer.progress for weight, layer in zip(weights, work))
        return min(1.0, done / sum(weights))


def _is_layer_status(status: str) -> bool:
    return (
        status in _WAITING or status in _DOWNLOADED or status in _DONE
        or status in ("Downloading", "Extracting") or status.startswith("Retrying")
    )


def _ratio(current: int | None, total: int | None) -> float:
    if not current or not total or total <= 0:
        return 0.0
    return max(0.0, min(1.0, current / total))


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


def image_labels(engine: Engine, image: str) -> dict[str, str] | None:
    """The image's labels; None when the engine has no such image."""
    try:
        attrs = engine.run_sync(f"inspecting image {image}", engine.client.api.inspect_image,
                                image)
    except ImageNotFound:
        return None
    return (attrs.get("Config") or {}).get("Labels") or {}


def _image_present(engine: Engine, image: str) -> bool:
    try:
        engine.run_sync(f"inspecting image {image}", engine.client.images.get, image)
    except ImageNotFound:
        return False
    return True


def is_local_reference(image: str) -> bool:
    """Whether ``image`` names an image made on this machine, which no registry has: tag
    ``local``, or Podman's ``localhost/`` prefix for what it built."""
    repository, tag = split_reference(image)
    return tag == "local" or repository.startswith("localhost/")


def is_demo_image(image: str) -> bool:
    """Whether ``image`` is one of the demo's images (built here by ``serve``, never pulled)."""
    # Imported here: demo_images builds through this module (its bases are pulled with it).
    from llamaswap_docker.runtime.demo_images import DEMO_IMAGES

    return image in DEMO_IMAGES


def missing_image_hint(image: str) -> str:
    """How to get ``image`` onto the engine without a pull: what a 503 for it ends with."""
    if is_demo_image(image):
        return (f"{image!r} is one of the demo's images, built on this machine and never "
                f"pulled: `llamaswap-docker serve` with no config builds the missing ones "
                f"before it listens (in a checkout: `python3 images/build.py`)")
    return f"build it (`docker build -t {image} DIR`) or load it (`docker load -i FILE`)"


def _pull_failed(image: str, reason: Any) -> ImagePullFailed:
    return ImagePullFailed(f"pulling image {image!r} failed: {str(reason).strip()}")


def _with_hint(image: str, failure: str) -> str:
    """A pull's failure, followed by what a user can do about it for this image."""
    how = missing_image_hint(image)
    if is_demo_image(image):
        return f"{failure}. {how}"
    if is_local_reference(image):
        return (f"{failure}. {image!r} names a local image, which no registry has: {how}, and "
                f"set pullPolicy: never so that a missing image is reported rather than pulled")
    return (f"{failure}. Check the image name and that the engine can reach (and is logged in "
            f"to) its registry, or {how} and set pullPolicy: never")


def pull_image(engine: Engine, image: str,
               on_progress: Callable[[PullProgress], None] | None = None) -> None:
    """Pull ``image`` now, reporting progress (blocking: call from a worker thread).

    Raises:
        ImagePullFailed: the engine could not pull it; the message is its reason.
    """
    repository, tag = split_reference(image)
    log = logger.bind(image=image)
    log.info("pulling image")
    tracker = PullTracker()
    # The engine's own refusals become ImagePullFailed here; translate_errors around them maps
    # a lost engine (a connection dropped mid-pull) like every other engine call.
    with translate_errors(f"pulling image {image}"):
        try:
            stream = engine.client.api.pull(repository, tag=tag, stream=True, decode=True)
            for event in stream:
                if "error" in event:
                    reason = (event.get("errorDetail") or {}).get("message") or event["error"]
                    raise _pull_failed(image, reason)
                progress = PullProgress.from_engine(image, event)
                tracker.update(progress)
                if on_progress is not None:
                    on_progress(dataclasses.replace(progress, fraction=tracker.fraction))
        except docker.errors.APIError as exc:
            raise _pull_failed(image, exc.explanation or exc) from exc
    log.bind(bytes=tracker.bytes_done, layers=len(tracker.layers)).info("pulled image")


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
            how = missing_image_hint(image)
            if not is_demo_image(image) and not is_local_reference(image):
                how += ", or set pullPolicy: missing to pull it"
            raise ImageNotFound(
                f"image {image!r} is not on the engine and pullPolicy is 'never': {how}")
        try:
            pull_image(engine, image, on_progress)
        except ImagePullFailed as exc:
            raise ImagePullFailed(_with_hint(image, exc.message)) from exc.__cause__
