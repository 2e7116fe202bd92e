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
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, merge_attrib
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString, ScalarString

from ..errors import ConfigError
from .backends import PLATFORMS
from .loader import load_config_text
from .schema import Config, ModelConfig

__all__ = ["ModelReport", "ImportResult", "import_config", "LLAMA_CPP_CACHE_VOLUME"]

#: Named volume where ``-hf`` downloads are kept across containers. Mounted at ``/root/.cache``
#: (the llama.cpp images run as root): llama-server keeps them under ``~/.cache/llama.cpp``,
#: newer builds under the Hugging Face cache ``~/.cache/huggingface``; both live there.
LLAMA_CPP_CACHE_VOLUME = "llamaswap-llama-cache"
_LLAMA_CPP_CACHE_TARGET = "/root/.cache"

Status = Literal["converted", "noted", "person"]


@dataclass(frozen=True)
class ModelReport:
    """What became of one model: converted, converted with notes (what was guessed or
    dropped), or left to a person (why, and what to do)."""

    model_id: str
    status: Status
    notes: tuple[str, ...] = ()
    reason: str = ""
    action: str = ""


@dataclass(frozen=True)
class ImportResult:
    """The converted config's text and a report per model (in the file's order)."""

    text: str
    models: tuple[ModelReport, ...]
    #: File-level notes: keys commented out, members removed, problems left in the output.
    notes: tuple[str, ...] = ()
    #: True when the output does not load (a file-level problem no model stands for).
    broken: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every model converted; 2 when some need a person (or the output is broken)."""
        needs_person = self.broken or any(m.status == "person" for m in self.models)
        return 2 if needs_person else 0


# --------------------------------------------------------------------------- entry point


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
    job = _Import(text, source, platform, base, os.environ if environ is None else environ)
    return job.run()


# --------------------------------------------------------------------------- YAML round trip


def _yaml_for(text: str) -> YAML:
    """A round-trip YAML whose indentation follows the file's, so untouched parts stay as
    written (measured on llama-swap's own examples: only trailing blanks and ``~`` change)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    mapping = 2
    # The models block is most of the file: its indentation wins when the file mixes some.
    start = re.search(r"^models:[ \t]*(#.*)?$", text, re.MULTILINE)
    for line in text[start.end() if start else 0:].splitlines():
        stripped = line.lstrip(" ")
        if stripped and not stripped.startswith(("#", "-")) and line != stripped:
            mapping = len(line) - len(stripped)
            break
    # No block sequence to copy: indent new ones under their key, as most configs do.
    sequence, offset = mapping * 2, mapping
    seq = re.search(r"^( *)(- +)\S", text, re.MULTILINE)
    if seq:
        offset = len(seq.group(1))
        before = text[: seq.start()].rstrip("\n").rsplit("\n", 1)[-1]
        parent = len(before) - len(before.lstrip(" "))
        offset = max(0, offset - parent)
        sequence = offset + len(seq.group(2))
    yaml.indent(mapping=mapping, sequence=max(sequence, offset + 2), offset=offset)
    return yaml


def _load(text: str, source: str) -> tuple[YAML, CommentedMap]:
    yaml = _yaml_for(text)
    try:
        doc = yaml.load(text)
    except YAMLError as exc:
        raise ConfigError(f"cannot import {source}: not valid YAML: {exc}") from None
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"cannot import {source}: the file must be a mapping of settings")
    if not isinstance(doc.get("models"), CommentedMap) or not doc["models"]:
        raise ConfigError(f"cannot import {source}: it has no `models`")
    return yaml, doc


# --------------------------------------------------------------------------- commands

#: Marks a line break that a folded (``>``) scalar turns into a space: the command sees a
#: space, the output keeps the line. Python counts it as whitespace.
_FOLD = "\x1f"
_DROP = "\x00"
_WHOLE_MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
_ANY_MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: ``<LLM_ROOT_PATH>``: a template's blank, to be filled in before the command can run.
_PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9_-]*>")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./{}$\-]+$")


class _SplitError(ValueError):
    """A command that a shell could not split (an unclosed quote)."""


def _display(value: Any) -> str:
    """A scalar's text with folded line breaks marked (``_FOLD``)."""
    text = str(value)
    if isinstance(value, FoldedScalarString):
        chars = list(text)
        for pos in getattr(value, "fold_pos", []) or []:
            if 0 <= pos < len(chars) and chars[pos] == " ":
                chars[pos] = _FOLD
        text = "".join(chars)
    return text


def _scalar_like(original: Any, text: str) -> Any:
    """``text`` (with fold marks) as a scalar of the same style as ``original``."""
    if isinstance(original, FoldedScalarString):
        folds = [i for i, ch in enumerate(text) if ch == _FOLD]
        scalar = FoldedScalarString(text.replace(_FOLD, " "))
        scalar.fold_pos = folds  # type: ignore[attr-defined]
        return scalar
    text = text.replace(_FOLD, " ")
    if isinstance(original, LiteralScalarString):
        return LiteralScalarString(text)
    if isinstance(original, ScalarString):
        return type(original)(text)
    return LiteralScalarString(text) if "\n" in text.rstrip("\n") else text.strip()


def _tokenize(text: str) -> list[tuple[int, int, str]]:
    """The words of a command as llama-swap splits it, each with its span in ``text``.

    Lines starting with ``#`` are comments and a trailing backslash joins lines (both as in
    llama-swap's ``SanitizeCommand``); the rest splits like Python's ``shlex`` in POSIX mode,
    which is how this project splits ``cmd`` too.
    """
    masked = list(text)
    pos = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("#"):
            masked[pos:pos + len(line)] = " " * len(line)
        elif stripped.endswith("\\"):
            masked[pos + len(line.rstrip()) - 1] = " "
        pos += len(line) + 1
    chars = "".join(masked)
    tokens: list[tuple[int, int, str]] = []
    i, n = 0, len(chars)
    while i < n:
        if chars[i].isspace():
            i += 1
            continue
        start, value = i, []
        while i < n and not chars[i].isspace():
            ch = chars[i]
            if ch == "'":
                end = chars.find("'", i + 1)
                if end < 0:
                    raise _SplitError("a single quote is not closed")
                value.append(chars[i + 1:end])
                i = end + 1
            elif ch == '"':
                i += 1
                while True:
                    if i >= n:
                        raise _SplitError("a double quote is not closed")
                    ch = chars[i]
                    if ch == '"':
                        i += 1
                        break
                    if ch == "\\" and i + 1 < n and chars[i + 1] in '"\\':
                        value.append(chars[i + 1])
                        i += 2
                        continue
                    value.append(ch)
                    i += 1
            elif ch == "\\" and i + 1 < n:
                value.append(chars[i + 1])
                i += 2
            else:
                value.append(ch)
                i += 1
        tokens.append((start, i, "".join(value).replace(_FOLD, " ")))
    return tokens


def _split(text: str) -> list[str]:
    return [value for _, _, value in _tokenize(text)]


def _quote(word: str) -> str:
    return word if word and _SAFE_WORD.match(word) else shlex.quote(word)


@dataclass(eq=False)
class _Word:
    """One argument: its text after macros, and as written (macros kept) where it is one
    whole word of its source."""

    text: str
    raw: str
    leaf: _Leaf


@dataclass(eq=False)
class _Leaf:
    """A word of a source as written, and the argument(s) it expands to."""

    start: int
    end: int
    raw: str
    words: list[_Word] = field(default_factory=list)


@dataclass(eq=False)
class _Ref:
    """A word that is exactly one text macro (``${server}``): its value is a source too."""

    start: int
    end: int
    key: tuple[str, ...]
    child: _Source


@dataclass(eq=False)
class _Source:
    """A command's text (a ``cmd``, a macro's value, a ``bash -c`` script) and its words."""

    text: str
    nodes: list[_Leaf | _Ref] = field(default_factory=list)

    def words(self) -> list[_Word]:
        out: list[_Word] = []
        for node in self.nodes:
            out += node.child.words() if isinstance(node, _Ref) else node.words
        return out

    def refs(self) -> Iterator[_Ref]:
        for node in self.nodes:
            if isinstance(node, _Ref):
                yield node
                yield from node.child.refs()


