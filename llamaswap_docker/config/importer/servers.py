"""A bare ``llama-server`` or ``vllm serve`` command → a ``backend`` preset, its platform and
the host folders it reads.

The program, ``--host`` and ``--port`` go (the preset sets them); every other flag stays in
``cmd``. The folders of the files the server reads are mounted at the same paths (read-only
unless it writes there), ``-hf`` downloads go to a named cache volume. The platform comes from
the command (a Vulkan/ROCm/CUDA build in the program's path, ``--device``, visible-devices and
stack-specific variables), else ``--platform``, else ``cpu`` with a note; a visible-devices
variable becomes ``gpus``.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import TYPE_CHECKING

from ..backends import PLATFORMS
from .words import WINDOWS_PATH, Word, basename

if TYPE_CHECKING:
    from .command import Command

__all__ = ["LLAMA_CPP_CACHE_VOLUME", "Server"]

#: Named volume where ``-hf`` downloads are kept across containers. Mounted at ``/root/.cache``
#: (the llama.cpp images run as root): llama-server keeps them under ``~/.cache/llama.cpp``,
#: newer builds under the Hugging Face cache ``~/.cache/huggingface``; both live there.
LLAMA_CPP_CACHE_VOLUME = "llamaswap-llama-cache"
_LLAMA_CPP_CACHE_TARGET = "/root/.cache"

#: Variables a host binary needed that would break the program inside an image.
_HOST_ONLY_ENV = {"PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "DYLD_LIBRARY_PATH", "PYTHONPATH",
                  "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "HOME"}
#: Host folders too wide to mount whole for one file in them: the file is mounted instead.
_WIDE_FOLDERS = {"/", "/home", "/root", "/usr", "/usr/local", "/usr/share", "/etc", "/var",
                 "/opt", "/mnt", "/media", "/srv", "/tmp", "/run", "/data", "/bin", "/lib"}
#: Visible-devices variables: which platform each selects GPUs for.
_VISIBLE_DEVICES = {"CUDA_VISIBLE_DEVICES": "cuda", "HIP_VISIBLE_DEVICES": "rocm",
                    "ROCR_VISIBLE_DEVICES": "rocm", "GGML_VK_VISIBLE_DEVICES": "vulkan"}
#: Variables only one GPU stack reads (``GGML_CUDA_FORCE_MMQ``, ``HSA_OVERRIDE_GFX_VERSION``).
_ENV_PLATFORMS = (("GGML_CUDA_", "cuda"), ("CUDA_", "cuda"), ("HSA_", "rocm"), ("HIP_", "rocm"),
                  ("ROCR_", "rocm"), ("GGML_HIP_", "rocm"), ("GGML_VK_", "vulkan"),
                  ("ONEAPI_", "intel"), ("SYCL_", "intel"), ("MTHREADS_", "musa"),
                  ("MUSA_", "musa"))
#: Build names in a server's path, and the platform each is.
_BUILD_NAMES = (("vulkan", "vulkan"), ("rocm", "rocm"), ("hip", "rocm"), ("cuda", "cuda"),
                ("sycl", "intel"), ("musa", "musa"))
#: llama-server ``--device`` names (``CUDA0``, ``Vulkan1``…) by prefix.
_LLAMA_DEVICES = (("cuda", "cuda"), ("rocm", "rocm"), ("vulkan", "vulkan"), ("sycl", "intel"),
                  ("musa", "musa"))

#: llama-server flags whose value is a path: "file" (its folder is mounted read-only),
#: "dir" (mounted itself), "out-file"/"out-dir" (the same, writable).
_LLAMA_PATH_FLAGS = {
    **dict.fromkeys(["-m", "--model", "-mm", "--mmproj", "-md", "--model-draft", "--lora",
                     "--lora-scaled", "--control-vector", "--control-vector-scaled",
                     "--chat-template-file", "--grammar-file", "--json-schema-file", "-mv",
                     "--model-vocoder", "--ssl-key-file", "--ssl-cert-file", "--api-key-file",
                     "-lcs", "--lookup-cache-static", "-jf"], "file"),
    **dict.fromkeys(["--path", "--models-dir"], "dir"),
    **dict.fromkeys(["--slot-save-path"], "out-dir"),
    **dict.fromkeys(["--log-file", "-lcd", "--lookup-cache-dynamic", "--prompt-cache"], "out-file"),
}
_LLAMA_HF_FLAGS = {"-hf", "-hfr", "--hf-repo", "-hfd", "-hfrd", "--hf-repo-draft", "-hfv",
                   "-hfrv", "--hf-repo-v", "-mu", "--model-url"}
_LLAMA_GPU_FLAGS = {"-ngl", "--n-gpu-layers", "--gpu-layers", "-ngld", "--n-gpu-layers-draft",
                    "--gpu-layers-draft", "-sm", "--split-mode", "-ts", "--tensor-split", "-mg",
                    "--main-gpu"}
_VLLM_PATH_FLAGS = {
    "--model": "dir", "--tokenizer": "dir", "--chat-template": "file",
    "--reasoning-parser-plugin": "file", "--tool-parser-plugin": "file",
    "--download-dir": "out-dir", "--allowed-local-media-path": "dir",
}


def _flag_at(args: list[Word], i: int) -> tuple[Word, str, str, str, Word | None]:
    """The word at ``i`` as ``flag=inline`` parts, and the word after a flag written without
    ``=`` (its value, if it takes one)."""
    word = args[i]
    flag, eq, inline = word.text.partition("=")
    value_word = None
    if flag.startswith("-") and not eq and i + 1 < len(args):
        value_word = args[i + 1]
    return word, flag, eq, inline, value_word


class Server:
    """Converts one bare server command into its backend preset (fills the command's plan)."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.plan = command.plan
        self.macros = command.macros
        self.opts = command.opts

    def llama_server(self, prog: str, args: list[Word]) -> None:
        plan = self.plan
        mounts = self._start("llama.cpp", "llama-server")
        if mounts is None:
            return
        hints = [platform for name, platform in _BUILD_NAMES if name in prog.lower()][:1]
        gpu_flags: list[str] = []
        hf = False
        i = 0
        while i < len(args):
            word, flag, eq, inline, value_word = _flag_at(args, i)
            value = inline if eq else (value_word.text if value_word else "")
            if flag in ("--host", "--port"):
                i += self._drop_listen(word, value_word)
            elif flag in _LLAMA_PATH_FLAGS and (eq or value_word is not None):
                if not mounts.add(word, value_word, flag, eq, inline, _LLAMA_PATH_FLAGS[flag]):
                    return
                i += 0 if eq else 1
            elif flag in _LLAMA_HF_FLAGS:
                hf = True
                i += 0 if eq else 1
            elif flag in _LLAMA_GPU_FLAGS:
                if value.strip() not in ("0", ""):
                    gpu_flags.append(flag)
                i += 0 if eq else 1
            elif flag in ("--device", "-dev"):
                for name, platform in _LLAMA_DEVICES:
                    if value.lower().startswith(name):
                        hints.append(platform)
                        break
                i += 0 if eq else 1
            elif word.text.startswith("/") or (flag.startswith("-") and inline.startswith("/")):
                if not mounts.add(word, None, flag if eq else "", eq, inline, "file",
                                  generic=True):
                    return
            i += 1
        self._place(hints, gpu_flags, basename(prog))
        if hf:
            plan.tail.setdefault("volumes", []).append(
                f"{LLAMA_CPP_CACHE_VOLUME}:{_LLAMA_CPP_CACHE_TARGET}")
        if prog.startswith("/app/") and mounts.items:
            plan.note(f"{prog} is llama-swap's container image: the model files' paths were "
                      "paths inside that container, mounted here from the same host paths; "
                      "set the host side of `volumes` to what you mounted into llama-swap")
        mounts.write()

    def vllm(self, args: list[Word]) -> None:
        mounts = self._start("vllm", "vLLM")
        if mounts is None:
            return
        hints: list[str] = []
        i = 0
        positional_done = False
        while i < len(args):
            word, flag, eq, inline, value_word = _flag_at(args, i)
            if not word.text.startswith("-"):
                if not positional_done:
                    positional_done = True
                    if word.text.startswith("/") or word.text.startswith(("./", "../", "~")):
                        if not mounts.add(word, None, "", "", "", "dir", positional=True):
                            return
                i += 1
                continue
            if flag in ("--host", "--port"):
                i += self._drop_listen(word, value_word)
            elif flag in _VLLM_PATH_FLAGS and (eq or value_word is not None):
                value = inline if eq else value_word.text  # type: ignore[union-attr]
                if value.startswith(("/", "./", "../", "~")) and value != "/":
                    if not mounts.add(word, value_word, flag, eq, inline, _VLLM_PATH_FLAGS[flag]):
                        return
                i += 0 if eq else 1
            elif flag == "--lora-modules":
                j = i + 1
                while j < len(args) and not args[j].text.startswith("-"):
                    _, sep, path = args[j].text.partition("=")
                    if sep and path.startswith("/"):
                        mounts.add_path(path, path, "dir")
                    j += 1
                i = j - 1
            elif value_word is not None and not value_word.text.startswith("-"):
                i += 1
            i += 1
        self._place(hints, [], "vllm")
        mounts.write()

    # -- both servers ----------------------------------------------------------------------

    def _start(self, backend: str, server: str) -> _Mounts | None:
        """The preset, when the command serves the model here (None: left to a person)."""
        if not self._check_proxy(server):
            return None
        self.plan.head["backend"] = backend
        return _Mounts(self)

    def _drop_listen(self, word: Word, value_word: Word | None) -> int:
        """``--host``/``--port`` go (the preset sets them). Returns the value words taken."""
        self.plan.edits[id(word)] = None
        if value_word is None:
            return 0
        self.plan.edits[id(value_word)] = None
        return 1

    def _place(self, hints: list[str], gpu_flags: list[str], program: str) -> None:
        """The platform, and the GPUs its visible-devices variable names."""
        env = self._server_env(hints)
        platform = self._platform(hints, gpu_flags, program)
        self._gpus_from_env(platform, env)

    def _check_proxy(self, server: str) -> bool:
        """A proxy elsewhere than this host means the command does not serve the model here."""
        if self.command.proxy_is_local():
            self.plan.drop["proxy"] = None
            return True
        self.plan.person(f"its `proxy` is {self.command.model.get('proxy')!r}, another host: "
                         f"{server} here does not serve what the proxy there answers",
                         "declare that host as a peer (`peers:`), or point the model at a server "
                         "this host runs")
        return False

    def _server_env(self, platform_hint: list[str]) -> dict[str, str]:
        """The host server's variables, minus host-only ones (noted); the visible-devices
        variable of the platform is left for ``_gpus_from_env``."""
        plan = self.plan
        prefix_env = self.command.prefix_env
        env = {**self.command.model_env(), **prefix_env}
        for key in list(env):
            if key in _HOST_ONLY_ENV:
                plan.env_drop.add(key)
                plan.note(f"env {key} dropped: it pointed the host program at host folders, "
                          "which the image does not have")
        for key, value in prefix_env.items():
            plan.env_set[key] = value
        for key, platform in _VISIBLE_DEVICES.items():
            if key in env and env[key].strip() not in ("", "-1"):
                platform_hint.append(platform)
        for key in env:
            for prefix, platform in _ENV_PLATFORMS:
                if key.startswith(prefix):
                    platform_hint.append(platform)
        return env

    def _platform(self, hints: list[str], gpu_flags: list[str], program: str) -> str:
        plan = self.plan
        if hints:
            platform = hints[0]
            plan.head["platform"] = platform
            return platform
        if self.opts.platform:
            if self.opts.platform != "cpu":
                plan.head["platform"] = self.opts.platform
            return self.opts.platform
        why = f" (although {gpu_flags[0]} asks for GPU layers)" if gpu_flags else ""
        plan.note(f"platform cpu: nothing in the command of {program} names a GPU platform{why}; "
                  f"import with --platform {'|'.join(p for p in PLATFORMS if p != 'cpu')} "
                  "to choose one")
        return "cpu"

    def _gpus_from_env(self, platform: str, env: dict[str, str]) -> None:
        plan = self.plan
        for key, kind in _VISIBLE_DEVICES.items():
            if kind != platform or key not in env:
                continue
            value = self.macros.expand(env[key], record=False).strip()
            ids = [part.strip() for part in value.split(",") if part.strip()]
            if not ids or not all(re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$", i) for i in ids):
                return
            plan.env_drop.add(key)
            plan.env_set.pop(key, None)
            plan.head["gpus"] = [int(i) if i.isdigit() else i for i in ids]
            short = [i for i in ids if i.startswith("GPU-") and len(i) < 40]
            if short:
                plan.note(f"gpus {', '.join(short)} taken from {key}: a shortened GPU UUID, which "
                          "CUDA accepts but a device request may not; write the whole UUID "
                          "(nvidia-smi -L)")
            return


class _Mounts:
    """Host folders a bare server reads, to be mounted at the same paths."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.items: list[tuple[str, str, bool]] = []  # (host path, as written, writable)

    def add(self, word: Word, value_word: Word | None, flag: str, eq: str, inline: str,
            kind: str, generic: bool = False, positional: bool = False) -> bool:
        plan = self.server.plan
        target = word if (eq or positional or generic and not flag) else value_word
        if target is None:
            return True
        text = inline if eq else target.text
        raw = target.raw.split("=", 1)[1] if eq and "=" in target.raw else target.raw
        if WINDOWS_PATH.search(text) and not text.startswith("/"):
            plan.person(f"{flag or 'an argument'} names '{text}', a Windows path",
                        "run the model on a Linux Docker host and give the file's Linux path")
            return False
        path = text
        if not text.startswith("/") and not text.startswith("${"):
            if text.startswith("~"):
                path = os.path.expanduser(text)
                plan.note(f"{text!r} expanded to {path!r} (llama-swap runs no shell: check it)")
            else:
                path = os.path.normpath(os.path.join(self.server.opts.base, text))
                plan.note(f"{text!r} is relative to where llama-swap ran: taken as {path!r} (the "
                          "output's folder); check it")
            raw = path
            new = f"{flag}={path}" if eq else path
            plan.edits[id(target)] = new
        if generic:
            plan.note(f"{text!r} in the arguments is mounted read-only at the same path")
        self.add_path(path, raw, kind)
        return True

    def add_path(self, path: str, raw: str, kind: str) -> None:
        writable = kind.startswith("out-")
        if kind.endswith("dir") or path.endswith("/"):
            folder, raw_folder = path.rstrip("/") or "/", raw.rstrip("/") or "/"
        else:
            folder, raw_folder = posixpath.dirname(path), posixpath.dirname(raw)
            if folder in _WIDE_FOLDERS:
                folder, raw_folder = path, raw
            elif self.server.macros.expand(raw_folder, record=False) != folder:
                raw_folder = folder
        if not folder or folder == "/":
            return
        self.items.append((folder, raw_folder or folder, writable))

    def write(self) -> None:
        plan = self.server.plan
        kept: list[tuple[str, str, bool]] = []
        for folder, raw, writable in self.items:
            inside = [k for k in kept if k[2] >= writable and
                      (folder == k[0] or folder.startswith(k[0].rstrip("/") + "/"))]
            if inside:
                continue
            kept = [k for k in kept if not (writable >= k[2] and
                    (k[0] == folder or k[0].startswith(folder.rstrip("/") + "/")))]
            kept.append((folder, raw, writable))
        if kept:
            volumes = plan.tail.setdefault("volumes", [])
            volumes += [f"{raw}:{raw}" + ("" if writable else ":ro") for _, raw, writable in kept]
