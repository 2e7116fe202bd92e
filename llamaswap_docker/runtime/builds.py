"""Build images from Dockerfiles on the engine: each only when its inputs changed, with progress.

A ``Recipe`` names an image, the folder holding its Dockerfile and two bases for its
``ARG BASE_IMAGE``: a public one (``python:3.11-slim``) and a ``Rootfs`` that ``debootstrap``
makes from Debian's mirror and the engine imports, for machines whose engine reaches no
registry. ``ensure_images`` builds each recipe whose image is missing or was built from other
inputs (a label on the image holds their hash), and reports what it does as ``BuildProgress``
events: the steps of the build, debootstrap's phases, the pull of a public base.

Where the base comes from (``source``):

* ``local``: the ``Rootfs`` image, made with debootstrap when missing (root and the
  ``debootstrap`` package needed);
* ``registry``: the public base, pulled (a newer one replaces the engine's);
* ``auto``: whichever base the engine already has, else the public one if a registry answers,
  else the ``Rootfs``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from loguru import logger

from llamaswap_docker.errors import EngineError, ImagePullFailed, LlamaswapError
from llamaswap_docker.runtime.engine import Engine, translate_errors
from llamaswap_docker.runtime.images import PullProgress, image_labels, pull_image

__all__ = [
    "INPUTS_LABEL",
    "BuildProgress",
    "ImageSource",
    "Recipe",
    "Rootfs",
    "debian_mirror",
    "debootstrap_phase",
    "ensure_images",
    "inputs_hash",
    "log_progress",
    "run_phases",
    "write_context",
]

ImageSource = Literal["auto", "local", "registry"]

#: Label holding the hash of what an image was built from: a changed input means a rebuild.
INPUTS_LABEL = "io.llamaswap.build-inputs"

#: Seconds a build may stay silent before the engine counts as stuck (a compile step prints
#: nothing for minutes; docker-py's default of 60 s would cut it).
_BUILD_READ_TIMEOUT_S = 600

# Paths left out of imported root filesystems: kernel filesystems and what no server reads.
_ROOTFS_EXCLUDES = (
    "./proc/*", "./sys/*", "./dev/*", "./run/*", "./tmp/*",
    "./usr/share/doc/*", "./usr/share/man/*", "./usr/share/info/*", "./usr/share/locale/*",
    "./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*", "./var/log/*",
)

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


@dataclass(frozen=True)
class Rootfs:
    """A base image made by debootstrap: a Debian suite with a few packages."""

    tag: str
    suite: str
    packages: tuple[str, ...]
    #: debootstrap has no script for every suite (forky): the one to use instead (sid's).
    script: str | None = None


@dataclass(frozen=True)
class Recipe:
    """An image built from a folder holding its Dockerfile (which takes ``ARG BASE_IMAGE``)."""

    tag: str
    context: Path
    local_base: Rootfs
    registry_base: str
    #: Files added to the context at build time (name in the context → file), made on demand:
    #: the demo's tiny model, which the llama-server image carries.
    generated: Callable[[], Mapping[str, Path]] | None = None
    #: Inputs outside the context (name → file or folder), hashed but not sent: the package
    #: the proxy image installs.
    extra_inputs: Mapping[str, Path] = field(default_factory=dict)
    #: Files made right before a build (never for an image that is up to date), in the scratch
    #: folder it is given (name in the context → file): sent, not hashed, as they are made from
    #: hashed inputs. The proxy's wheelhouse, built from the package.
    prepare: Callable[[Path], Mapping[str, Path]] | None = None

    def context_files(self) -> dict[str, Path]:
        """What the build sees: name in the context → file on this machine."""
        files = {
            path.relative_to(self.context).as_posix(): path
            for path in self.context.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        if self.generated is not None:
            files.update(self.generated())
        return files


@dataclass(frozen=True)
class BuildProgress:
    """One thing a build did: ``event`` is a short phrase, ``detail`` what it concerns."""

    image: str
    event: str
    detail: str = ""
    #: The share of this image's build done, when known (its Dockerfile steps, a base's pull).
    fraction: float | None = None

    def line(self) -> str:
        """One human line: ``llamaswap/x:local: build step 5/8 COPY server.py /app/server.py``."""
        return f"{self.image}: {self.event}" + (f" {self.detail}" if self.detail else "")


def log_progress(progress: BuildProgress) -> None:
    """The default reporter: one structured log line per event."""
    fields: dict[str, Any] = {"image": progress.image}
    if progress.detail:
        fields["detail"] = progress.detail
    logger.bind(**fields).info(progress.event)


def inputs_hash(recipe: Recipe, files: Mapping[str, Path] | None = None) -> str:
    """Hash of what ``recipe``'s image is built from: its context and its extra inputs, each
    file by name and bytes.

    Names are ``<context folder>/<path>`` and ``<extra input>/<path>``: the hash does not depend
    on where the files lie on this machine.
    """
    files = recipe.context_files() if files is None else files
    digest = hashlib.sha256()
    prefix = recipe.context.name
    for name in sorted(files, key=PurePosixPath):
        digest.update(f"{prefix}/{name}".encode())
        digest.update(files[name].read_bytes())
    for name, root in recipe.extra_inputs.items():
        paths = [root] if root.is_file() else sorted(
            path for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts)
        for path in paths:
            relative = name if path == root else f"{name}/{path.relative_to(root).as_posix()}"
            digest.update(relative.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_images(
    engine: Engine,
    recipes: tuple[Recipe, ...],
    *,
    source: ImageSource = "auto",
    force: bool = False,
    labels: Mapping[str, str] | None = None,
    on_progress: Callable[[BuildProgress], None] = log_progress,
) -> list[str]:
    """Build each recipe's image (and its base) unless it is up to date; return the tags made.

    Up to date: the image exists and its ``INPUTS_LABEL`` matches its inputs now, so an edited
    Dockerfile or fake server is rebuilt instead of silently used as it was. Blocking: call it
    from a worker thread or the CLI.

    Args:
        source: where a missing base comes from (see the module's docstring).
        force: rebuild the images even when up to date (bases are kept).
        labels: more labels for the images built.

    Raises:
        LlamaswapError: a base could be neither pulled nor made, or a build failed; the
            message says what to do.
    """
    made: list[str] = []
    for recipe in recipes:
        files = recipe.context_files()
        digest = inputs_hash(recipe, files)
        if not force and _built_from(engine, recipe.tag) == digest:
            on_progress(BuildProgress(recipe.tag, "image up to date"))
            continue
        base, bases_made = _base(engine, recipe, source, on_progress)
        made += bases_made
        # A scratch folder of its own: two builds at once (two test runs) share no files.
        with tempfile.TemporaryDirectory(prefix="llamaswap-build-") as scratch:
            if recipe.prepare is not None:
                files = {**files, **recipe.prepare(Path(scratch))}
            _build(engine, recipe, base, files, {**(labels or {}), INPUTS_LABEL: digest},
                   on_progress)
        made.append(recipe.tag)
    return made


def _built_from(engine: Engine, tag: str) -> str | None:
    """The inputs hash ``tag`` was built from (None: no such image, or not built by us)."""
    labels = image_labels(engine, tag)
    return None if labels is None else labels.get(INPUTS_LABEL)


def _present(engine: Engine, tag: str) -> bool:
    return image_labels(engine, tag) is not None


def _base(engine: Engine, recipe: Recipe, source: ImageSource,
          on_progress: Callable[[BuildProgress], None]) -> tuple[str, list[str]]:
    """The base to build ``recipe`` on, made present now; and the bases made for it."""
    local, public = recipe.local_base, recipe.registry_base
    if source == "registry":
        try:
            _pull(engine, public, on_progress)  # a newer base replaces the engine's
        except ImagePullFailed as exc:
            raise LlamaswapError(
                f"{exc.message}: it is the base of {recipe.tag}. Without a registry, build on "
                f"Debian bases that debootstrap makes: --source local (or auto)") from exc
        return public, []
    if _present(engine, local.tag):
        return local.tag, []
    if source == "local":
        _debootstrap(engine, local, on_progress)
        return local.tag, [local.tag]
    if _present(engine, public):
        return public, []
    try:
        _pull(engine, public, on_progress)
    except ImagePullFailed as exc:
        # No registry answers (an offline or firewalled engine): the same base from Debian's
        # mirror, which such machines usually still reach.
        logger.bind(image=public).debug("base pull failed: {}", exc.message)
        on_progress(BuildProgress(public, "base image not pulled",
                                  f"no registry answers: making {local.tag} instead"))
        _debootstrap(engine, local, on_progress)
        return local.tag, [local.tag]
    return public, []


def _pull(engine: Engine, image: str, on_progress: Callable[[BuildProgress], None]) -> None:
    reported = 0  # tenths of the pull reported; 0: the line before it started

    def on_pull(event: PullProgress) -> None:
        nonlocal reported
        tenth = int((event.fraction or 0.0) * 10)
        if tenth > reported:  # every 10 %: a line, not one per layer event
            reported = tenth
            on_progress(BuildProgress(image, "pulling base image", f"{tenth * 10}%",
                                      event.fraction))

    on_progress(BuildProgress(image, "pulling base image"))
    pull_image(engine, image, on_pull)


def _debootstrap(engine: Engine, spec: Rootfs, on_progress: Callable[[BuildProgress], None]) -> None:
    """debootstrap a minimal root filesystem and import it as ``spec.tag``."""
    if shutil.which("debootstrap") is None:
        raise LlamaswapError(
            f"making the base image {spec.tag} needs debootstrap, which is not installed: "
            "`apt-get install -y debootstrap`, or let the Docker engine reach a registry "
            "(then public bases are pulled)")
    if os.geteuid() != 0:
        raise LlamaswapError(
            f"making the base image {spec.tag} with debootstrap needs root: run this once as "
            "root (the base is kept for later runs), or let the Docker engine reach a registry "
            "(then public bases are pulled)")
    mirror = debian_mirror()
    started = time.monotonic()
    on_progress(BuildProgress(spec.tag, "making base image with debootstrap",
                              f"suite={spec.suite} packages={','.join(spec.packages)} "
                              f"mirror={mirror} (a minute or two)"))
    with tempfile.TemporaryDirectory(prefix="llamaswap-rootfs-") as tmp:
        root = Path(tmp) / "root"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(spec.packages)}",
                   spec.suite, str(root), mirror]
        if spec.script:
            command.append(spec.script)
        tail = run_phases(command, lambda phase: on_progress(
            BuildProgress(spec.tag, "debootstrap", phase)))
        if tail is not None:
            raise LlamaswapError(f"debootstrap failed for {spec.tag}:\n{tail}")
        archive = Path(tmp) / "rootfs.tar"
        excludes = [f"--exclude={pattern}" for pattern in _ROOTFS_EXCLUDES]
        subprocess.run(["tar", "-C", str(root), *excludes, "-cf", str(archive), "."], check=True)
        repository, tag = spec.tag.rsplit(":", 1)
        engine.run_sync(f"importing {spec.tag}", engine.client.api.import_image_from_file,
                        str(archive), repository=repository, tag=tag,
                        changes=["ENV LANG=C.UTF-8"])
    on_progress(BuildProgress(spec.tag, "made base image",
                              f"in {time.monotonic() - started:.0f}s", 1.0))


def run_phases(command: list[str], on_phase: Callable[[str], None]) -> str | None:
    """Run debootstrap, reporting the first line of each phase of its ``I: …`` lines (not
    each package); return None when it succeeded, else the last lines of its output."""
    lines: list[str] = []
    phases: set[str] = set()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            del lines[:-20]
            phase = debootstrap_phase(line)
            if phase is not None and phase not in phases:
                phases.add(phase)
                on_phase(line.strip()[3:])
    return None if process.returncode == 0 else "\n".join(lines)


def debootstrap_phase(line: str) -> str | None:
    """The phase a debootstrap ``I: Retrieving libc6 2.36-9`` line belongs to (its verb)."""
    if not line.startswith("I: "):
        return None
    words = line[3:].split()
    return words[0] if words else None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (debootstrap needs one)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
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


def _build(engine: Engine, recipe: Recipe, base: str, files: Mapping[str, Path],
           labels: Mapping[str, str], on_progress: Callable[[BuildProgress], None]) -> None:
    started = time.monotonic()
    on_progress(BuildProgress(recipe.tag, "building image",
                              f"from {recipe.context.name}/ on {base}", 0.0))
    tail: list[str] = []
    with tempfile.TemporaryFile() as context:
        write_context(context, files)
        context.seek(0)
        with translate_errors(f"building {recipe.tag}"):
            stream = engine.client.api.build(
                fileobj=context, custom_context=True, tag=recipe.tag,
                buildargs={"BASE_IMAGE": base}, labels=dict(labels), pull=False,
                rm=True, forcerm=True, decode=True, timeout=_BUILD_READ_TIMEOUT_S)
            for chunk in stream:
                if "error" in chunk:
                    reason = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                    raise EngineError(f"building {recipe.tag} failed: {reason.strip()}\n"
                                      + "".join(tail)[-3000:])
                text = chunk.get("stream", "")
                if not text:
                    continue
                tail.append(text)
                del tail[:-40]
                step = _STEP.match(text.strip())
                if step:
                    number, total, instruction = int(step[1]), int(step[2]), step[3]
                    on_progress(BuildProgress(recipe.tag, f"build step {number}/{total}",
                                              " ".join(instruction.split())[:100],
                                              (number - 1) / total))
    on_progress(BuildProgress(recipe.tag, "built image",
                              f"in {time.monotonic() - started:.0f}s", 1.0))


def write_context(target: IO[bytes], files: Mapping[str, Path]) -> None:
    """A build context: ``files`` as a tar stream, owned by root (as ``docker build`` sends)."""
    with tarfile.open(fileobj=target, mode="w") as archive:
        for name in sorted(files, key=PurePosixPath):
            info = archive.gettarinfo(str(files[name]), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(files[name], "rb") as handle:
                archive.addfile(info, handle)