class _Macros:
    """The macros one model sees (its own first, then the global ones), as llama-swap
    substitutes them; ``${PORT}`` and ``${PID}`` stay as written."""

    def __init__(self, model_id: str, own: Any, global_: Any, environ: Mapping[str, str]) -> None:
        self.model_id = model_id
        self._own = own if isinstance(own, dict) else {}
        self._global = global_ if isinstance(global_, dict) else {}
        self._environ = environ
        #: Macros whose text a converted command used inside a word (they cannot change).
        self.embedded: set[tuple[str, ...]] = set()

    def lookup(self, name: str) -> tuple[tuple[str, ...], Any] | None:
        if name in self._own:
            return ("model", self.model_id, name), self._own[name]
        if name in self._global:
            return ("global", name), self._global[name]
        return None

    def expand(self, text: str, depth: int = 0, record: bool = True) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("env."):
                return self._environ.get(name[4:], match.group(0))
            if name == "MODEL_ID":
                return self.model_id
            found = self.lookup(name)
            if found is None or depth > 20:
                return match.group(0)  # ${PORT}, ${PID}, or unknown: the loader will say
            key, value = found
            if record:
                self.embedded.add(key)
            if isinstance(value, bool):
                return "true" if value else "false"
            return self.expand(str(value).replace(_FOLD, " "), depth + 1, record)

        return _ANY_MACRO.sub(replace, text)

    def source(self, text: str, chain: tuple[tuple[str, ...], ...] = ()) -> _Source:
        """Parse ``text`` into words, following whole-word text macros into their own
        sources (so that a change inside one can be made where it is defined)."""
        src = _Source(text)
        for start, end, value in _tokenize(text):
            raw = text[start:end]
            match = _WHOLE_MACRO.fullmatch(raw)
            found = self.lookup(match.group(1)) if match else None
            if found and isinstance(found[1], str) and found[0] not in chain:
                key, value_ = found
                child = self.source(_display(value_), (*chain, key))
                src.nodes.append(_Ref(start, end, key, child))
                continue
            leaf = _Leaf(start, end, raw)
            expanded = _split(self.expand(raw.replace(_FOLD, " ")))
            if len(expanded) == 1:
                leaf.words.append(_Word(expanded[0], value, leaf))
            else:
                leaf.words += [_Word(word, word, leaf) for word in expanded]
            src.nodes.append(leaf)
        return src


#: What a conversion does to one word: replace it (text) or drop it (None).
_Edits = dict[int, "str | None"]


def _emit(src: _Source, edits: _Edits, rewritten: Mapping[tuple[str, ...], str]) -> str:
    """``src``'s text with the edits applied. A macro word stays as written when its value is
    unchanged or rewritten where it is defined (``rewritten``); it goes when all of its words
    go; else its new value is written in its place."""
    pieces: list[tuple[int, int, str | None]] = []
    for node in src.nodes:
        if isinstance(node, _Leaf):
            if not any(id(word) in edits for word in node.words):
                continue
            kept = []
            for word in node.words:
                if id(word) in edits:
                    if edits[id(word)] is not None:
                        kept.append(_quote(edits[id(word)]))  # type: ignore[arg-type]
                else:
                    kept.append(_quote(word.text))
            pieces.append((node.start, node.end, " ".join(kept) or None))
            continue
        text = _emit(node.child, edits, rewritten)
        if text == node.child.text:
            continue
        if not _tokenize(text):
            pieces.append((node.start, node.end, None))
        elif rewritten.get(node.key) == text:
            continue
        else:
            pieces.append((node.start, node.end, " ".join(
                text[s:e].replace(_FOLD, " ") for s, e, _ in _tokenize(text))))
    return _apply(src.text, pieces)


def _apply(text: str, pieces: list[tuple[int, int, str | None]]) -> str:
    """Replace spans; a dropped word goes with the blank beside it, and a line it leaves
    empty goes whole, so the user's layout and comment lines stay."""
    if not pieces:
        return text
    chars = text
    for start, end, new in sorted(pieces, reverse=True):
        chars = chars[:start] + (_DROP * (end - start) if new is None else new) + chars[end:]
    parts = re.split(f"([\n{_FOLD}])", chars)
    segments, seps = parts[0::2], [""] + parts[1::2]
    keep: list[tuple[str, str]] = []
    for sep, seg in zip(seps, segments):
        if _DROP in seg:
            rest = seg.replace(_DROP, "").strip()
            if rest in ("", "\\"):
                continue
            seg = re.sub(rf"[ \t]*{_DROP}+(?=[ \t]*\\?[ \t]*$)", "", seg)
            seg = re.sub(rf"^([ \t]*){_DROP}+[ \t]*", r"\1", seg)
            seg = re.sub(rf"{_DROP}+[ \t]*", "", seg)
        keep.append((sep, seg))
    if keep and keep[0][0]:
        keep[0] = ("", keep[0][1])
    # What is left may be indented under a line that went (`docker run …` above its
    # arguments): take the common indentation off, keeping the lines' relative one.
    margin = min((len(seg) - len(seg.lstrip(" ")) for _, seg in keep if seg.strip()), default=0)
    return "".join(sep + seg[margin:] for sep, seg in keep)


# --------------------------------------------------------------------------- per model

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]", "host.docker.internal"}
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]|\\")
_SCRIPT_SUFFIXES = (".sh", ".bash", ".py", ".bat", ".cmd", ".ps1", ".zsh")
_SHELLS = {"bash", "sh", "zsh", "dash", "ash"}
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


@dataclass
class _Plan:
    """What to do with one model."""

    model_id: str
    status: Status = "converted"
    reason: str = ""
    action: str = ""
    notes: list[str] = field(default_factory=list)
    #: Keys written before ``cmd`` (backend, platform, gpus, image) and after it.
    head: dict[str, Any] = field(default_factory=dict)
    tail: dict[str, Any] = field(default_factory=dict)
    env_set: dict[str, str] = field(default_factory=dict)
    env_drop: set[str] = field(default_factory=set)
    env_replace: bool = False  # docker run: the model's env was the docker CLI's
    #: Keys removed: a reason (the key is commented out with it) or None (deleted).
    drop: dict[str, str | None] = field(default_factory=dict)
    source: _Source | None = None
    edits: _Edits = field(default_factory=dict)
    #: The command's text is rebuilt from ``source`` (a wrapper's script) as one line.
    rebuilt: bool = False
    already: bool = False  # already this project's model: left alone
    #: ``docker run --name``, as written: a ``cmdStop`` that stops it is dropped silently.
    container_name: str | None = None
    #: Macros used inside a word of the command: their values must stay as they are.
    embedded: set[tuple[str, ...]] = field(default_factory=set)

    def person(self, reason: str, action: str) -> _Plan:
        self.status, self.reason, self.action = "person", reason, action
        return self

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def touched(self) -> set[str]:
        keys = {*self.head, *self.tail, "cmd"}
        if self.env_set or self.env_drop or self.env_replace:
            keys.add("env")
        return keys


@dataclass
class _Options:
    platform: str | None
    base: Path
    environ: Mapping[str, str]


def _proxy_of(model: Mapping[str, Any], macros: _Macros) -> tuple[str | None, str | None]:
    """``proxy``'s host and port as written after macros (None where unset)."""
    proxy = model.get("proxy")
    if not isinstance(proxy, str):
        return None, None
    match = re.match(r"^\w+://(\[[^\]]*\]|[^:/]*)(?::([^/]*))?", macros.expand(proxy, record=False))
    if not match:
        return None, None
    return match.group(1), match.group(2)


def _plan_model(model_id: str, model: CommentedMap, global_macros: Any, opts: _Options) -> _Plan:
    plan = _Plan(model_id)
    if "image" in model or "backend" in model:
        plan.already = True
        return plan
    cmd = model.get("cmd")
    if isinstance(cmd, list):
        return plan.person("its `cmd` is a list: llama-swap takes one string",
                           "write `cmd` as the command line llama-swap ran and import again")
    if not isinstance(cmd, str) or not cmd.strip():
        return plan.person("it has no `cmd` (llama-swap needs one too)",
                           "add a `cmd`, or write the model here with `image` or `backend`")
    macros = _Macros(model_id, model.get("macros"), global_macros, opts.environ)
    try:
        src = macros.source(_display(cmd))
    except _SplitError as exc:
        return plan.person(f"its `cmd` cannot be split into words: {exc}",
                           "fix the quoting in `cmd` and import again")
    plan.source = src
    host, proxy_port = _proxy_of(model, macros)
    words = src.words()
    if not words:
        return plan.person("its `cmd` is empty", "add the command that serves the model")
    holes = sorted({m for w in words for m in _PLACEHOLDER.findall(w.text)})
    if holes:
        return plan.person(f"its `cmd` has template placeholders ({', '.join(holes)}): the file "
                           "looks like a template", "fill them in and import again")
    _Command(plan, model, macros, opts, host, proxy_port).convert(words)
    if plan.status != "person":
        _drop_cmd_stop(plan, model, macros)
    plan.embedded = macros.embedded
    return plan


