"""Image pulls: the progress tracker on recorded engine output, and pull errors.

The two recordings are a real Docker Engine 20.10's ``/images/create`` stream, taken with
docker-py's ``api.pull(..., stream=True, decode=True)`` from a local registry (Debian's
``docker-registry``): a three-layer image pulled from nothing, then an image sharing those three
layers plus one new layer. The engine used here ran with no registry of its own, so the
failures are asserted against the real engine in tests/integration/test_platforms.py.
"""

from __future__ import annotations

import json
from typing import Any

import docker.errors
import pytest

from llamaswap_docker.errors import ImageNotFound, ImagePullFailed
from llamaswap_docker.runtime import Engine
from llamaswap_docker.runtime.images import PullProgress, PullTracker, ensure_image

IMAGE = "localhost:5123/llamaswap-pull-probe:rec"

# Three layers of 3001133, 1200568 and 111 compressed bytes, none on the engine before.
PULL_FRESH = """\
{"status":"Pulling from llamaswap-pull-probe","id":"rec"}
{"status":"Pulling fs layer","progressDetail":{},"id":"0bd6760088f9"}
{"status":"Pulling fs layer","progressDetail":{},"id":"8cfa60f7ea6d"}
{"status":"Pulling fs layer","progressDetail":{},"id":"f6fc7c425758"}
{"status":"Download complete","progressDetail":{},"id":"f6fc7c425758"}
{"status":"Downloading","progressDetail":{"current":32768,"total":3001133},"progress":"[>                                                  ]  32.77kB/3.001MB","id":"0bd6760088f9"}
{"status":"Verifying Checksum","progressDetail":{},"id":"0bd6760088f9"}
{"status":"Download complete","progressDetail":{},"id":"0bd6760088f9"}
{"status":"Extracting","progressDetail":{"current":32768,"total":3001133},"progress":"[>                                                  ]  32.77kB/3.001MB","id":"0bd6760088f9"}
{"status":"Downloading","progressDetail":{"current":36445,"total":1200568},"progress":"[=>                                                 ]  36.45kB/1.201MB","id":"8cfa60f7ea6d"}
{"status":"Verifying Checksum","progressDetail":{},"id":"8cfa60f7ea6d"}
{"status":"Download complete","progressDetail":{},"id":"8cfa60f7ea6d"}
{"status":"Extracting","progressDetail":{"current":3001133,"total":3001133},"progress":"[==================================================>]  3.001MB/3.001MB","id":"0bd6760088f9"}
{"status":"Pull complete","progressDetail":{},"id":"0bd6760088f9"}
{"status":"Extracting","progressDetail":{"current":32768,"total":1200568},"progress":"[=>                                                 ]  32.77kB/1.201MB","id":"8cfa60f7ea6d"}
{"status":"Extracting","progressDetail":{"current":1200568,"total":1200568},"progress":"[==================================================>]  1.201MB/1.201MB","id":"8cfa60f7ea6d"}
{"status":"Extracting","progressDetail":{"current":1200568,"total":1200568},"progress":"[==================================================>]  1.201MB/1.201MB","id":"8cfa60f7ea6d"}
{"status":"Pull complete","progressDetail":{},"id":"8cfa60f7ea6d"}
{"status":"Extracting","progressDetail":{"current":111,"total":111},"progress":"[==================================================>]     111B/111B","id":"f6fc7c425758"}
{"status":"Extracting","progressDetail":{"current":111,"total":111},"progress":"[==================================================>]     111B/111B","id":"f6fc7c425758"}
{"status":"Pull complete","progressDetail":{},"id":"f6fc7c425758"}
{"status":"Digest: sha256:b9be8d811f4c7d219532fe50fc20d83fd41517c4dd470019cfc930988657c95b"}
{"status":"Status: Downloaded newer image for localhost:5123/llamaswap-pull-probe:rec"}
"""

