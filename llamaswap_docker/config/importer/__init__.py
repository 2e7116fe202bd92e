"""``config import``: a llama-swap ``config.yaml`` turned into one of this project's.

llama-swap starts each model as a host command (``cmd``) and reaches it at ``proxy``; here a
model is a container. Per model the command is read as llama-swap reads it (comment lines and
trailing backslashes dropped, macros substituted, split like a POSIX shell) and converted:

- ``docker run …`` / ``podman run …``: the image becomes ``image``, the words after it ``cmd``,
  and every flag its key here (``-v`` → ``volumes``, ``-p ${PORT}:N`` → ``port: N``, ``--gpus``
  → ``platform: cuda`` and ``gpus``, ``--shm-size`` → ``docker.shmSize``…); ``--name``,
  ``--rm``, ``-d``, ``--init``, the matching ``cmdStop: docker stop …`` and the local ``proxy``
  go. A flag with no meaning here leaves the model to a person, naming the flag.
- ``llama-server …`` (host or ``/app/llama-server``) → ``backend: llama.cpp``;
  ``vllm serve …`` → ``backend: vllm``: the program, ``--host`` and ``--port`` go (the preset
  sets them), the folders of the files it reads are mounted read-only at the same paths,
  ``-hf`` downloads go to a named cache volume. ``bash -c "… && exec SERVER …"`` and
  ``env K=V SERVER`` wrappers are unwrapped. The platform comes from the command (``--gpus``,
  ``/dev/kfd``, a Vulkan/ROCm/CUDA build in the program's path, ``CUDA_VISIBLE_DEVICES``…),
  else ``--platform``, else ``cpu`` with a note.
- ``docker compose``, scripts, Windows paths and servers with no preset are left to a person:
  the model is commented out where it was, with why and what to do.

The file is edited in place with ruamel.yaml's round trip, so comments, key order, quoting
and macros stay. A macro the conversion changes (``${server}`` holding ``llama-server --port
${PORT} -ngl 99``) is rewritten where it is defined when every converted model that uses it
changes it alike, and inlined into the models otherwise. The result is loaded with this
project's loader before it is returned: a model it refuses is left out with the loader's
message, a kept key it refuses is commented out, so the output always loads.

Pure: no Docker, no network; reads no file (``import_config`` takes the text).

    words.py       a command's words, tied to where they are written; the text written back
    macros.py      macros as llama-swap substitutes them; which to rewrite where defined
    command.py     which program a model's ``cmd`` runs (wrappers unwrapped), or why not
    docker_run.py  ``docker run`` / ``podman run`` flags → image, cmd and this project's keys
    servers.py     bare ``llama-server`` / ``vllm serve`` → backend, platform, mounts
    plan.py        what to do with one model
    yamledit.py    ruamel.yaml round-trip edits: comment out, delete, notes
    convert.py     the whole file: plan, write, check with the loader, repeat
    report.py      what became of each model
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ...errors import ConfigError
from ..backends import PLATFORMS
from .convert import Import
from .report import ImportResult, ModelReport
from .servers import LLAMA_CPP_CACHE_VOLUME

__all__ = ["LLAMA_CPP_CACHE_VOLUME", "ImportResult", "ModelReport", "import_config"]


def import_config(
    text: str,
    *,
    source: str = "<string>",
    platform: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ImportResult:
    """Convert a llama-swap config (its YAML text) into one of this project's.

    Args:
        source: the file's name, for messages.
        platform: the platform for servers whose command does not say (cpu, cuda, rocm,
            vulkan, intel, musa); None: ``cpu``, with a note.
        base_dir: where the output will live: relative paths resolve against it, as the
            loader resolves them (default: the working directory).
        environ: the environment ``${env.X}`` reads while converting (default ``os.environ``).

    Raises:
        ConfigError: the text is not YAML, not a mapping, or has no ``models``.
    """
    if platform is not None and platform not in PLATFORMS:
        raise ConfigError(f"unknown platform {platform!r}: use one of {', '.join(PLATFORMS)}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    job = Import(text, source, platform, base, os.environ if environ is None else environ)
    return job.run()
