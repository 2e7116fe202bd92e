"""What a llama-swap config means here: telling one apart, and saying what to change.

llama-swap starts a model as a host command (``cmd``); here a model is a container image whose
command ``cmd`` is. Most llama-swap files therefore fail on every model at once, for the same
reason, and the first thing to say is that the file is llama-swap's and that
``llamaswap-docker config import`` converts it (``llama_swap_hint``). The loader words the
missing ``image`` with ``MISSING_IMAGE`` and asks ``cmd_warnings`` about commands that start
with a host path a container is unlikely to hold.

``LLAMA_SWAP_KEYS`` lists llama-swap's own keys per level (its ``config.example.yaml``), so that
an unknown key is told apart from a llama-swap one this project does not take.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from .backends import BACKENDS, PLATFORMS
from .schema import Config, Loc, ModelConfig

__all__ = [
    "HINT_ERRORS_SHOWN",
    "LLAMA_SWAP_KEYS",
    "MISSING_IMAGE",
    "cmd_warnings",
    "llama_swap_hint",
    "llama_swap_models",
]

#: Errors shown under the "looks like a llama-swap config" line (the rest are counted).
HINT_ERRORS_SHOWN = 5

_PRESETS = " or ".join(f"`backend: {b}`" for b in BACKENDS if b != "custom")
#: The message of a model without ``image`` (and without a ``backend`` preset to give one).
MISSING_IMAGE = (
    "missing required field 'image': each model here runs in a container. Set "
    f"{_PRESETS} (with `platform: {', '.join(PLATFORMS)}`) for the official image, or `image` "
    "to one of your own; `cmd` then becomes the image's arguments (the server's flags, without "
    "the program), and the model files must be mounted into it with `volumes`"
)

#: llama-swap's keys by where they are written: the top level, and one model. ``config import``
#: keeps these and comments out any key that is neither one of them nor this project's.
LLAMA_SWAP_KEYS: dict[str, frozenset[str]] = {
    "top": frozenset({
        "healthCheckTimeout", "logRequests", "logLevel", "logTimeFormat", "logToStdout",
        "metricsMaxInMemory", "captureBuffer", "store", "ui", "performance", "startPort",
        "sendLoadingState", "includeAliasesInList", "globalTTL", "unloadTimeout", "macros",
        "apiKeys", "upstream", "profiles", "selectors", "models", "hooks", "routing", "groups",
        "matrix", "peers",
    }),
    "model": frozenset({
        "macros", "cmd", "cmdStop", "proxy", "name", "description", "env", "checkEndpoint",
        "ttl", "unloadTimeout", "compat", "useModelName", "filters", "aliases", "metadata",
        "concurrencyLimit", "sendLoadingState", "timeouts", "capabilities", "unlisted",
        "healthCheckTimeout",
    }),
}

#: Host folders a container image does not hold: a program there is the host's.
_HOST_TREES = ("/home/", "/Users/", "/root/", "/mnt/", "/media/", "/srv/", "/opt/", "/tmp/",
               "/usr/local/", "/var/home/", "/data/", "/storage/")
#: ``C:\llama\llama-server.exe`` (its backslashes are gone once ``cmd`` is split as a shell
#: would split it, hence the drive letter alone), or any ``.exe``.
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:|\.exe$", re.IGNORECASE)


def llama_swap_models(data: Any) -> list[str]:
    """Ids of the models written as llama-swap writes them (a ``cmd``, no ``image`` or
    ``backend``), when no model of the file has an image; else none."""
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return []
    entries = {model_id: entry for model_id, entry in models.items() if isinstance(entry, dict)}
    if any("image" in entry or "backend" in entry for entry in entries.values()):
        return []
    return [str(model_id) for model_id, entry in entries.items() if "cmd" in entry]


def llama_swap_hint(data: Any, source: str) -> str | None:
    """The first line to show for a file that failed to load and looks like llama-swap's."""
    if not llama_swap_models(data):
        return None
    return f"{source} looks like a llama-swap config: run 'llamaswap-docker config import {source}'"


def cmd_warnings(config: Config) -> list[tuple[Loc, str]]:
    """``(location, message)`` for each model whose ``cmd`` starts with a host path that its
    image is unlikely to hold (``cmd`` runs inside the container)."""
    warnings: list[tuple[Loc, str]] = []
    for model_id, model in config.models.items():
        message = _host_program(model)
        if message:
            warnings.append((("models", model_id, "cmd"), message))
    return warnings


def _host_program(model: ModelConfig) -> str | None:
    if not model.cmd:
        return None
    program = model.cmd[0]
    if _WINDOWS_PATH.search(program):
        return (f"cmd starts with {program!r}, a Windows program: `cmd` runs inside a Linux "
                "container. Use an image with the server (or `backend: llama.cpp` / `vllm`, "
                "whose `cmd` is only the server's arguments)")
    if not program.startswith("/") or any(
            posixpath.normpath(program).startswith(mount.target.rstrip("/") + "/")
            for mount in model.volume_mounts):
        return None  # the image's own program, or one the user mounted into it
    if model.backend == "llama.cpp":
        # The image's entrypoint is llama-server: cmd is its arguments, a path is not one.
        return (f"cmd starts with {program!r}, but the llama.cpp image's entrypoint already "
                "is llama-server and `cmd` is only its arguments (it runs inside the "
                "container): drop the program and keep the flags")
    if not program.startswith(_HOST_TREES):
        return None
    name = posixpath.basename(program)
    return (f"cmd starts with {program!r}, a host path that the image {model.image!r} is unlikely "
            f"to hold: `cmd` runs inside the container. Use an image that has {name!r} (or "
            "`backend: llama.cpp` / `vllm`, whose `cmd` is only the server's arguments), or "
            "mount the program's folder with `volumes`")