# The same three layers already present, one new layer of 2500952 bytes.
PULL_SHARED_LAYERS = """\
{"status":"Pulling from llamaswap-pull-probe","id":"rec2"}
{"status":"Already exists","progressDetail":{},"id":"0bd6760088f9"}
{"status":"Already exists","progressDetail":{},"id":"8cfa60f7ea6d"}
{"status":"Already exists","progressDetail":{},"id":"f6fc7c425758"}
{"status":"Pulling fs layer","progressDetail":{},"id":"59e031eef87a"}
{"status":"Downloading","progressDetail":{"current":36445,"total":2500952},"progress":"[>                                                  ]  36.45kB/2.501MB","id":"59e031eef87a"}
{"status":"Verifying Checksum","progressDetail":{},"id":"59e031eef87a"}
{"status":"Download complete","progressDetail":{},"id":"59e031eef87a"}
{"status":"Extracting","progressDetail":{"current":32768,"total":2500952},"progress":"[>                                                  ]  32.77kB/2.501MB","id":"59e031eef87a"}
{"status":"Extracting","progressDetail":{"current":2500952,"total":2500952},"progress":"[==================================================>]  2.501MB/2.501MB","id":"59e031eef87a"}
{"status":"Pull complete","progressDetail":{},"id":"59e031eef87a"}
{"status":"Digest: sha256:038f2bcbb2e24d4e2d61470ab6cf6659ca3b9a136401588e3911239bd3a84fd5"}
{"status":"Status: Downloaded newer image for localhost:5123/llamaswap-pull-probe:rec2"}
"""


def events(recording: str, image: str = IMAGE) -> list[PullProgress]:
    return [PullProgress.from_engine(image, json.loads(line)) for line in recording.splitlines()]


def track(recording: str) -> tuple[PullTracker, list[float | None]]:
    tracker = PullTracker()
    fractions = []
    for event in events(recording):
        tracker.update(event)
        fractions.append(tracker.fraction)
    return tracker, fractions


def test_events_carry_layer_status_and_bytes() -> None:
    downloading = [e for e in events(PULL_FRESH) if e.status == "Downloading"]
    assert downloading[0] == PullProgress(IMAGE, "0bd6760088f9", "Downloading", 32768, 3001133)
    first = events(PULL_FRESH)[0]
    assert (first.layer, first.status, first.current) == ("rec", "Pulling from llamaswap-pull-probe", None)
    assert downloading[0].to_dict()["total"] == 3001133


