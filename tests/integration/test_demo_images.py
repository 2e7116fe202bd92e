"""The demo's images on the real engine: present ones are left alone, a missing one is built.

The build path runs the demo's own fake-upstream recipe under a tag of this test run (its
layers come from the engine's cache: seconds, not the minutes of a fresh machine), so the real
``llamaswap/*:local`` images are never rebuilt or removed here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from llamaswap_docker.errors import EngineError
from llamaswap_docker.runtime import Engine
from llamaswap_docker.runtime.builds import INPUTS_LABEL, BuildProgress, ensure_images, inputs_hash
from llamaswap_docker.runtime.demo_images import (
    DEMO_IMAGES,
    FAKE_UPSTREAM,
    PYTHON_BASE,
    demo_recipes,
    ensure_demo_images,
)
from tests.conftest import RUN_ID, TEST_RUN_LABEL

pytestmark = pytest.mark.engine


@pytest.fixture
def engine(docker_client: docker.DockerClient, images: dict[str, str]) -> Engine:
    return Engine(docker_client)  # the tests' client: closed by its own fixture


@pytest.fixture
def throwaway_tag(docker_client: docker.DockerClient) -> Iterator[str]:
    """A tag no image has yet; every image the test built (labelled with this run) is removed,
    the ones a rebuild left untagged included."""
    tag = f"llamaswap/test-demo-build-{RUN_ID}:local"
    try:
        yield tag
    finally:
        for image in docker_client.images.list(filters={"label": f"{TEST_RUN_LABEL}={RUN_ID}"}):
            try:
                docker_client.images.remove(image.id, force=True)
            except docker.errors.ImageNotFound:
                pass


def test_present_demo_images_are_reported_up_to_date_and_not_built(
    engine: Engine, tmp_path: Path,
) -> None:
    seen: list[BuildProgress] = []
    # A fresh models folder: the tiny model written there is the one in the image, byte for
    # byte, so serve's folder and build.py's agree on "image up to date".
    built = ensure_demo_images(engine, tmp_path, on_progress=seen.append)
    assert built == []
    assert [(event.image, event.event) for event in seen] == [
        (tag, "image up to date") for tag in DEMO_IMAGES]


def test_a_missing_demo_image_is_built_with_progress_then_found_up_to_date(
    engine: Engine, docker_client: docker.DockerClient, throwaway_tag: str, tmp_path: Path,
) -> None:
    recipe = dataclasses.replace(
        next(r for r in demo_recipes(tmp_path) if r.tag == FAKE_UPSTREAM), tag=throwaway_tag)
    labels = {TEST_RUN_LABEL: RUN_ID}
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(throwaway_tag)

    seen: list[BuildProgress] = []
    built = ensure_images(engine, (recipe,), labels=labels, on_progress=seen.append)

    assert built == [throwaway_tag]
    events = [event.event for event in seen]
    assert events[0] == "building image" and events[-1] == "built image", events
    # "auto": the base the engine already has, no pull (the tests' images are built on it,
    # or on the public one where the run builds from a registry).
    assert seen[0].detail in (f"from fake-upstream/ on {PYTHON_BASE.tag}",
                              f"from fake-upstream/ on {recipe.registry_base}")
    steps = [event for event in seen if event.event.startswith("build step ")]
    total = int(steps[0].event.split("/")[1])
    assert [event.event for event in steps] == [
        f"build step {n}/{total}" for n in range(1, total + 1)]
    assert any(event.detail == "COPY server.py /app/server.py" for event in steps)
    fractions = [event.fraction for event in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # type: ignore[type-var]

    image = docker_client.images.get(throwaway_tag)
    assert image.labels[INPUTS_LABEL] == inputs_hash(recipe)
    assert image.labels[TEST_RUN_LABEL] == RUN_ID
    assert image.attrs["Config"]["Entrypoint"] == ["python3", "/app/server.py"]

    again: list[BuildProgress] = []
    assert ensure_images(engine, (recipe,), labels=labels, on_progress=again.append) == []
    assert [(event.image, event.event) for event in again] == [(throwaway_tag, "image up to date")]
    assert docker_client.images.get(throwaway_tag).id == image.id


def test_an_image_whose_inputs_changed_is_rebuilt(
    engine: Engine, docker_client: docker.DockerClient, throwaway_tag: str, tmp_path: Path,
) -> None:
    recipe = dataclasses.replace(
        next(r for r in demo_recipes(tmp_path) if r.tag == FAKE_UPSTREAM), tag=throwaway_tag)
    labels = {TEST_RUN_LABEL: RUN_ID}
    assert ensure_images(engine, (recipe,), labels=labels, on_progress=lambda _: None) == [
        throwaway_tag]
    first = docker_client.images.get(throwaway_tag)

    extra = tmp_path / "extra.txt"
    extra.write_text("one more input")
    changed = dataclasses.replace(recipe, generated=lambda: {"extra.txt": extra})
    seen: list[BuildProgress] = []
    assert ensure_images(engine, (changed,), labels=labels, on_progress=seen.append) == [
        throwaway_tag]
    assert seen[0].event == "building image"
    rebuilt = docker_client.images.get(throwaway_tag)
    assert rebuilt.id != first.id
    assert rebuilt.labels[INPUTS_LABEL] == inputs_hash(changed) != first.labels[INPUTS_LABEL]


def test_a_failing_build_says_which_image_and_step_and_leaves_no_image(
    engine: Engine, docker_client: docker.DockerClient, throwaway_tag: str, tmp_path: Path,
) -> None:
    context = tmp_path / "broken"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo 'no llama-server here' >&2 && exit 3\n")
    recipe = dataclasses.replace(
        next(r for r in demo_recipes(tmp_path) if r.tag == FAKE_UPSTREAM), tag=throwaway_tag,
        context=context)
    with pytest.raises(EngineError) as caught:
        ensure_images(engine, (recipe,), labels={TEST_RUN_LABEL: RUN_ID},
                      on_progress=lambda _: None)
    message = caught.value.message
    assert message.startswith(f"building {throwaway_tag} failed: The command '/bin/sh -c echo")
    assert "returned a non-zero code: 3" in message
    assert "no llama-server here" in message  # the build's own output, for the reader
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(throwaway_tag)