def _drop_cmd_stop(plan: _Plan, model: Mapping[str, Any], macros: _Macros) -> None:
    stop = model.get("cmdStop")
    if stop is None:
        return
    name = plan.container_name
    try:
        words = _split(macros.expand(str(stop), record=False))
    except _SplitError:
        words = []
    matched, timeout = False, None
    if words and posixpath.basename(words[0]) in ("docker", "podman") and len(words) > 2:
        rest = words[2:]
        names = []
        i = 0
        while i < len(rest):
            if rest[i] in ("-t", "--time", "--timeout") and i + 1 < len(rest):
                timeout = rest[i + 1]
                i += 2
                continue
            if rest[i].startswith(("--time=", "--timeout=")):
                timeout = rest[i].split("=", 1)[1]
            elif not rest[i].startswith("-"):
                names.append(rest[i])
            i += 1
        matched = (words[1] in ("stop", "kill", "rm") and name is not None
                   and names == [macros.expand(name, record=False)])
    if matched:
        plan.drop["cmdStop"] = None
        if timeout and timeout.isdigit() and words[1] == "stop":
            plan.tail["stopTimeout"] = int(timeout)
        return
    plan.drop["cmdStop"] = "dropped by import: the container is stopped through the engine"
    plan.note(f"cmdStop {str(stop).strip()!r} dropped: the container is stopped through the "
              "engine (SIGTERM, then SIGKILL after stopTimeout)")


class _Command:
    """Reads one model's command and fills its plan."""

    def __init__(self, plan: _Plan, model: CommentedMap, macros: _Macros, opts: _Options,
                 proxy_host: str | None, proxy_port: str | None) -> None:
        self.plan = plan
        self.model = model
        self.macros = macros
        self.opts = opts
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.prefix_env: dict[str, str] = {}

    # -- dispatch --------------------------------------------------------------------------

    def convert(self, words: list[_Word]) -> None:
        plan = self.plan
        i = 0
        texts = [w.text for w in words]
        if texts and posixpath.basename(texts[0]) == "env":
            i = 1
            if i < len(texts) and texts[i].startswith("-"):
                return self._refuse_flag(texts[i], "env")
        while i < len(texts) and _ASSIGNMENT.match(texts[i]):
            key, _, value = words[i].raw.partition("=")
            self.prefix_env[key] = value
            i += 1
        if i >= len(texts):
            plan.person("its `cmd` only sets variables and runs nothing",
                        "put the server's command in `cmd`")
            return
        prog = texts[i]
        base = _basename(prog)
        rest = words[i + 1:]
        written = words[i].leaf.raw if len(words[i].leaf.words) == 1 else prog
        if _WINDOWS_PATH.search(written) or base.lower().endswith(".exe"):
            prog = written.strip("'\"")
            plan.person(f"it runs '{prog}', a Windows program: containers run Linux images",
                        "run the model on a Linux Docker host: write it with `backend: llama.cpp` "
                        "(or the image of its server) and the model files' Linux paths in "
                        "`volumes`")
            return
        if base in ("docker", "podman"):
            sub = [w.text for w in rest[:2]]
            if sub[:1] == ["run"] or sub == ["container", "run"]:
                skip = 1 if sub[:1] == ["run"] else 2
                self._drop_before(words, i + 1 + skip)
                _DockerRun(self, base).convert(rest[skip:])
                return
            if sub[:1] == ["compose"]:
                self._compose(prog)
                return
            plan.person(f"it runs `{base} {' '.join(sub[:1])}`: only `{base} run` commands convert",
                        "write the model with the image, volumes and flags the container needs")
            return
        if base == "docker-compose":
            self._compose(prog)
            return
        if base in _SHELLS:
            self._shell(rest, prog)
            return
        if base == "sleep":
            where = f" at {self.model.get('proxy')}" if self.model.get("proxy") else ""
            plan.person(f"its `cmd` only sleeps: the model is served by something else{where}",
                        "declare that server as a peer (`peers:` with its URL and models) instead "
                        "of a model")
            return
        if base.startswith("python") and len(rest) >= 2 and rest[0].text == "-m":
            module = rest[1].text
            if module.startswith("vllm.entrypoints"):
                self._drop_before(words, i + 3)
                self._vllm(rest[2:])
                return
            self._no_preset(module, f"python -m {module}")
            return
        if base.endswith(_SCRIPT_SUFFIXES) or base.startswith("python"):
            plan.person(f"it runs a script ({prog!r}) on the host: what the script starts is "
                        "not visible here",
                        "write the model with the server the script runs: `backend: llama.cpp` or "
                        "`vllm` with the script's flags in `cmd`, or an image that has the script")
            return
        if "ik_llama" in prog.lower():
            self._no_preset(prog, "ik_llama.cpp's llama-server (no official image)")
            return
        if base.startswith("llama-server"):
            self._drop_before(words, i + 1)
            self._llama_server(prog, rest)
            return
        if base == "vllm" and rest and rest[0].text == "serve":
            self._drop_before(words, i + 2)
            self._vllm(rest[1:])
            return
        self._no_preset(prog, base)

    def _drop_before(self, words: list[_Word], index: int) -> None:
        for word in words[:index]:
            self.plan.edits[id(word)] = None

    def _refuse_flag(self, flag: str, program: str) -> None:
        self.plan.person(f"`{program}` is run with {flag!r}, which has no equivalent here",
                         "write the model by hand, or remove the flag and import again")

    def _compose(self, prog: str) -> None:
        self.plan.person("it starts a docker compose service: the service's image, command and "
                         "volumes are in the compose file, not here",
                         "copy the service's `image`, `command` (as `cmd`), `volumes`, "
                         "`environment` and GPU settings into this model")

    def _no_preset(self, prog: str, name: str) -> None:
        self.plan.person(f"it runs {name}, which has no backend preset here",
                         f"set `image` to an image that has {_basename(prog)!r} and `cmd` to its "
                         "arguments (with `port` and `volumes`)")

    def _shell(self, rest: list[_Word], prog: str) -> None:
        plan = self.plan
        script_at = None
        for index, word in enumerate(rest):
            if re.match(r"^-[a-z]*c[a-z]*$", word.text):  # -c, -lc, -ec
                script_at = index + 1
                break
            if not word.text.startswith("-"):
                break
        if script_at is None or script_at >= len(rest):
            plan.person(f"it runs a shell script with {prog!r}",
                        "write the model with the server the script runs")
            return
        script = rest[script_at]
        try:
            inner = self.macros.source(script.raw if script.raw is not None else script.text)
        except _SplitError as exc:
            plan.person(f"its `{prog} -c` script cannot be split into words: {exc}",
                        "fix the quoting and import again")
            return
        commands: list[list[_Word]] = [[]]
        for word in inner.words():
            text = word.text
            if text in ("&&", ";"):
                commands.append([])
                continue
            if text in ("|", "||", ">", ">>", "<", "&") or "$(" in text or "`" in text or \
                    re.match(r"^\d?>", text):
                plan.person(f"its `{prog} -c` script uses {text!r}: only `cd`, `export`, `sleep` "
                            "and `exec SERVER` unwrap",
                            "write the model with the server the script runs")
                return
            if text.endswith(";"):
                word.text = text[:-1]
                commands[-1].append(word)
                commands.append([])
                continue
            commands[-1].append(word)
        commands = [c for c in commands if c]
        if not commands:
            plan.person(f"its `{prog} -c` script is empty", "put the server's command in `cmd`")
            return
        for command in commands[:-1]:
            head = command[0].text
            if head == "export":
                for word in command[1:]:
                    key, sep, value = word.raw.partition("=")
                    if sep:
                        self.prefix_env[key] = value
            elif head in ("cd", "sleep", "true", ":"):
                plan.note(f"`{' '.join(w.text for w in command)}` before the server dropped "
                          f"(unwrapped from `{prog} -c`)")
            elif _ASSIGNMENT.match(head) and all(_ASSIGNMENT.match(w.text) for w in command):
                for word in command:
                    key, _, value = word.raw.partition("=")
                    self.prefix_env[key] = value
            else:
                plan.person(f"its `{prog} -c` script runs {head!r} before the server",
                            "do that step in an image of your own, or drop it, and import again")
                return
        last = commands[-1]
        if last[0].text == "exec":
            last = last[1:]
        # Everything before the server goes: the steps, their `&&`, and `exec`.
        all_words = inner.words()
        for word in all_words[:all_words.index(last[0])]:
            plan.edits[id(word)] = None
        plan.source = inner
        plan.rebuilt = True
        self.convert(last)

    # -- the environment -------------------------------------------------------------------

    def _model_env(self) -> dict[str, str]:
        """The model's ``env`` (llama-swap's list, or a mapping), as written."""
        env = self.model.get("env")
        out: dict[str, str] = {}
        if isinstance(env, list):
            for item in env:
                key, sep, value = str(item).partition("=")
                if sep:
                    out[key.strip()] = value
        elif isinstance(env, dict):
            out = {str(k): "" if v is None else str(v) for k, v in env.items()}
        return out

    def _server_env(self, platform_hint: list[str]) -> dict[str, str]:
        """The host server's variables, minus host-only ones (noted); the visible-devices
        variable of the platform is left for ``_gpus_from_env``."""
        plan = self.plan
        env = {**self._model_env(), **self.prefix_env}
        for key in list(env):
            if key in _HOST_ONLY_ENV:
                plan.env_drop.add(key)
                plan.note(f"env {key} dropped: it pointed the host program at host folders, "
                          "which the image does not have")
        for key, value in self.prefix_env.items():
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

    # -- bare servers ----------------------------------------------------------------------

    def _check_proxy(self, server: str) -> bool:
        """A proxy elsewhere than this host means the command does not serve the model here."""
        host = self.proxy_host
        if host is None or host in _LOCAL_HOSTS or host.startswith("127."):
            self.plan.drop["proxy"] = None
            return True
        self.plan.person(f"its `proxy` is {self.model.get('proxy')!r}, another host: {server} "
                         "here does not serve what the proxy there answers",
                         "declare that host as a peer (`peers:`), or point the model at a server "
                         "this host runs")
        return False

    def _check_proxy_docker(self, run: _DockerRun) -> bool:
        """A ``docker run`` model's proxy: local, or the container itself on a docker network."""
        host = self.proxy_host
        name = self.plan.container_name
        names = {self.macros.expand(name, record=False)} if name else set()
        names.add(self.plan.model_id)
        if host is None or host in _LOCAL_HOSTS or host.startswith("127.") or host in names:
            self.plan.drop["proxy"] = None
            return True
        if run.network is not None:
            self.plan.drop["proxy"] = None
            self.plan.note(f"proxy {self.model.get('proxy')!r} dropped: the proxy reaches the "
                           "container itself")
            return True
        self.plan.person(f"its `proxy` is {self.model.get('proxy')!r}, another host than the one "
                         "the container runs on",
                         "declare that host as a peer (`peers:`), or point the model at the "
                         "container this command starts")
        return False

    def _llama_server(self, prog: str, args: list[_Word]) -> None:
        plan = self.plan
        if not self._check_proxy("llama-server"):
            return
        plan.head["backend"] = "llama.cpp"
        hints = [platform for name, platform in _BUILD_NAMES if name in prog.lower()][:1]
        gpu_flags: list[str] = []
        mounts = _Mounts(self)
        hf = False
        i = 0
        while i < len(args):
            word = args[i]
            flag, eq, inline = word.text.partition("=")
            value_word = None
            if flag.startswith("-") and not eq and i + 1 < len(args):
                value_word = args[i + 1]
            value = inline if eq else (value_word.text if value_word else "")
            if flag in ("--host", "--port"):
                plan.edits[id(word)] = None
                if value_word is not None and not eq:
                    plan.edits[id(value_word)] = None
                    i += 1
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
        env = self._server_env(hints)
        platform = self._platform(hints, gpu_flags, _basename(prog))
        self._gpus_from_env(platform, env)
        if hf:
            plan.tail.setdefault("volumes", []).append(
                f"{LLAMA_CPP_CACHE_VOLUME}:{_LLAMA_CPP_CACHE_TARGET}")
        if prog.startswith("/app/") and mounts.items:
            plan.note(f"{prog} is llama-swap's container image: the model files' paths were "
                      "paths inside that container, mounted here from the same host paths; "
                      "set the host side of `volumes` to what you mounted into llama-swap")
        mounts.write()

    def _vllm(self, args: list[_Word]) -> None:
        plan = self.plan
        if not self._check_proxy("vLLM"):
            return
        plan.head["backend"] = "vllm"
        mounts = _Mounts(self)
        hints: list[str] = []
        i = 0
        positional_done = False
        while i < len(args):
            word = args[i]
            flag, eq, inline = word.text.partition("=")
            value_word = None
            if flag.startswith("-") and not eq and i + 1 < len(args):
                value_word = args[i + 1]
            if not word.text.startswith("-"):
                if not positional_done:
                    positional_done = True
                    if word.text.startswith("/") or word.text.startswith(("./", "../", "~")):
                        if not mounts.add(word, None, "", "", "", "dir", positional=True):
                            return
                i += 1
                continue
            if flag in ("--host", "--port"):
                plan.edits[id(word)] = None
                if value_word is not None:
                    plan.edits[id(value_word)] = None
                    i += 1
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
        env = self._server_env(hints)
        platform = self._platform(hints, [], "vllm")
        self._gpus_from_env(platform, env)
        mounts.write()


