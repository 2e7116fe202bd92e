"""The demo's images: what a missing image's 503 tells a user to do, and the build's pure parts
(inputs hash, build context, progress lines, the Dockerfiles shipped with the package).

Builds against the real engine are in tests/integration/test_demo_images.py.
"""

from __future__ import annotations

import fnmatch
import io
import tarfile
import tomllib
from pathlib import Path

import pytest

from llamaswap_docker.errors import ImageNotFound, ImagePullFailed
from llamaswap_docker.runtime import Engine
from llamaswap_docker.runtime.builds import (
    BuildProgress,
    Recipe,
    Rootfs,
    debootstrap_phase,
    inputs_hash,
    run_phases,
    write_context,
)
from llamaswap_docker.runtime.demo_images import (
    DEMO_IMAGES,
    DOCKERFILES,
    FAKE_UPSTREAM,
    LLAMA_SERVER,
    demo_recipes,
)
from llamaswap_docker.runtime.images import ensure_image, is_local_reference, missing_image_hint
from tests.unit.test_runtime_images import _Client

REPO = Path(__file__).resolve().parents[2]
NO_HOST = [{"errorDetail": {"message": "Get \"https://registry-1.docker.io/v2/\": dial tcp: "
                                       "lookup registry-1.docker.io: no such host"},
            "error": "no such host"}]


def _pull_failure(image: str) -> str:
    with pytest.raises(ImagePullFailed) as caught:
        ensure_image(Engine(_Client(NO_HOST)), image, "missing")  # type: ignore[arg-type]
    return caught.value.message


def _never_failure(image: str) -> str:
    with pytest.raises(ImageNotFound) as caught:
        ensure_image(Engine(_Client([])), image, "never")  # type: ignore[arg-type]
    return caught.value.message


# ----------------------------------------------------------------------------- hints


@pytest.mark.parametrize("image", DEMO_IMAGES)
def test_a_missing_demo_image_points_at_the_build_not_at_a_registry(image: str) -> None:
    message = _pull_failure(image)
    assert message.startswith(f"pulling image {image!r} failed: Get ")  # the engine's reason
    hint = message.split("no such host. ", 1)[1]
    assert hint.startswith(f"{image!r} is one of the demo's images")
    assert "`llamaswap-docker serve` with no config builds the missing ones" in hint
    assert "`python3 images/build.py`" in hint
    assert "pullPolicy" not in hint and "registry" not in hint
    assert "llamaswap-docker serve" in _never_failure(image)


def test_a_missing_local_image_of_a_user_says_build_or_load_then_pull_policy_never() -> None:
    message = _pull_failure("me/my-server:local")
    assert "'me/my-server:local' names a local image, which no registry has" in message
    assert "`docker build -t me/my-server:local DIR`" in message
    assert "`docker load -i FILE`" in message
    assert message.endswith("set pullPolicy: never so that a missing image is reported rather "
                            "than pulled")


def test_a_remote_image_that_fails_to_pull_says_check_the_registry_or_build_or_load() -> None:
    message = _pull_failure("ghcr.io/me/server:1.2")
    assert "Check the image name and that the engine can reach (and is logged in to)" in message
    assert "`docker build -t ghcr.io/me/server:1.2 DIR`" in message
    assert message.endswith("`docker load -i FILE`) and set pullPolicy: never")


def test_pull_policy_never_says_how_to_get_the_image_and_offers_a_pull_only_when_one_can_work(
) -> None:
    remote = _never_failure("ghcr.io/me/server:1.2")
    assert remote.startswith("image 'ghcr.io/me/server:1.2' is not on the engine and pullPolicy "
                             "is 'never': build it (`docker build -t ghcr.io/me/server:1.2 DIR`)")
    assert remote.endswith(", or set pullPolicy: missing to pull it")
    local = _never_failure("me/my-server:local")
    assert "`docker load -i FILE`" in local and "pullPolicy: missing" not in local


@pytest.mark.parametrize(("image", "local"), [
    ("me/x:local", True), ("localhost/me/x", True), ("localhost/x:1", True),
    ("localhost:5000/x:local", True), ("localhost:5000/x:1", False), ("x", False),
    ("ghcr.io/me/x:1", False), ("me/x@sha256:abc", False),
])
def test_local_references_are_told_apart_from_registry_ones(image: str, local: bool) -> None:
    assert is_local_reference(image) is local


def test_the_hint_for_a_demo_image_differs_from_a_users() -> None:
    assert "demo" in missing_image_hint(LLAMA_SERVER)
    assert missing_image_hint("me/x:local").startswith("build it (`docker build -t me/x:local")


# ----------------------------------------------------------------------------- inputs hash


def _recipe(context: Path, **changes: object) -> Recipe:
    base = Rootfs("llamaswap/test-base:1", "bookworm", ("python3",))
    return Recipe("llamaswap/test:local", context, base, "python:3.11-slim", **changes)  # type: ignore[arg-type]