def test_tracker_turns_layer_events_into_one_rising_fraction() -> None:
    tracker, fractions = track(PULL_FRESH)
    assert fractions[0] is None, "no layer named yet: no fraction"
    known = [f for f in fractions if f is not None]
    assert known == sorted(known), "a progress bar never goes back"
    assert 0 < known[len(known) // 2] < 1
    assert fractions[-1] == 1.0
    assert set(tracker.layers) == {"0bd6760088f9", "8cfa60f7ea6d", "f6fc7c425758"}
    assert tracker.bytes_total == 3001133 + 1200568 + 111 == tracker.bytes_done
    assert tracker.final_status == f"Status: Downloaded newer image for {IMAGE}"


def test_tracker_weights_layers_by_size() -> None:
    tracker = PullTracker()
    for event in events(PULL_FRESH):
        tracker.update(event)
        if event.status == "Download complete" and event.layer == "0bd6760088f9":
            break
    # The 3 MB layer is downloaded, the 111-byte one too, the 1.2 MB one not started:
    # the download share (80 %) of two of three layers weighing the same (a layer of unknown
    # size stands in as large as the average known one).
    assert tracker.fraction == pytest.approx(0.8 * 2 / 3)
    assert tracker.bytes_done == tracker.bytes_total == 3001133


def test_layers_already_on_the_engine_are_no_work() -> None:
    tracker, fractions = track(PULL_SHARED_LAYERS)
    assert fractions[1:4] == [0.0, 0.0, 0.0], "present layers do not fill the bar"
    downloaded = fractions[events(PULL_SHARED_LAYERS).index(
        next(e for e in events(PULL_SHARED_LAYERS) if e.status == "Download complete"))]
    assert downloaded == pytest.approx(0.8)
    assert fractions[-1] == 1.0
    assert tracker.bytes_total == 2500952 and sum(layer.present for layer in tracker.layers.values()) == 3


def test_an_up_to_date_image_is_complete() -> None:
    tracker = PullTracker()
    tracker.update(PullProgress(IMAGE, "rec", "Pulling from llamaswap-pull-probe"))
    tracker.update(PullProgress(IMAGE, None, "Digest: sha256:038f2bcb"))
    assert tracker.fraction is None
    tracker.update(PullProgress(IMAGE, None, f"Status: Image is up to date for {IMAGE}"))
    assert tracker.fraction == 1.0


# ----------------------------------------------------------------------------- ensure_image


class _Images:
    def get(self, name: str) -> Any:
        raise docker.errors.ImageNotFound(f"No such image: {name}")


class _Api:
    def __init__(self, stream: list[dict[str, Any]] | Exception) -> None:
        self.stream = stream
        self.calls: list[tuple[Any, ...]] = []

    def pull(self, repository: str, tag: str, stream: bool, decode: bool) -> Any:
        self.calls.append((repository, tag, stream, decode))
        if isinstance(self.stream, Exception):
            raise self.stream
        return iter(self.stream)


class _Client:
    """Stands in for docker-py's client to check argument mapping (never engine behaviour)."""

    def __init__(self, stream: list[dict[str, Any]] | Exception) -> None:
        self.images = _Images()
        self.api = _Api(stream)


def test_ensure_image_pulls_by_repository_and_tag_and_reports_progress() -> None:
    client = _Client([json.loads(line) for line in PULL_FRESH.splitlines()])
    seen: list[PullProgress] = []
    ensure_image(Engine(client), IMAGE, "missing", seen.append)  # type: ignore[arg-type]
    assert client.api.calls == [("localhost:5123/llamaswap-pull-probe", "rec", True, True)]
    assert len(seen) == len(PULL_FRESH.splitlines())
    assert seen[-1].fraction == 1.0 and seen[5].fraction is not None


def test_an_error_in_the_stream_fails_the_pull_with_the_engines_reason() -> None:
    stream = [
        {"status": "Pulling from library/ghost", "id": "1"},
        {"errorDetail": {"message": "toomanyrequests: You have reached your pull rate limit."},
         "error": "toomanyrequests: You have reached your pull rate limit."},
    ]
    with pytest.raises(ImagePullFailed) as caught:
        ensure_image(Engine(_Client(stream)), "ghost:1", "missing")  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("pulling image 'ghost:1' failed: toomanyrequests: You have reached")
    assert "pullPolicy: never" in message


def test_an_engine_refusal_fails_the_pull_with_its_explanation() -> None:
    # The engine's words for a manifest that does not exist, as a local registry answered them.
    refusal = docker.errors.NotFound(
        "404 Client Error", explanation="manifest for localhost:5123/llamaswap-pull-probe:nope not found: "
        "manifest unknown: manifest unknown")
    with pytest.raises(ImagePullFailed, match="manifest unknown") as caught:
        ensure_image(Engine(_Client(refusal)), "localhost:5123/llamaswap-pull-probe:nope", "missing")  # type: ignore[arg-type]
    assert caught.value.status_code == 503 and caught.value.__cause__ is refusal


def test_never_policy_does_not_pull() -> None:
    client = _Client([])
    with pytest.raises(ImageNotFound, match="pullPolicy is 'never'"):
        ensure_image(Engine(client), "ghost:1", "never")  # type: ignore[arg-type]
    assert client.api.calls == []