def _basename(program: str) -> str:
    return re.split(r"[\\/]", program.rstrip("/\\"))[-1]


class _Mounts:
    """Host folders a bare server reads, to be mounted at the same paths."""

    def __init__(self, command: _Command) -> None:
        self.command = command
        self.items: list[tuple[str, str, bool]] = []  # (host path, as written, writable)

    def add(self, word: _Word, value_word: _Word | None, flag: str, eq: str, inline: str,
            kind: str, generic: bool = False, positional: bool = False) -> bool:
        plan = self.command.plan
        target = word if (eq or positional or generic and not flag) else value_word
        if target is None:
            return True
        text = inline if eq else target.text
        raw = target.raw.split("=", 1)[1] if eq and "=" in target.raw else target.raw
        if _WINDOWS_PATH.search(text) and not text.startswith("/"):
            plan.person(f"{flag or 'an argument'} names '{text}', a Windows path",
                        "run the model on a Linux Docker host and give the file's Linux path")
            return False
        path = text
        if not text.startswith("/") and not text.startswith("${"):
            if text.startswith("~"):
                path = os.path.expanduser(text)
                plan.note(f"{text!r} expanded to {path!r} (llama-swap runs no shell: check it)")
            else:
                path = os.path.normpath(os.path.join(self.command.opts.base, text))
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
            elif self.command.macros.expand(raw_folder, record=False) != folder:
                raw_folder = folder
        if not folder or folder == "/":
            return
        self.items.append((folder, raw_folder or folder, writable))

    def write(self) -> None:
        plan = self.command.plan
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


# --------------------------------------------------------------------------- docker run

#: ``docker run`` flags that take a value, by every spelling, to one name.
_VALUE_FLAGS = {
    "-v": "volume", "--volume": "volume", "--mount": "mount", "-e": "env", "--env": "env",
    "--env-file": "env-file", "-p": "publish", "--publish": "publish", "--gpus": "gpus",
    "--device": "device", "--runtime": "runtime", "--ipc": "ipc", "--shm-size": "shm-size",
    "--ulimit": "ulimit", "--entrypoint": "entrypoint", "--cap-add": "cap-add",
    "--security-opt": "security-opt", "--group-add": "group-add", "-u": "user",
    "--user": "user", "--network": "network", "--net": "network", "--name": "name",
    "-m": "memory", "--memory": "memory", "--cpus": "cpus", "-l": "label", "--label": "label",
    "--add-host": "add-host", "--stop-timeout": "stop-timeout", "--restart": "restart",
    "--pull": "pull", "-h": "hostname", "--hostname": "hostname", "--log-driver": "log",
    "--log-opt": "log", "--health-cmd": "health", "--health-interval": "health",
    "--health-retries": "health", "--health-timeout": "health",
    "--health-start-period": "health", "--expose": "expose",
}
_BOOL_FLAGS = {"--rm": "rm", "-d": "detach", "--detach": "detach", "--init": "init",
               "-i": "interactive", "--interactive": "interactive", "-t": "tty",
               "--tty": "tty", "--privileged": "privileged", "--replace": "replace",
               "--no-healthcheck": "health", "-P": "publish-all", "--publish-all": "publish-all"}
#: Dropped with a note: what the proxy does instead.
_DROPPED_FLAGS = {
    "restart": "the proxy starts and stops the container itself",
    "pull": "images are pulled as `docker.pullPolicy` says (default: when missing)",
    "hostname": "the proxy reaches the container by its own name",
    "log": "the proxy reads the container's output from the engine (`logs MODEL`)",
    "health": "the proxy polls `checkEndpoint` itself",
    "expose": "the proxy reaches the container's `port` itself",
    "publish-all": "the proxy reaches the container's `port` itself",
}