def _context(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_inputs_hash_depends_on_names_and_bytes_not_on_where_the_folder_lies(
    tmp_path: Path,
) -> None:
    one = _context(tmp_path / "a" / "ctx", {"Dockerfile": "FROM x\n", "app/server.py": "1"})
    two = _context(tmp_path / "b" / "ctx", {"Dockerfile": "FROM x\n", "app/server.py": "1"})
    assert inputs_hash(_recipe(one)) == inputs_hash(_recipe(two))
    (two / "app" / "server.py").write_text("2")
    assert inputs_hash(_recipe(one)) != inputs_hash(_recipe(two))
    renamed = _context(tmp_path / "c" / "ctx", {"Dockerfile": "FROM x\n", "app/main.py": "1"})
    assert inputs_hash(_recipe(one)) != inputs_hash(_recipe(renamed))


def test_generated_files_and_extra_inputs_count_and_caches_do_not(tmp_path: Path) -> None:
    context = _context(tmp_path / "ctx", {"Dockerfile": "FROM x\n"})
    model = _context(tmp_path / "gen", {"tiny.gguf": "weights"}) / "tiny.gguf"
    _context(tmp_path / "pkg", {"mod.py": "a = 1", "__pycache__/mod.pyc": "x"})
    plain = inputs_hash(_recipe(context))
    with_model = _recipe(context, generated=lambda: {"models/tiny.gguf": model})
    assert inputs_hash(with_model) != plain
    assert "models/tiny.gguf" in with_model.context_files()

    with_package = _recipe(context, extra_inputs={"pkg": tmp_path / "pkg"})
    before = inputs_hash(with_package)
    assert before != plain
    assert "mod.py" not in with_package.context_files()  # hashed, not sent
    (tmp_path / "pkg" / "__pycache__" / "mod.pyc").write_text("y")
    assert inputs_hash(with_package) == before
    (tmp_path / "pkg" / "mod.py").write_text("a = 2")
    assert inputs_hash(with_package) != before


def test_the_build_context_is_a_tar_of_the_files_owned_by_root_modes_kept(tmp_path: Path) -> None:
    context = _context(tmp_path / "ctx", {"Dockerfile": "FROM x\n", "bin/run.sh": "#!/bin/sh\n"})
    (context / "bin" / "run.sh").chmod(0o755)
    model = _context(tmp_path / "gen", {"tiny.gguf": "weights"}) / "tiny.gguf"
    files = _recipe(context, generated=lambda: {"models/tiny.gguf": model}).context_files()
    buffer = io.BytesIO()
    write_context(buffer, files)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as archive:
        members = {member.name: member for member in archive.getmembers()}
        assert sorted(members) == ["Dockerfile", "bin/run.sh", "models/tiny.gguf"]
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        assert members["bin/run.sh"].mode & 0o111
        extracted = archive.extractfile("models/tiny.gguf")
        assert extracted is not None and extracted.read() == b"weights"


# ----------------------------------------------------------------------------- progress


def test_progress_reads_as_one_line_per_event() -> None:
    assert BuildProgress(FAKE_UPSTREAM, "image up to date").line() == (
        f"{FAKE_UPSTREAM}: image up to date")
    assert BuildProgress(FAKE_UPSTREAM, "build step 5/8", "COPY server.py /app/server.py").line(
    ) == f"{FAKE_UPSTREAM}: build step 5/8 COPY server.py /app/server.py"


def test_debootstrap_reports_the_first_line_of_each_phase_not_each_package(
    tmp_path: Path,
) -> None:
    lines = ["I: Retrieving InRelease", "I: Retrieving libc6 2.36-9", "I: Validating libc6",
             "W: no key", "I: Retrieving bash 5.2", "I: Validating bash 5.2",
             "I: Extracting base-files...", "I: Extracting bash...", "I: Base system installed"]
    assert [debootstrap_phase(line) for line in lines] == [
        "Retrieving", "Retrieving", "Validating", None, "Retrieving", "Validating",
        "Extracting", "Extracting", "Base"]
    script = tmp_path / "fake-debootstrap"
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    script.chmod(0o755)
    seen: list[str] = []
    assert run_phases([str(script)], seen.append) is None
    assert seen == ["Retrieving InRelease", "Validating libc6", "Extracting base-files...",
                    "Base system installed"]
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'E: Failed getting release file'\nexit 1\n")
    failing.chmod(0o755)
    assert run_phases([str(failing)], seen.append) == "E: Failed getting release file"


# ----------------------------------------------------------------------------- shipped files


def test_the_demos_dockerfiles_ship_inside_the_package() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["llamaswap_docker"]
    package = REPO / "llamaswap_docker"
    recipes = demo_recipes(Path("/nonexistent"))
    assert [recipe.tag for recipe in recipes] == list(DEMO_IMAGES)
    for recipe in recipes:
        assert recipe.context.parent == DOCKERFILES and (recipe.context / "Dockerfile").is_file()
        for path in recipe.context.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                name = path.relative_to(package).as_posix()
                assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