class _DockerRun:
    """``docker run [FLAGS] IMAGE [ARGS]`` → image, cmd and this project's keys."""

    def __init__(self, command: _Command, program: str) -> None:
        self.c = command
        self.plan = command.plan
        self.program = program
        self.env: dict[str, str] = {}
        self.docker: dict[str, Any] = {}
        self.volumes: list[str] = []
        self.publish: list[tuple[str, str]] = []
        self.devices: list[str] = []
        self.groups: list[str] = []
        self.gpus: Any = "none"
        self.runtime: str | None = None
        self.network: str | None = None

    def convert(self, words: list[_Word]) -> None:
        plan = self.plan
        i = 0
        while i < len(words):
            text = words[i].text
            if not text.startswith("-") or text == "-":
                break
            name, eq, inline = text.partition("=")
            raw_inline = words[i].raw.split("=", 1)[1] if "=" in words[i].raw else inline
            if not name.startswith("--") and len(name) > 2:
                if all(f"-{ch}" in _BOOL_FLAGS for ch in name[1:]):
                    for ch in name[1:]:
                        self._bool(_BOOL_FLAGS[f"-{ch}"], "true")
                    plan.edits[id(words[i])] = None
                    i += 1
                    continue
                if name[:2] in _VALUE_FLAGS:  # -p8080:80, -eKEY=VALUE
                    name, eq, inline, raw_inline = name[:2], "=", text[2:], words[i].raw[2:]
            plan.edits[id(words[i])] = None
            if name in _BOOL_FLAGS:
                self._bool(_BOOL_FLAGS[name], inline if eq else "true")
                i += 1
                continue
            if name not in _VALUE_FLAGS:
                plan.person(f"its `{self.program} run` uses {name}, which has no equivalent here",
                            f"remove {name} from the command (or do it in an image of your own) "
                            "and import again")
                return
            if eq:
                value, raw = inline, raw_inline
            elif i + 1 < len(words):
                value_word = words[i + 1]
                value, raw = value_word.text, value_word.raw
                plan.edits[id(value_word)] = None
                i += 1
            else:
                plan.person(f"its `{self.program} run` ends at {name}, which needs a value",
                            "fix the command and import again")
                return
            if not self._value(_VALUE_FLAGS[name], name, value, raw):
                return
            i += 1
        if i >= len(words):
            plan.person(f"its `{self.program} run` names no image", "fix the command")
            return
        image = words[i]
        plan.edits[id(image)] = None
        if not self.c._check_proxy_docker(self):
            return
        self._finish(image.raw if image.raw else image.text, image.text, words[i + 1:])

    def _bool(self, kind: str, value: str) -> None:
        on = value.lower() not in ("false", "0")
        if kind == "privileged" and on:
            self.docker["privileged"] = True
        elif kind in _DROPPED_FLAGS:
            self.plan.note(f"{kind} flag dropped: {_DROPPED_FLAGS[kind]}")

    def _value(self, kind: str, flag: str, value: str, raw: str) -> bool:
        plan = self.plan
        if kind == "volume":
            if raw.count(":") == 0 or re.match(r"^[A-Za-z]:[\\/]", raw):
                plan.person(f"-v {raw!r} is not 'host:container': an anonymous volume or a "
                            "Windows path", "give the volume a host path or a name")
                return False
            if raw.startswith(("./", "../", ".:")) or raw.split(":", 1)[0] in (".", ".."):
                plan.note(f"-v {raw!r}: a relative host path now resolves against the output's "
                          "folder (llama-swap's docker resolved it from its working directory)")
            self.volumes.append(raw)
        elif kind == "mount":
            spec = self._mount(value)
            if spec is None:
                plan.person(f"--mount {value!r} is not a bind or volume mount",
                            "use a `volumes` entry instead")
                return False
            self.volumes.append(spec)
        elif kind == "env":
            key, sep, val = raw.partition("=")
            if sep:
                self.env[key] = val
            else:
                own = self.c._model_env()
                if key in own:
                    self.env[key] = own[key]
                else:
                    self.env[key] = f"${{env.{key}}}"
                    plan.note(f"-e {key} passed the variable from the environment of "
                              f"llama-swap: it is now read from the proxy's (${{env.{key}}}, "
                              "which must be set)")
        elif kind == "env-file":
            self.docker.setdefault("envFile", []).append(raw)
        elif kind == "publish":
            parts = value.split(":")
            container = parts[-1].split("/")[0]
            if parts[-1].endswith("/udp"):
                plan.note(f"-p {value} dropped: only the server's TCP port is reached")
                return True
            host = parts[-2] if len(parts) >= 2 else ""
            self.publish.append((host, container))
        elif kind == "gpus":
            self.gpus = _docker_gpus(value)
            if self.gpus == "invalid":
                plan.person(f"--gpus {value!r} cannot be read", "fix the value and import again")
                return False
        elif kind == "device":
            self.devices.append(raw)
        elif kind == "runtime":
            self.runtime = value
        elif kind == "ipc":
            self.docker["ipc"] = raw
        elif kind == "shm-size":
            self.docker["shmSize"] = raw
        elif kind == "memory":
            self.docker["memory"] = raw
        elif kind == "cpus":
            try:
                self.docker["cpus"] = float(value)
            except ValueError:
                plan.person(f"--cpus {value!r} is not a number", "fix the value")
                return False
        elif kind == "ulimit":
            name, sep, limits = value.partition("=")
            if not sep:
                plan.person(f"--ulimit {value!r} is not 'name=soft[:hard]'", "fix the value")
                return False
            soft, _, hard = limits.partition(":")
            ulimits = self.docker.setdefault("ulimits", {})
            ulimits[name] = _int_or_text(soft) if not hard else {
                "soft": _int_or_text(soft), "hard": _int_or_text(hard)}
        elif kind == "entrypoint":
            self.docker["entrypoint"] = raw
        elif kind in ("cap-add", "security-opt"):
            name = "capAdd" if kind == "cap-add" else "securityOpt"
            self.docker.setdefault(name, []).append(raw)
        elif kind == "group-add":
            self.groups.append(raw)
        elif kind == "user":
            self.docker["user"] = raw
        elif kind == "network":
            self.network = value
        elif kind == "name":
            self.plan.container_name = raw
        elif kind == "label":
            key, _, val = raw.partition("=")
            self.docker.setdefault("labels", {})[key] = val
        elif kind == "add-host":
            host, sep, address = raw.partition(":") if ":" in raw else raw.partition("=")
            if not sep:
                plan.person(f"--add-host {raw!r} is not 'host:ip'", "fix the value")
                return False
            self.docker.setdefault("extraHosts", {})[host] = address
        elif kind == "stop-timeout":
            if value.isdigit():
                plan.tail["stopTimeout"] = int(value)
        elif kind in _DROPPED_FLAGS:
            plan.note(f"{flag} {value} dropped: {_DROPPED_FLAGS[kind]}")
        return True

    @staticmethod
    def _mount(value: str) -> str | None:
        fields = dict(part.partition("=")[::2] for part in next(csv.reader([value])))
        kind = fields.get("type", "volume")
        source = fields.get("source") or fields.get("src")
        target = fields.get("target") or fields.get("destination") or fields.get("dst")
        if kind not in ("bind", "volume") or not source or not target:
            return None
        extra = set(fields) - {"type", "source", "src", "target", "destination", "dst",
                               "readonly", "ro"}
        if extra:
            return None
        read_only = any(k in fields and fields[k] in ("", "true", "1") for k in ("readonly", "ro"))
        return f"{source}:{target}" + (":ro" if read_only else "")

    def _finish(self, image_raw: str, image: str, args: list[_Word]) -> None:
        plan, c = self.plan, self.c
        plan.head["image"] = image_raw
        platform = "cpu"
        cdi = [d for d in self.devices if d.startswith("nvidia.com/gpu=")]
        hosts = [d.split(":")[0] for d in self.devices if d.startswith("/")]
        env_nvidia = self.env.get("NVIDIA_VISIBLE_DEVICES")
        if self.gpus != "none" or self.runtime == "nvidia" or cdi:
            platform = "cuda"
            if cdi and self.gpus == "none":
                ids = [d.split("=", 1)[1] for d in cdi]
                self.gpus = None if "all" in ids else ids
                self.devices = [d for d in self.devices if d not in cdi]
            if self.gpus == "none" and env_nvidia is not None:
                self.gpus = _docker_gpus(env_nvidia)
                if self.gpus != "invalid":
                    del self.env["NVIDIA_VISIBLE_DEVICES"]
            if self.gpus in ("none", "invalid"):
                self.gpus = None
        elif "/dev/kfd" in hosts:
            platform = "rocm"
        elif self.runtime == "mthreads":
            platform = "musa"
            self.runtime = None
        elif any(h.startswith("/dev/dri") for h in hosts):
            lowered = image.lower()
            if "vulkan" in lowered:
                platform = "vulkan"
            elif any(name in lowered for name in ("intel", "sycl", "xpu", "ipex")):
                platform = "intel"
        if platform != "cpu":
            plan.head["platform"] = platform
        if platform in ("cuda",) and self.gpus not in (None, "all"):
            plan.head["gpus"] = self.gpus
        platform_devices = {"rocm": {"/dev/kfd", "/dev/dri"}, "vulkan": {"/dev/dri"},
                            "intel": {"/dev/dri"}}.get(platform, set())
        if self.devices and not set(self.devices) <= platform_devices:
            self.docker["devices"] = self.devices
        if self.groups and not (platform in ("rocm", "vulkan", "intel")
                                and set(self.groups) <= {"video", "render"}):
            self.docker["groupAdd"] = self.groups
        if self.runtime:
            self.docker["runtime"] = self.runtime
        if self.network is not None:
            plan.note(f"--network {self.network} dropped: the container joins `docker.network` "
                      "and the proxy reaches it there")
        self._port(args)
        plan.env_replace = True
        own = c._model_env()
        if own and not all(key in self.env for key in own):
            plan.note("env (the docker command's own environment, not the container's) dropped: "
                      "the container's variables are its -e flags")
        plan.env_set = dict(self.env)
        if self.volumes:
            plan.tail["volumes"] = self.volumes
        if self.docker:
            plan.tail["docker"] = self.docker

    def _port(self, args: list[_Word]) -> None:
        plan = self.plan
        proxy_port = self.c.proxy_port
        chosen = None
        for host, container in self.publish:
            host = self.c.macros.expand(host, record=False)
            if host in ("${PORT}", proxy_port) or (proxy_port is None and host == "${PORT}"):
                chosen = container
        if chosen is None and len(self.publish) == 1:
            chosen = self.publish[0][1]
        for host, container in self.publish:
            if container != chosen:
                plan.note(f"-p {host}:{container} dropped: the proxy reaches only the server's "
                          "port")
        if chosen is not None:
            if chosen.isdigit():
                plan.tail["port"] = int(chosen)
            elif chosen != "${PORT}":
                plan.tail["port"] = chosen
            return
        if proxy_port and proxy_port.isdigit():
            plan.tail["port"] = int(proxy_port)
        elif not any("${PORT}" in w.text for w in args):
            plan.note("port 8080 guessed: the command publishes no port and the server is not "
                      "told ${PORT}; set `port` to the port it listens on in the container")


def _int_or_text(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def _docker_gpus(value: str) -> Any:
    """``--gpus`` as ``gpus``: None (all), a count, a list of ids, or "invalid"."""
    text = value.strip().strip("'")
    if text in ("all", '"all"'):
        return None
    if text.isdigit():
        return int(text)
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return "invalid"
    ids: list[Any] = []
    count: Any = None
    in_device = False
    for item in fields:
        key, sep, val = item.strip().partition("=")
        if sep and key == "device":
            ids += [v for v in val.split(",") if v]
            in_device = True
        elif sep and key == "count":
            count = None if val == "all" else int(val) if val.isdigit() else "invalid"
            in_device = False
        elif sep and key in ("driver", "capabilities"):
            in_device = False
        elif not sep and in_device and key:
            ids.append(key)
        elif not sep and key == "all":
            count = None
        else:
            return "invalid"
    if ids:
        return [int(i) if i.isdigit() else i for i in ids]
    return count




# --------------------------------------------------------------------------- the whole file


class _AnyEnv(Mapping[str, str]):
    """Every variable set: ``${env.X}`` must not fail a check made away from the server."""

    def __getitem__(self, key: str) -> str:
        return "set-at-run-time"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_SENTINEL = "__llamaswap_import_{}__"
_SENTINEL_LINE = re.compile(r"^( *)__llamaswap_import_(\d+)__:(.*)$")


class _Import:
    """One run of the import: plans, builds, checks with the loader, repeats until it loads."""

    def __init__(self, text: str, source: str, platform: str | None, base: Path,
                 environ: Mapping[str, str]) -> None:
        self.text = text
        self.source = source
        self.opts = _Options(platform, base, environ)
        _, doc = _load(text, source)
        #: Model ids as text, and the keys as the YAML wrote them (``1:`` is an int).
        self.keys = {str(k): k for k in doc["models"]}
        self.model_ids = list(self.keys)
        #: Models the loader refused after conversion: (reason, action).
        self.refused: dict[str, tuple[str, str]] = {}
        #: Kept keys the loader refused: location → message.
        self.bad_keys: dict[tuple[str, ...], str] = {}
        self.file_notes: list[str] = []

    def run(self) -> ImportResult:
        seen: set[tuple[str, str]] = set()
        for _ in range(len(self.model_ids) + 8):
            text, plans = self._build()
            problems = self._check(text)
            if not problems:
                if plans and all(p.status == "person" for p in plans.values()):
                    self._file_note("no model converted: the output loads, and serves nothing "
                                    "until a model is added")
                return self._result(text, plans, broken=False)
            progressed = False
            for field_, message in problems:
                if (field_, message) in seen:
                    continue
                seen.add((field_, message))
                progressed |= self._blame(field_, message, plans)
            if not progressed:
                for field_, message in problems:
                    note = f"the output does not load: {field_}: {message}" if field_ else \
                        f"the output does not load: {message}"
                    if note not in self.file_notes:
                        self.file_notes.append(note)
                return self._result(text, plans, broken=True)
        text, plans = self._build()
        return self._result(text, plans, broken=True)

    # -- checking --------------------------------------------------------------------------

    def _check(self, text: str) -> list[tuple[str, str]]:
        try:
            load_config_text(text, source="import", base_dir=self.opts.base, environ=_AnyEnv())
        except ConfigError as exc:
            issues = getattr(exc, "errors", None) or []
            return [(issue.field, issue.message) for issue in issues] or [("", str(exc))]
        return []

    def _blame(self, field_: str, message: str, plans: dict[str, _Plan]) -> bool:
        """Leave out the model, or comment out the kept key, that a loader problem is about.

        A problem with what the import wrote (or with a model's aliases, which llama-swap
        refuses alike) leaves the model to a person; one with a key kept as the user wrote it
        comments that key out. Returns False when nothing can be blamed."""
        if field_.startswith("models."):
            rest = field_[len("models."):]
            model_id = max((m for m in self.model_ids
                            if rest == m or rest.startswith((m + ".", m + "["))),
                           key=len, default=None)
            plan = plans.get(model_id) if model_id is not None else None
            if plan is None or plan.status == "person":
                return False
            where = rest[len(model_id):].lstrip(".")  # type: ignore[arg-type]
            key = re.split(r"[.\[]", where, maxsplit=1)[0]
            if plan.already or not key or key in plan.touched or key in ("aliases", "filters"):
                also = ""
                if key in ("aliases", "filters") and "alias" in message:
                    also = " (llama-swap refuses this too)"
                self.refused.setdefault(plan.model_id, (
                    f"the converted model does not load: {where or 'the model'}: {message}{also}",
                    "fix this in the llama-swap config and import again (or fix the output)"))
            else:
                self.bad_keys[("models", plan.model_id, key)] = message
            return True
        top = re.split(r"[.\[]", field_, maxsplit=1)[0]
        if not top or top == "models":
            return False
        _, doc = _load(self.text, self.source)
        if top not in doc:
            return False
        rest = field_[len(top):].lstrip(".")
        value = doc.get(top)
        sub = None
        if isinstance(value, dict) and rest and len(value) > 1:
            sub = max((str(k) for k in value if rest == str(k) or
                       rest.startswith((str(k) + ".", str(k) + "["))), key=len, default=None)
        if sub is None or top == "hooks":
            self.bad_keys[(top,)] = message
            return True
        self.bad_keys[(top, sub)] = message
        if all((top, str(k)) in self.bad_keys for k in value):
            # Nothing of it is left: comment out the key itself, with its children's reasons.
            self.bad_keys[(top,)] = "; ".join(dict.fromkeys(
                self.bad_keys.pop((top, str(k))) for k in value))
        return True

    # -- building --------------------------------------------------------------------------

    def _build(self) -> tuple[str, dict[str, _Plan]]:
        yaml, doc = _load(self.text, self.source)
        models: CommentedMap = doc["models"]
        global_macros = doc.get("macros")
        plans: dict[str, _Plan] = {}
        for model_id in self.model_ids:
            entry = models[self.keys[model_id]]
            if not isinstance(entry, CommentedMap):
                plans[model_id] = _Plan(model_id).person(
                    "it is not a mapping of settings", "write it as `ID: {cmd: …}`")
                continue
            plan = _plan_model(model_id, entry, global_macros, self.opts)
            if model_id in self.refused and plan.status != "person":
                plan.person(*self.refused[model_id])
            plans[model_id] = plan
        actions: dict[int, tuple[str, ...]] = {}
        aliases = {model_id: [str(a) for a in models[key]["aliases"]]
                   for model_id, key in self.keys.items() if isinstance(models[key], dict)
                   and isinstance(models[key].get("aliases"), list)}
        rewritten = self._macro_rewrites(doc, plans)
        for key, text in rewritten.items():
            holder = doc["macros"] if key[0] == "global" else models[key[1]]["macros"]
            holder[key[-1]] = _scalar_like(holder[key[-1]], text)
        for model_id in self.model_ids:
            plan = plans[model_id]
            if plan.status == "person":
                self._leave_out(models, self.keys[model_id], plan, actions)
            elif not plan.already:
                self._apply_plan(models[self.keys[model_id]], plan, rewritten, actions)
        self._unknown_keys(doc, plans, actions)
        self._fix_references(doc, plans, aliases, actions)
        for location, message in self.bad_keys.items():
            parent = doc
            for depth, part in enumerate(location[:-1]):
                if depth == 1 and location[0] == "models":
                    part = self.keys.get(part, part)  # the key as the YAML wrote it
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, CommentedMap) and location[-1] in parent:
                if location[0] == "models" and plans.get(location[1]) and \
                        plans[location[1]].status == "person":
                    continue
                _comment_out(parent, location[-1], actions,
                             f"left out by import: config check says: {message}")
        out = io.StringIO()
        yaml.dump(doc, out)
        return self._finish_text(out.getvalue(), actions), plans

    def _macro_rewrites(self, doc: CommentedMap,
                        plans: dict[str, _Plan]) -> dict[tuple[str, ...], str]:
        """Macros to rewrite where they are defined: used only in converted commands, as whole
        words, and changed alike by every use."""
        uses: dict[tuple[str, ...], list[tuple[_Ref, _Plan]]] = {}
        pinned: set[tuple[str, ...]] = set()
        for plan in plans.values():
            if plan.status == "person" or plan.source is None:
                continue
            pinned |= getattr(plan, "embedded", set())
            for ref in plan.source.refs():
                uses.setdefault(ref.key, []).append((ref, plan))
        pinned |= _macros_used_elsewhere(doc, plans)
        depth: dict[tuple[str, ...], int] = {}

        def depth_of(ref: _Ref) -> int:
            return 1 + max((depth_of(r) for r in ref.child.refs() if r is not ref), default=0)

        for key, items in uses.items():
            depth[key] = max(depth_of(ref) for ref, _ in items)
        rewritten: dict[tuple[str, ...], str] = {}
        for key in sorted(uses, key=lambda k: depth[k]):
            texts = {_emit(ref.child, plan.edits, rewritten) for ref, plan in uses[key]}
            if key in pinned or len(texts) != 1:
                continue
            text = texts.pop()
            original = uses[key][0][0].child.text
            if text != original and _tokenize(text):
                rewritten[key] = text
        return rewritten

    def _apply_plan(self, entry: CommentedMap, plan: _Plan,
                    rewritten: Mapping[tuple[str, ...], str],
                    actions: dict[int, tuple[str, ...]]) -> None:
        if entry.fa.flow_style():
            entry.fa.set_block_style()
        assert plan.source is not None
        text = _emit(plan.source, plan.edits, rewritten)
        if plan.rebuilt:
            text = " ".join(text[s:e].replace(_FOLD, " ") for s, e, _ in _tokenize(text))
        has_args = bool(_tokenize(text))
        own = {k for k, _ in entry.non_merged_items()}
        for key, reason in plan.drop.items():
            if key in own:
                if reason is None:
                    _delete(entry, key, actions)
                else:
                    _comment_out(entry, key, actions, reason)
        if has_args:
            original = entry["cmd"]
            if plan.rebuilt:
                entry["cmd"] = text
            else:
                entry["cmd"] = _scalar_like(original, text)
        # New keys go before `cmd`: the comments after `cmd` (often the next model's heading)
        # stay attached to it, so they keep their place.
        new = dict(plan.head)
        for name, value in plan.tail.items():
            if name == "volumes" and isinstance(entry.get("volumes"), list):
                entry["volumes"].extend(value)
            else:
                new[name] = value
        env_changed = bool(plan.env_replace or plan.env_set or plan.env_drop)
        env_value = self._env_value(entry, plan) if env_changed else None
        if env_value is not None:
            if "env" in own:
                entry["env"] = env_value
            else:
                new["env"] = env_value
        order = ["backend", "image", "platform", "gpus", "port", "volumes", "env", "docker",
                 "stopTimeout"]
        for name in sorted(new, key=lambda key: order.index(key) if key in order else len(order)):
            _put(entry, name, new[name], _position(entry, "cmd"))
        if env_changed and env_value is None and "env" in entry:
            if "env" in own:
                _delete(entry, "env", actions)
            else:
                entry["env"] = CommentedMap()  # merged from an anchor: override it with none
        if not has_args:
            _comment_out(entry, "cmd", actions,
                         "converted by import into the keys above (the image runs its own "
                         "command)")
        if plan.notes:
            _note_before(entry, plan.notes, actions)

    def _env_value(self, entry: CommentedMap, plan: _Plan) -> Any:
        """The model's new ``env``: None to delete it (or leave it, when nothing changed)."""
        current = entry.get("env")
        if plan.env_replace:
            return dict(plan.env_set) if plan.env_set else None
        if not plan.env_set and not plan.env_drop:
            return current
        if isinstance(current, list):
            items = CommentedSeq([item for item in current
                                  if str(item).partition("=")[0].strip() not in plan.env_drop
                                  and str(item).partition("=")[0].strip() not in plan.env_set])
            items.extend(f"{k}={v}" for k, v in plan.env_set.items())
            return items or None
        mapping = CommentedMap()
        if isinstance(current, dict):
            for k, v in current.items():
                if str(k) not in plan.env_drop:
                    mapping[k] = v
        for k, v in plan.env_set.items():
            mapping[k] = v
        return mapping or None

    def _leave_out(self, models: CommentedMap, key: Any, plan: _Plan,
                   actions: dict[int, tuple[str, ...]]) -> None:
        _comment_out(models, key, actions,
                     f"left out by import: needs a person: {plan.reason}", f"to do: {plan.action}")

    def _unknown_keys(self, doc: CommentedMap, plans: dict[str, _Plan],
                      actions: dict[int, tuple[str, ...]]) -> None:
        """Keys neither llama-swap nor this project has (llama-swap ignored them): commented
        out, so the output loads."""
        top_known = _known_keys(Config) | _LLAMA_SWAP_TOP
        for key in list(doc.keys()):
            if isinstance(key, str) and key not in top_known and not key.startswith("__llamaswap"):
                _comment_out(doc, key, actions, "left out by import: not a llama-swap key "
                             "(llama-swap ignored it) nor one of this project's")
                self._file_note(f"{key}: not a llama-swap key (llama-swap ignored it): "
                                "commented out")
        model_known = _known_keys(ModelConfig) | _LLAMA_SWAP_MODEL
        for model_id, plan in plans.items():
            entry = doc["models"].get(self.keys[model_id])
            if plan.status == "person" or not isinstance(entry, CommentedMap):
                continue
            for key in [k for k, _ in entry.non_merged_items()]:
                if isinstance(key, str) and key not in model_known and \
                        not key.startswith("__llamaswap"):
                    _comment_out(entry, key, actions, "left out by import: not a llama-swap key "
                                 "(llama-swap ignored it) nor one of this project's")
                    plan.note(f"{key}: not a llama-swap key (llama-swap ignored it): commented out")

    def _fix_references(self, doc: CommentedMap, plans: dict[str, _Plan],
                        aliases: Mapping[str, list[str]],
                        actions: dict[int, tuple[str, ...]]) -> None:
        """Group members and preloads that name a model left out: removed, with a comment
        (a group, or a preload, left with none is commented out whole)."""
        gone_names = set()
        answered = set()
        for model_id, plan in plans.items():
            names = {model_id, *aliases.get(model_id, [])}
            if plan.status == "person":
                gone_names |= names
            else:
                answered |= names
        holders: list[tuple[CommentedMap, str]] = [(doc, "groups")]
        router = doc.get("routing", {}).get("router") if isinstance(doc.get("routing"), dict) \
            else None
        if isinstance(router, dict) and isinstance(router.get("settings"), CommentedMap):
            holders.append((router["settings"], "groups"))
        for holder, holder_key in holders:
            groups = holder.get(holder_key)
            if not isinstance(groups, CommentedMap):
                continue
            for group_id in list(groups.keys()):
                group = groups[group_id]
                members = group.get("members") if isinstance(group, dict) else None
                if not isinstance(members, list):
                    continue
                gone = [str(m) for m in members if str(m) in gone_names]
                if not gone:
                    continue
                if len(gone) == len(members):
                    _comment_out(groups, group_id, actions,
                                 f"left out by import: every member ({', '.join(gone)}) needs a "
                                 "person")
                    self._file_note(f"group {group_id!r} commented out: all its members were "
                                    "left out")
                    continue
                for index in reversed(range(len(members))):
                    if str(members[index]) in gone_names:
                        del members[index]
                _note_at(group, "members", actions,
                         f"import: {', '.join(gone)} left out (needs a person)")
                self._file_note(f"group {group_id!r}: {', '.join(gone)} removed (left out)")
            if groups and all(str(k).startswith("__llamaswap") for k in groups):
                _comment_out(holder, holder_key, actions,
                             "left out by import: every group was left out")
        hooks = doc.get("hooks")
        startup = hooks.get("on_startup") if isinstance(hooks, dict) else None
        preload = startup.get("preload") if isinstance(startup, CommentedMap) else None
        if not isinstance(preload, list):
            return
        gone = [str(m) for m in preload if str(m) not in answered]
        if not gone:
            return
        if len(gone) == len(preload):
            _comment_out(startup, "preload", actions, "left out by import: no model it names is "
                         "here (left out, or unknown: llama-swap skipped those)")
        else:
            for index in reversed(range(len(preload))):
                if str(preload[index]) in gone:
                    del preload[index]
            _note_at(startup, "preload", actions,
                     f"import: {', '.join(gone)} left out (no such model here)")
        self._file_note(f"hooks.on_startup.preload: {', '.join(gone)} removed (left out, or no "
                        "model of that name: llama-swap skipped it)")

    def _file_note(self, text: str) -> None:
        if text not in self.file_notes:
            self.file_notes.append(text)

    def _finish_text(self, dumped: str, actions: dict[int, tuple[str, ...]]) -> str:
        header = ("# Converted from a llama-swap config by `llamaswap-docker config import`.\n"
                  "# Lines starting with `# import` say what was guessed; models and keys left "
                  "out are commented out where they were, with the reason.\n")
        return header + "\n".join(_render(dumped.split("\n"), actions))

    def _result(self, text: str, plans: dict[str, _Plan], broken: bool) -> ImportResult:
        reports = []
        for model_id in self.model_ids:
            plan = plans[model_id]
            for location, message in self.bad_keys.items():
                if location[:2] == ("models", model_id) and len(location) == 3 and \
                        plan.status != "person":
                    plan.note(f"{location[2]}: commented out: config check says: {message}")
            if plan.status == "person":
                # Notes on a conversion that did not happen would only distract.
                reports.append(ModelReport(model_id, "person", (), plan.reason, plan.action))
            else:
                status: Status = "noted" if plan.notes else "converted"
                reports.append(ModelReport(model_id, status, tuple(plan.notes)))
        notes = list(self.file_notes)
        for location, message in self.bad_keys.items():
            if any(location[:n] in self.bad_keys for n in range(1, len(location))):
                continue  # inside a key commented out whole
            if location[0] != "models":
                notes.append(f"{'.'.join(location)}: commented out: config check says: {message}")
        return ImportResult(text, tuple(reports), tuple(dict.fromkeys(notes)), broken)


# --------------------------------------------------------------------------- helpers

#: llama-swap's own keys (its config-schema.json), kept as written.
_LLAMA_SWAP_TOP = frozenset({
    "healthCheckTimeout", "logRequests", "logLevel", "logTimeFormat", "logToStdout",
    "metricsMaxInMemory", "captureBuffer", "store", "ui", "performance", "startPort",
    "sendLoadingState", "includeAliasesInList", "globalTTL", "unloadTimeout", "macros",
    "apiKeys", "upstream", "profiles", "selectors", "models", "hooks", "routing", "groups",
    "matrix", "peers",
})
_LLAMA_SWAP_MODEL = frozenset({
    "macros", "cmd", "cmdStop", "proxy", "name", "description", "env", "checkEndpoint", "ttl",
    "unloadTimeout", "compat", "useModelName", "filters", "aliases", "metadata",
    "concurrencyLimit", "sendLoadingState", "timeouts", "capabilities", "unlisted",
    "healthCheckTimeout",
})


def _known_keys(model: Any) -> set[str]:
    keys = {f.alias or name for name, f in model.model_fields.items()}
    keys |= set(getattr(model, "ignored_keys", {}) or {})
    return keys


def _macros_used_elsewhere(doc: CommentedMap, plans: dict[str, _Plan]) -> set[tuple[str, ...]]:
    """Macros referenced outside the converted commands (they must keep their value), with
    the macros their values reference in turn."""
    found: set[tuple[str, ...]] = set()

    def scan(value: Any, scope: str | None) -> None:
        if isinstance(value, str):
            for name in _ANY_MACRO.findall(value):
                found.add(("model", scope, name) if scope else ("global", name))
                found.add(("global", name))
        elif isinstance(value, dict):
            for item in value.values():
                scan(item, scope)
        elif isinstance(value, list):
            for item in value:
                scan(item, scope)

    for key, value in doc.items():
        if key not in ("models", "macros"):
            scan(value, None)
    for model_id, entry in doc["models"].items():
        if not isinstance(entry, dict):
            continue
        plan = plans.get(str(model_id))
        if plan is not None and plan.status == "person":
            continue
        for key, value in entry.items():
            if key == "macros" or (key in ("cmd", "cmdStop", "proxy", "env") and plan is not None
                                   and not plan.already):
                continue
            scan(value, str(model_id))
    # A macro whose value names another keeps that one's value too.
    macros = doc.get("macros") if isinstance(doc.get("macros"), dict) else {}
    changed = True
    while changed:
        changed = False
        for key in list(found):
            value = macros.get(key[-1]) if key[0] == "global" else None
            if isinstance(value, str):
                for name in _ANY_MACRO.findall(value):
                    if ("global", name) not in found:
                        found.add(("global", name))
                        changed = True
    return found


def _render(lines: list[str], actions: Mapping[int, tuple[str, ...]]) -> list[str]:
    """The dumped lines with each sentinel key turned into what its action says: a block
    commented out under its reason, a block deleted, or note lines."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _SENTINEL_LINE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, number, rest = match.group(1), int(match.group(2)), match.group(3)
        last = i
        for j in range(i + 1, len(lines)):
            line = lines[j]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= len(indent):
                break
            if line.strip():
                last = j
        inner = _render(lines[i + 1:last + 1], actions)
        action = actions[number]
        if action[0] == "comment":
            out += [f"{indent}# {text}" for text in action[2:]]
            out.append(f"{indent}# {action[1]}:{rest}".rstrip())
            out += [f"{indent}# {line[len(indent):]}".rstrip() if line.strip() else f"{indent}#"
                    for line in inner]
        elif action[0] == "note":
            out += [f"{indent}# {text}" for text in action[1:]]
        i = last + 1
    return out


def _put(entry: CommentedMap, key: str, value: Any, at: int) -> None:
    if any(k == key for k, _ in entry.non_merged_items()):
        entry[key] = value
    else:
        entry.insert(at, key, value)


def _position(parent: CommentedMap, key: Any) -> int:
    """``key``'s place in the mapping as written, for ``insert``: a merge (``<<: *x``) line
    before it counts too."""
    index = [k for k, _ in parent.non_merged_items()].index(key)
    merge = getattr(parent, merge_attrib, None)
    merge_pos = getattr(merge, "merge_pos", -1) if merge else -1
    return index + 1 if 0 <= merge_pos <= index else index


_counter = iter(range(1, 1 << 62))


def _rename(parent: CommentedMap, key: Any) -> int:
    """Put a numbered sentinel key where ``key`` was (value and comments kept)."""
    number = next(_counter)
    index = _position(parent, key)
    value = parent[key]
    comments = parent.ca.items.pop(key, None)
    del parent[key]
    sentinel = _SENTINEL.format(number)
    parent.insert(index, sentinel, value)
    if comments is not None:
        parent.ca.items[sentinel] = comments
    return number


def _key_text(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_ .:/+-]*", text) and \
        not text.endswith(" ") else '"' + text.replace('"', '\\"') + '"'


def _comment_out(parent: CommentedMap, key: Any, actions: dict[int, tuple[str, ...]],
                 *reasons: str) -> None:
    if _anchors(parent[key]):
        # Aliases elsewhere still name its anchor: the node leaves the tree (the dump then
        # defines the anchor where it is used first) and a copy of it becomes the comment.
        text = io.StringIO()
        YAML().dump({key: parent[key]}, text)
        index = _position(parent, key)
        del parent[key]
        number = next(_counter)
        parent.insert(index, _SENTINEL.format(number), None)
        actions[number] = ("note", *reasons, *text.getvalue().rstrip("\n").split("\n"))
        return
    number = _rename(parent, key)
    actions[number] = ("comment", _key_text(key), *reasons)


def _anchors(value: Any) -> bool:
    """Whether ``value`` or anything in it carries an anchor (``&name``)."""
    anchor = getattr(value, "anchor", None)
    if anchor is not None and getattr(anchor, "value", None):
        return True
    if isinstance(value, dict):
        return any(_anchors(v) for v in value.values())
    if isinstance(value, list):
        return any(_anchors(v) for v in value)
    return False


def _delete(parent: CommentedMap, key: Any, actions: dict[int, tuple[str, ...]]) -> None:
    number = _rename(parent, key)
    actions[number] = ("delete",)


def _note_at(parent: CommentedMap, key: Any, actions: dict[int, tuple[str, ...]],
             note: str) -> None:
    """A comment line above ``key``."""
    number = next(_counter)
    parent.insert(_position(parent, key), _SENTINEL.format(number), None)
    actions[number] = ("note", note)


def _note_before(entry: CommentedMap, notes: list[str],
                 actions: dict[int, tuple[str, ...]]) -> None:
    """Notes as comments above the model's first key."""
    number = next(_counter)
    sentinel = _SENTINEL.format(number)
    entry.insert(0, sentinel, None)
    actions[number] = ("note", *(f"import: {note}" for note in notes))
