"""The YAML schema of llamaswap-docker's config file, as typed pydantic models.

Names follow llama-swap (github.com/mostlygeek/llama-swap): YAML keys are camelCase
(``healthCheckTimeout``, ``checkEndpoint``...), Python attributes are snake_case. What
differs is what a model *is*: an image started as a Docker container, instead of a
command started as a local process. So ``proxy`` and ``cmdStop`` are accepted and ignored
(``ignored_keys``: the loader warns once per key, saying what replaces it), a ``cmd`` that
runs ``docker``/``podman`` is refused, and ``image``, ``port``, ``volumes`` and ``docker``
are new.

These models validate values that have already had their macros expanded (see
``macros.py``); ``loader.py`` turns validation errors into ``file:line: field`` messages.
Cross-field checks (aliases, groups, preload) are ``Config.reference_issues()``; they run
when a ``Config`` is validated, unless the loader defers them to report them with lines.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .backends import GPU_PLATFORMS, Backend, BackendPreset, Platform, backend_preset
from .matrix import VAR_KEY_RE, MatrixError, Program, compile_matrix

__all__ = [
    "resolve_volume",
    "DEFAULT_GROUP_ID",
    "RESERVED_MACROS",
    "RESERVED_LABEL_PREFIX",
    "PROTECTED_PARAMS",
    "DEFER_REFERENCE_CHECKS",
    "Loc",
    "LogLevel",
    "PullPolicy",
    "Routing",
    "VulkanDriver",
    "Gpus",
    "OnShutdown",
    "VolumeMount",
    "ContainerOptions",
    "ModelFilters",
    "Timeouts",
    "ModelTimeouts",
    "Capabilities",
    "ModelConfig",
    "GroupConfig",
    "OnStartupHooks",
    "HooksConfig",
    "DockerSettings",
    "GpuDeclaration",
    "EngineConfig",
    "EngineTls",
    "MatrixConfig",
    "RoutingConfig",
    "RouterConfig",
    "SchedulerConfig",
    "Config",
    "split_command",
    "parse_byte_size",
    "format_loc",
]

#: Group id of the implicit group that holds every model not listed in ``groups``.
DEFAULT_GROUP_ID = "(default)"
#: Built-in macros; they cannot be defined in ``macros``.
RESERVED_MACROS = frozenset({"PORT", "MODEL_ID"})
#: Container labels under this prefix are how the runtime recognises its containers.
RESERVED_LABEL_PREFIX = "io.llamaswap."
#: Request parameters that filters can neither strip nor set (routing depends on them).
PROTECTED_PARAMS = frozenset({"model"})
#: Validation-context key: skip ``Config.reference_issues()`` (the loader runs it itself).
DEFER_REFERENCE_CHECKS = "defer_reference_checks"
#: Programs that run containers: a model's ``cmd`` runs inside one, so it never starts with them.
CONTAINER_CLIS = frozenset({"docker", "podman", "nerdctl", "docker-compose", "podman-compose"})

#: A location in the config data: mapping keys and list indexes, as pydantic's ``loc``.
Loc = tuple[str | int, ...]

LogLevel = Literal["debug", "info", "warn", "error"]
PullPolicy = Literal["always", "missing", "never"]
Routing = Literal["auto", "host", "network"]
OnShutdown = Literal["stop", "keep"]
#: How a ``platform: vulkan`` container reaches its GPU: /dev/dri (Mesa: AMD, Intel) or NVIDIA's
#: container toolkit (a device request with the graphics capability).
VulkanDriver = Literal["mesa", "nvidia"]
#: ``gpus`` after validation: "all", a count, or GPU indices / UUIDs as strings; None: default.
Gpus = str | int | list[str] | None

_MACRO_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INSTANCE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# Docker's own rule for volume names.
_VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_VOLUME_OPTIONS = frozenset(
    "ro rw z Z nocopy consistent cached delegated shared slave private rshared rslave rprivate".split()
)
# Docker's byte sizes: "512m", "16g", "1.5gb", "2GiB", "1024" (bytes); units are binary.
_BYTE_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


# --------------------------------------------------------------------------- helpers


def format_loc(loc: Loc) -> str:
    """Render a location as a dotted path: ``models.llama.volumes[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def split_command(text: str) -> list[str]:
    """Split a llama-swap style command string into arguments.

    Lines whose first non-blank character is ``#`` are comments, and a trailing
    backslash joins a line to the next; the rest is split like a POSIX shell would.
    """
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        # llama-swap replaces the continuation with a space rather than leaning on
        # shlex, so "a \<newline>  # comment" cannot swallow the next argument.
        lines.append(stripped[:-1] + " " if stripped.endswith("\\") else line)
    try:
        return shlex.split("\n".join(lines))
    except ValueError as exc:
        raise ValueError(f"cannot split command: {exc}") from None


def parse_byte_size(value: str | int) -> int:
    """Parse a Docker byte size (``"16g"``, ``"512m"``, ``1073741824``) into bytes."""
    if isinstance(value, bool):  # bool is an int; "shmSize: yes" is a mistake
        raise ValueError("expected a size such as '512m' or '16g', or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    match = _BYTE_SIZE_RE.match(value)
    if not match:
        raise ValueError(f"invalid size {value!r}: expected e.g. '512m', '16g' or bytes")
    number, unit = match.groups()
    return int(float(number) * _BYTE_UNITS[(unit or "").lower()])


def _scalar_to_str(value: Any) -> Any:
    """Stringify YAML scalars (``8080``, ``true``) where the target wants text.

    Booleans are rendered as YAML writes them ("true"), not as Python does ("True").
    Non-scalars are returned unchanged so that pydantic reports them precisely.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _str_list(value: Any) -> Any:
    if isinstance(value, list):
        return [_scalar_to_str(item) for item in value]
    return value


def _str_map(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {key: "" if item is None else _scalar_to_str(item) for key, item in value.items()}
    return value


def _no_blank(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError(f"{kind} {value!r} must be non-empty and contain no whitespace")
        return value

    return AfterValidator(check)


_GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")  # 0, GPU-8f6d..., MIG-.../1/0
_GPUS_FORMS = "expected 'all', a count such as 2, or a list of GPU indices / UUIDs such as [0, 1]"


def _normalize_gpus(value: Any) -> Any:
    """``gpus`` as written → ``"all"``, a count, or a list of id strings (indices or UUIDs).

    A bare number is a count, as in ``docker run --gpus 2``; a list, or a comma-separated
    string such as ``"0,1"``, names GPUs.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(_GPUS_FORMS)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a GPU count must be at least 1, not {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "all":
            return "all"
        if text.isdigit():
            return _normalize_gpus(int(text))
        items: list[Any] = [part.strip() for part in text.split(",")]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(_GPUS_FORMS)
    if not items:
        raise ValueError(f"the list of GPUs is empty: {_GPUS_FORMS}")
    ids: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            ids.append(str(item))
        elif isinstance(item, str) and _GPU_ID_RE.match(item.strip()):
            ids.append(item.strip())
        else:
            raise ValueError(f"GPU {item!r} must be an index (0, 1...) or a UUID (GPU-...)")
    duplicates = sorted({gpu for gpu in ids if ids.count(gpu) > 1})
    if duplicates:
        raise ValueError(f"GPU(s) listed twice: {', '.join(duplicates)}")
    return ids


def _check_macro_name(name: str) -> str:
    if not _MACRO_NAME_RE.match(name):
        raise ValueError(f"macro name {name!r} must match ^[A-Za-z0-9_-]+$")
    if name in RESERVED_MACROS:
        raise ValueError(f"macro name {name!r} is reserved (built-in)")
    return name


def _check_macro_value(value: Any) -> Any:
    # One clear message instead of one per member of the union below.
    if value is None or isinstance(value, (dict, list)):
        raise ValueError("macro value must be a string, number or boolean")
    return value


def _check_model_id(value: str) -> str:
    # llama-swap takes any string ("GPT-OSS 20B Vulkan"); only what cannot travel in a URL
    # path, a header or a log line whole is refused.
    if not value.strip():
        raise ValueError("model id must not be empty")
    if value != value.strip():
        raise ValueError(f"model id {value!r} must not start or end with whitespace")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"model id {value!r} must not contain control characters")
    return value


ModelId = Annotated[str, AfterValidator(_check_model_id)]
GroupId = Annotated[str, _no_blank("group id")]
Alias = Annotated[str, _no_blank("alias")]
ApiKey = Annotated[str, _no_blank("api key")]
MacroName = Annotated[str, AfterValidator(_check_macro_name)]
MacroValue = Annotated[str | int | float | bool, BeforeValidator(_check_macro_value)]
Macros = dict[MacroName, MacroValue]
StrList = Annotated[list[str], BeforeValidator(_str_list)]
StrMap = Annotated[dict[str, str], BeforeValidator(_str_map)]


def _check_routing_name(value: str) -> str:
    if not value.strip():
        raise ValueError("names of peers, profiles and selectors must not be empty")
    return value


#: A peer, profile or selector name: any non-empty string, as in llama-swap.
RoutingName = Annotated[str, AfterValidator(_check_routing_name)]


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class VolumeMount:
    """One parsed ``volumes`` entry: ``source:target[:options]``."""

    source: str  # an absolute host path, or the name of a Docker volume
    target: str  # absolute path inside the container
    read_only: bool = False
    options: tuple[str, ...] = ()  # all options as written, "ro"/"rw" included

    @property
    def is_bind(self) -> bool:
        """True for a host path (bind mount), False for a named volume."""
        return self.source.startswith("/")

    @classmethod
    def parse(cls, spec: str) -> VolumeMount:
        """Parse and check a Docker short-form volume string."""
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"volume {spec!r} must be 'host:container' or 'host:container:options'")
        source, target = parts[0], parts[1]
        options = tuple(opt.strip() for opt in parts[2].split(",")) if len(parts) == 3 else ()
        if not source:
            raise ValueError(f"volume {spec!r}: the host path or volume name is empty")
        if not source.startswith("/") and not _VOLUME_NAME_RE.match(source):
            raise ValueError(
                f"volume {spec!r}: {source!r} is neither an absolute host path nor a volume name"
            )
        if not target.startswith("/"):
            raise ValueError(f"volume {spec!r}: the container path {target!r} must be absolute")
        unknown = [opt for opt in options if opt not in _VOLUME_OPTIONS]
        if unknown:
            raise ValueError(f"volume {spec!r}: unknown option(s) {', '.join(map(repr, unknown))}")
        if "ro" in options and "rw" in options:
            raise ValueError(f"volume {spec!r}: 'ro' and 'rw' exclude each other")
        return cls(source=source, target=target, read_only="ro" in options, options=options)


def resolve_volume(spec: str, base: str | os.PathLike[str]) -> str:
    """``spec`` with a relative (``./``, ``../``) or ``~`` host path made absolute, as docker
    compose does: against ``base``, the folder of the file that says it.

    Raises:
        ValueError: ``~unknownuser``.
    """
    source, sep, rest = spec.partition(":")
    if not (sep and (source in (".", "..") or source.startswith(("./", "../", "~")))):
        return spec
    if source.startswith("~"):
        try:
            resolved = Path(source).expanduser()
        except RuntimeError as exc:  # ~unknownuser
            raise ValueError(f"volume {spec!r}: cannot expand {source!r}: {exc}") from None
    else:
        resolved = Path(base) / source
    # abspath, not resolve(): the folder the user named, symlinks and all.
    return f"{os.path.abspath(resolved)}:{rest}"


def _check_volume(spec: str, info: ValidationInfo) -> str:
    # The loader passes the config file's folder as "base_dir" (else: the working directory).
    spec = resolve_volume(spec, (info.context or {}).get("base_dir") or Path.cwd())
    VolumeMount.parse(spec)
    return spec


def _check_device(spec: str) -> str:
    if "=" in spec and not spec.startswith("/"):
        return spec  # a CDI device name, e.g. "nvidia.com/gpu=all"
    parts = spec.split(":")
    if len(parts) > 3 or not all(part.startswith("/") for part in parts[:2]):
        raise ValueError(f"device {spec!r} must be '/host/path[:/container/path[:rwm]]'")
    if len(parts) == 3 and not (parts[2] and set(parts[2]) <= set("rwm")):
        raise ValueError(f"device {spec!r}: permissions must be a combination of 'r', 'w', 'm'")
    return spec


Volume = Annotated[str, AfterValidator(_check_volume)]
#: A byte size: a number of bytes or Docker's form ("64m", "1g").
ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
#: Request bodies larger than this are refused with 413 (``maxRequestBodySize``).
DEFAULT_MAX_REQUEST_BODY_SIZE = 64 * 1024 * 1024
Device = Annotated[str, AfterValidator(_check_device)]


def _positive_size(value: int) -> int:
    if value <= 0:
        raise ValueError("must be more than 0 bytes, e.g. '24GiB'")
    return value


#: A memory size: bytes or Docker's form ("24g", "24GiB"), more than 0.
MemorySize = Annotated[int, BeforeValidator(parse_byte_size), AfterValidator(_positive_size)]


# --------------------------------------------------------------------------- models


class _Schema(BaseModel):
    """Base of every config model: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )

    #: Keys known to be wrong here, with the hint the loader shows instead of
    #: "unknown field" (mostly llama-swap keys that make no sense with containers).
    unsupported_keys: ClassVar[dict[str, str]] = {}
    #: llama-swap keys with no meaning for containers: accepted and dropped, each with what
    #: replaces it here; the loader warns once per key written (``config/loader.py``).
    ignored_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored_keys(cls, data: Any) -> Any:
        ignored = cls.ignored_keys
        if ignored and isinstance(data, dict) and not ignored.keys().isdisjoint(data):
            return {key: value for key, value in data.items() if key not in ignored}
        return data


class ContainerOptions(_Schema):
    """Per-model ``docker:`` block: extra options for the model's container."""

    shm_size: int | None = None  # bytes; YAML may say "16g"
    ipc: str | None = None  # e.g. "host"
    memory: int | None = None  # bytes; YAML may say "8g"
    cpus: float | None = Field(None, gt=0)
    labels: StrMap = {}
    user: str | None = None
    entrypoint: list[str] | None = None  # None: the image's; []: no entrypoint
    devices: list[Device] = []
    group_add: StrList = []
    runtime: str | None = None
    extra_hosts: StrMap = {}  # hostname -> IP (or "host-gateway")
    privileged: bool = False
    cap_add: list[str] = []
    security_opt: list[str] = []  # e.g. "seccomp=unconfined" (vLLM's ROCm image)
    # `docker run --ulimit`, as docker compose writes it: name → one limit (soft and hard) or
    # {soft, hard}; -1 is unlimited (`memlock: -1` for pinned GPU memory).
    ulimits: dict[str, tuple[int, int]] = {}
    # `docker run --env-file`: files of KEY=VALUE lines (relative paths: from the config's
    # folder), read when the config loads; `env` wins over them, as -e wins over --env-file.
    env_file: list[str] = []
    _env_from_files: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("ulimits", mode="before")
    @classmethod
    def _ulimit_ranges(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        ranges: dict[Any, Any] = {}
        for name, limit in value.items():
            if isinstance(limit, dict) and set(limit) == {"soft", "hard"}:
                ranges[name] = (limit["soft"], limit["hard"])
            elif isinstance(limit, str) and ":" in limit:
                ranges[name] = tuple(limit.split(":", 1))
            elif isinstance(limit, list) and len(limit) == 2:  # as `config show` prints it
                ranges[name] = tuple(limit)
            elif isinstance(limit, (int, str)) and not isinstance(limit, bool):
                ranges[name] = (limit, limit)
            else:
                raise ValueError(f"ulimit {name!r} must be a number, 'soft:hard' or "
                                 "{soft: N, hard: N}")
        return ranges

    @field_validator("env_file", mode="before")
    @classmethod
    def _env_file_paths(cls, value: Any, info: ValidationInfo) -> Any:
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list):
            return value
        base = (info.context or {}).get("base_dir") or Path.cwd()
        return [os.path.abspath(Path(base) / os.path.expanduser(path))
                if isinstance(path, str) else path for path in paths]

    @model_validator(mode="after")
    def _read_env_files(self) -> ContainerOptions:
        # Docker's env-file format: KEY=VALUE taken verbatim, `#` lines skipped, a bare KEY
        # copied from this process's environment when set there.
        for path in self.env_file:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read env file {path}: {exc.strerror or exc}") from None
            for line in lines:
                line = line.lstrip()
                if not line or line.startswith("#"):
                    continue
                key, sep, val = line.partition("=")
                if sep:
                    self._env_from_files[key] = val
                elif key.rstrip() in os.environ:
                    self._env_from_files[key.rstrip()] = os.environ[key.rstrip()]
        return self

    @property
    def env_from_files(self) -> dict[str, str]:
        """The variables ``env_file`` sets, in file order (a later file wins)."""
        return dict(self._env_from_files)

    @field_validator("shm_size", "memory", mode="before")
    @classmethod
    def _byte_size(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, float) else parse_byte_size(value)

    @field_validator("entrypoint", mode="before")
    @classmethod
    def _split_entrypoint(cls, value: Any) -> Any:
        return split_command(value) if isinstance(value, str) else _str_list(value)

    @field_validator("labels")
    @classmethod
    def _no_reserved_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        reserved = [key for key in labels if key.startswith(RESERVED_LABEL_PREFIX)]
        if reserved:
            raise ValueError(
                f"label(s) {', '.join(map(repr, reserved))} use the reserved prefix "
                f"{RESERVED_LABEL_PREFIX!r}"
            )
        return labels


class Timeouts(_Schema):
    """``timeouts:`` of a model or a peer (llama-swap's names): seconds to open a connection
    and to wait for the response headers once the request is sent. None: the default of
    where it is used; 0: no limit (as in llama-swap)."""

    connect: float | None = Field(None, ge=0)
    response_header: float | None = Field(None, ge=0, alias="responseHeader")


class ModelTimeouts(Timeouts):
    """A model's ``timeouts:``. ``connect`` (default 10 s) and ``responseHeader`` (default:
    no limit) bound the hop to its container; llama-swap's other transport settings have no
    meaning for a container reached over plain HTTP, and are accepted with a warning."""

    ignored_keys: ClassVar[dict[str, str]] = {
        "keepalive": "ignored: connections to model servers are plain keep-alive HTTP/1.1, "
        "dropped after 3 s idle (before the servers' own 5 s idle close)",
        "tlsHandshake": "ignored: the proxy speaks plain HTTP to model containers, there is "
        "no TLS handshake",
        "idleConn": "ignored: idle connections to model servers are dropped after 3 s "
        "(before the servers' own 5 s idle close)",
        "expectContinue": "ignored: request bodies are read whole before they are sent, so "
        "there is no 100-continue wait",
    }


#: What a model takes in or puts out (llama-swap's ``capabilities.in`` / ``out``).
Modality = Literal["text", "audio", "image"]


class Capabilities(_Schema):
    """``capabilities:`` what a model accepts and produces, for clients reading /v1/models
    (llama-swap's block; rendered as its ``architecture``, ``capabilities``,
    ``supported_parameters`` and ``context_length`` fields)."""

    in_: list[Modality] = Field([], alias="in")
    out: list[Modality] = []
    tools: bool = False  # function calling
    reranker: bool = False  # serves /v1/rerank
    context: int = Field(0, ge=0)  # the largest context, in tokens; 0: not said

    @property
    def empty(self) -> bool:
        """Nothing said: llama-swap renders no field for an all-zero block."""
        return not (self.in_ or self.out or self.tools or self.reranker or self.context)


class ModelFilters(_Schema):
    """Request rewriting: parameters to strip from, or force into, every request."""

    # "strip_params" (llama-swap's older spelling) is accepted too, as the field name.
    strip_params: str = ""  # comma-separated, as in llama-swap
    # A key written "name?" sets the parameter only when the request does not carry it.
    set_params: dict[str, Any] = {}
    # Parameters by the name the client asked for, applied after setParams; on a model, every
    # key but the model's own id is also an alias of it (llama-swap's setParamsByID).
    set_params_by_id: dict[str, dict[str, Any]] = Field({}, alias="setParamsByID")

    @field_validator("set_params_by_id", mode="before")
    @classmethod
    def _null_is_no_params(cls, value: Any) -> Any:
        # `"${MODEL_ID}:plain":` with nothing under it: an alias that sets nothing.
        if isinstance(value, dict):
            return {key: {} if params is None else params for key, params in value.items()}
        return value

    @field_validator("set_params")
    @classmethod
    def _set_one_way(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _check_set_keys(params)

    @field_validator("set_params_by_id")
    @classmethod
    def _set_one_way_by_id(cls, by_id: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, params in by_id.items():
            if not name.strip():
                raise ValueError("setParamsByID keys are model names and must not be empty")
            _check_set_keys(params, f" (under {name!r})")
        return by_id

    @property
    def stripped_params(self) -> list[str]:
        """Parameters to remove: sorted, de-duplicated, never ``model``."""
        names = {name.strip() for name in self.strip_params.split(",")}
        return sorted(name for name in names if name and name not in PROTECTED_PARAMS)

    @property
    def effective_set_params(self) -> dict[str, Any]:
        """Parameters to set, without protected ones (llama-swap ignores those too); a key
        ending in ``?`` is set only where the request lacks it."""
        return _unprotected(self.set_params)

    def set_params_for(self, name: str) -> dict[str, Any]:
        """``setParamsByID``'s parameters for the requested ``name`` (protected ones left
        out); empty when it has none."""
        params = self.set_params_by_id.get(name)
        return _unprotected(params) if params else {}

    @property
    def rewrites(self) -> bool:
        """Whether these filters may change a request body at all."""
        return bool(self.stripped_params or self.effective_set_params or self.set_params_by_id)


def _unprotected(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k.removesuffix("?") not in PROTECTED_PARAMS}


def _check_set_keys(params: dict[str, Any], where: str = "") -> dict[str, Any]:
    for key in params:
        name = key.removesuffix("?")
        if not name:
            raise ValueError(f"{key!r} names no parameter{where}")
        if key.endswith("?") and name in params:
            raise ValueError(f"{name!r} is set both always and only-if-absent ({name!r} and "
                             f"{key!r}){where}: keep one")
    return params


class ModelConfig(_Schema):
    """One entry of ``models:``: an image, how to run it, and how to talk to it."""

    ignored_keys: ClassVar[dict[str, str]] = {
        "proxy": "ignored: the proxy reaches the container itself; set `port` to the port "
        "the server listens on inside the container (${PORT} is that port)",
        "cmdStop": "ignored: containers are stopped through the Docker API (SIGTERM, then "
        "SIGKILL after `unloadTimeout` seconds)",
        "tags": "ignored (llama-swap ignores it too): put labels under `metadata`, which "
        "/v1/models shows",
    }

    # What runs, and on what: declared first so later fields' validators can see them.
    backend: Backend = "custom"  # a preset fills image, port, env... (config/backends.py)
    platform: Platform = "cpu"  # picks the image tag and the GPU device options
    vulkan_driver: VulkanDriver = "mesa"  # platform vulkan: /dev/dri (mesa) or NVIDIA's
    gpus: Gpus = None  # None: every GPU of a GPU platform
    # The engine (a name under `engines:`) it runs on; None: the placement policy chooses.
    engine: str | None = Field(None, min_length=1)
    # GPU memory the model needs (None: estimated from its GGUF or vLLM flags, then
    # measured after a first load); split evenly over its GPUs.
    vram: MemorySize | None = None
    # None: the backend preset's image (validate_default runs _image_or_preset).
    image: str = Field(None, min_length=1, validate_default=True)  # type: ignore[assignment]
    cmd: list[str] = []  # [] = the image's default command
    port: int = Field(8080, ge=1, le=65535)  # the port the server listens on in the container
    env: dict[str, str] = {}
    volumes: list[Volume] = []
    name: str = ""
    description: str = ""
    aliases: list[Alias] = []
    ttl: int = Field(-1, ge=-1)  # -1: globalTTL, 0: never unload, N: seconds idle
    check_endpoint: str = "/health"  # "none": no health check
    unlisted: bool = False
    metadata: dict[str, Any] = {}  # llama-swap's free-form data, shown in /v1/models as "meta"
    use_model_name: str = ""
    concurrency_limit: int = Field(0, ge=0)  # 0: unlimited
    max_request_body_size: ByteSize | None = None  # None: the global maxRequestBodySize
    stall_timeout: int | None = Field(None, ge=1)  # None: the global stallTimeout
    # Variable the server reads an API key from (None: the backend's; "": none). Each start
    # gets a random key there, sent by the proxy only: a direct call to the container is 401.
    upstream_key_env: str | None = Field(None, pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")
    send_loading_state: bool | None = None  # None: the global sendLoadingState
    stop_timeout: int | None = Field(None, ge=0)  # None: unloadTimeout, else docker.stopTimeout
    # llama-swap's name of the same grace (seconds from SIGTERM to SIGKILL on unload); 0 and
    # None: the global unloadTimeout, as in llama-swap.
    unload_timeout: int | None = Field(None, ge=0)
    health_check_timeout: int | None = Field(None, ge=1)  # None: the global healthCheckTimeout
    timeouts: ModelTimeouts = ModelTimeouts()  # connect / responseHeader to the model's server
    capabilities: Capabilities = Capabilities()  # shown in /v1/models
    # vLLM sleep mode: evicting the model puts it to sleep (level 1: weights to CPU RAM, level
    # 2: weights dropped) instead of stopping its container; the next request wakes it.
    sleep_mode: Literal[0, 1, 2] = 0
    sleep_ttl: int = Field(0, ge=0, alias="sleepTTL")  # seconds it may stay asleep; 0: no limit
    filters: ModelFilters = ModelFilters()
    macros: Macros = {}
    docker: ContainerOptions = ContainerOptions()

    @field_validator("unload_timeout")
    @classmethod
    def _one_stop_grace(cls, value: int | None, info: ValidationInfo) -> int | None:
        if not value:
            return None
        stop = info.data.get("stop_timeout")
        if stop is not None and stop != value:
            raise ValueError(f"unloadTimeout ({value}) and stopTimeout ({stop}) are the same "
                             "setting, the seconds between SIGTERM and SIGKILL: keep one")
        return value

    @field_validator("vulkan_driver")
    @classmethod
    def _vulkan_driver_needs_vulkan(cls, value: str, info: ValidationInfo) -> str:
        platform = info.data.get("platform")
        if value != "mesa" and platform is not None and platform != "vulkan":
            raise ValueError(f"vulkanDriver applies to platform 'vulkan' only, not {platform!r}")
        return value

    @field_validator("sleep_mode")
    @classmethod
    def _sleep_needs_the_endpoints(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("backend") == "llama.cpp":
            raise ValueError("llama-server has no /sleep and /wake_up: sleepMode applies to "
                             "backend vllm, or custom servers that speak vLLM's endpoints")
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _normalize_gpus(cls, value: Any) -> Any:
        return _normalize_gpus(value)

    @field_validator("gpus")
    @classmethod
    def _gpus_fit_platform(cls, value: Any, info: ValidationInfo) -> Any:
        platform = info.data.get("platform")
        if value is None or platform is None:
            return value
        if platform not in GPU_PLATFORMS:
            raise ValueError(
                f"platform {platform!r} has no GPUs: set `platform` "
                f"({', '.join(sorted(GPU_PLATFORMS))}) or remove `gpus`"
            )
        by_index_only = platform == "intel" or (
            platform == "vulkan" and info.data.get("vulkan_driver") != "nvidia"
        )
        if by_index_only and isinstance(value, list):
            named = [gpu for gpu in value if not gpu.isdigit()]
            if named:
                raise ValueError(
                    f"platform {platform!r} selects GPUs by index only (0, 1...), "
                    f"not {', '.join(map(repr, named))}"
                )
        return value

    @field_validator("image", mode="before")
    @classmethod
    def _image_or_preset(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        backend, platform = info.data.get("backend"), info.data.get("platform")
        if backend is None or platform is None:
            return "-"  # backend or platform is invalid and reported; don't pile on
        preset = backend_preset(backend, platform)
        if preset is None:
            # Reported by the loader as "missing required field 'image'".
            raise PydanticCustomError("missing", "Field required")
        if preset.image is None:
            raise ValueError(
                f"backend {backend!r} publishes no image for platform {platform!r}: "
                f"set `image` to one you built"
            )
        return preset.image

    @model_validator(mode="after")
    def _apply_backend_preset(self) -> ModelConfig:
        """Fill what the user left unset from the backend's preset (see config/backends.py).

        The user's own values win: scalars they set are kept, ``env`` merges by name and
        ``volumes`` by container path with their entry winning, ``docker`` options by field.
        ``model_fields_set`` keeps saying what the user wrote.
        """
        preset = self.preset
        if preset is None:
            return self
        written = self.model_fields_set
        filled: dict[str, Any] = {}
        if "port" not in written:
            filled["port"] = preset.port
        if "check_endpoint" not in written:
            filled["check_endpoint"] = preset.check_endpoint
        filled["env"] = {**preset.environment(filled.get("port", self.port)), **self.env}
        if self.backend == "vllm" and self.sleep_mode:
            # https://docs.vllm.ai/en/latest/features/sleep_mode/ : the server needs
            # --enable-sleep-mode, and serves /sleep, /wake_up and /is_sleeping only in
            # development mode (VLLM_SERVER_DEV_MODE=1).
            filled["env"].setdefault("VLLM_SERVER_DEV_MODE", "1")
            if "--enable-sleep-mode" not in self.cmd:
                filled["cmd"] = [*self.cmd, "--enable-sleep-mode"]
        targets = {VolumeMount.parse(spec).target for spec in self.volumes}
        extra = [spec for spec in preset.volumes if VolumeMount.parse(spec).target not in targets]
        filled["volumes"] = [*extra, *self.volumes]
        docker_written = self.docker.model_fields_set
        docker_filled = {
            name: value for name, value in preset.docker.items() if name not in docker_written
        }
        # "A large shm" is the documented alternative to ipc: host; don't override it.
        if "shm_size" in docker_written:
            docker_filled.pop("ipc", None)
        if docker_filled:
            docker = self.docker.model_copy()
            docker.__dict__.update(docker_filled)  # frozen; unset fields stay unset
            filled["docker"] = docker
        self.__dict__.update(filled)  # frozen: write through, keep model_fields_set as written
        return self

    @property
    def preset(self) -> BackendPreset | None:
        """The backend's preset for this platform; None for ``backend: custom``."""
        return backend_preset(self.backend, self.platform)

    @property
    def key_env(self) -> str | None:
        """Where this model's server takes its per-start API key; None: it takes none."""
        name = self.upstream_key_env
        if name is None:
            name = self.preset.key_env if self.preset else None
        # A key the user set (in env, or --api-key in cmd, which beats the variable) is theirs:
        # the proxy does not replace it and clients send it themselves.
        if not name or name in self.env or "--api-key" in self.cmd:
            return None
        return name

    @property
    def pass_env(self) -> tuple[str, ...]:
        """Variables copied from the proxy's environment when set there (e.g. ``HF_TOKEN``)."""
        preset = self.preset
        return tuple(name for name in preset.pass_env if name not in self.env) if preset else ()

    @field_validator("cmd", mode="before")
    @classmethod
    def _split_cmd(cls, value: Any) -> Any:
        if value is None:
            return []
        return split_command(value) if isinstance(value, str) else _str_list(value)

    @field_validator("cmd")
    @classmethod
    def _not_a_container_cli(cls, cmd: list[str]) -> list[str]:
        # llama-swap's `cmd: docker run … IMAGE ARGS` (with cmdStop) is its way to containers;
        # here the model is the container, and a container CLI inside it can never start one.
        if cmd and posixpath.basename(cmd[0]) in CONTAINER_CLIS:
            words = " ".join(cmd[:2])
            raise ValueError(
                f"cmd starts with {words!r}, but each model here already is a container: put "
                "the image in `image` (or use `backend: llama.cpp` / `vllm`), its options in "
                "the model's keys (`volumes`, `env`, `gpus`, `docker:`) and only the server's "
                "arguments in `cmd`; `llamaswap-docker config import` converts it")
        return cmd

    @field_validator("env", mode="before")
    @classmethod
    def _env_from_list(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return _str_map(value)
        # llama-swap's form: ["KEY=value", ...]; later entries win, as with `docker run -e`.
        env: dict[str, str] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {index} must be a 'KEY=VALUE' string")
            key, sep, val = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"item {index} ({item!r}) is not in 'KEY=VALUE' form")
            env[key.strip()] = val
        return env

    @field_validator("check_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value != "none" and not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/' (or be 'none' to skip health checks)")
        return value

    @property
    def health_path(self) -> str | None:
        """Path polled until the server answers 200, or None for no health check."""
        return None if self.check_endpoint == "none" else self.check_endpoint

    @property
    def volume_mounts(self) -> list[VolumeMount]:
        """``volumes`` parsed into source, target and read-only flag."""
        return [VolumeMount.parse(spec) for spec in self.volumes]


class GroupConfig(_Schema):
    """A group of models and how loading one of them affects the others (llama-swap).

    swap: only one member runs at a time. exclusive: loading a member unloads the
    models of every other non-persistent group. persistent: other groups' exclusive
    loads never unload this group's models.
    """

    swap: bool = True
    exclusive: bool = True
    persistent: bool = False
    members: list[str] = Field(min_length=1)

    @field_validator("members")
    @classmethod
    def _unique_members(cls, members: list[str]) -> list[str]:
        duplicates = sorted({m for m in members if members.count(m) > 1})
        if duplicates:
            raise ValueError(f"duplicate member(s): {', '.join(map(repr, duplicates))}")
        return members


class OnStartupHooks(_Schema):
    """What to do once the proxy has started."""

    preload: list[str] = []  # model ids or aliases to load right away

    @field_validator("preload", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return [] if value is None else value  # `preload:` with nothing under it


class HooksConfig(_Schema):
    """``hooks:`` block (llama-swap spells ``on_startup`` in snake_case)."""

    on_startup: OnStartupHooks = Field(OnStartupHooks(), alias="on_startup")

    @field_validator("on_startup", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return {} if value is None else value  # `on_startup:` with nothing under it


class CorsConfig(_Schema):
    """``cors:``: web pages on other origins allowed to call the proxy from a browser."""

    # Origins as browsers send them: "https://chat.example.com", "http://localhost:3000".
    allow_origins: list[str] = []

    @field_validator("allow_origins")
    @classmethod
    def _origin_form(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            scheme, sep, rest = origin.partition("://")
            if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], "
                                 "e.g. https://chat.example.com")
        return [origin.lower() for origin in origins]


class GpuDeclaration(_Schema):
    """One GPU of ``docker.gpus``: declared instead of probed (any vendor, and tests)."""

    id: str = Field(min_length=1)  # the index (0, 1...) or UUID containers select it by
    memory: MemorySize  # what models may use of it
    name: str = ""

    @field_validator("id", mode="before")
    @classmethod
    def _index_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class DockerSettings(_Schema):
    """Top-level ``docker:`` block: the engine and how model containers are run."""

    host: str | None = None  # engine URL; None: DOCKER_HOST or the local socket
    network: str = Field("llamaswap", min_length=1)  # user-defined bridge for model containers
    instance: str = Field("default", pattern=_INSTANCE_RE.pattern)  # tells proxies apart
    stop_timeout: int = Field(10, ge=0)  # seconds between SIGTERM and SIGKILL
    pull_policy: PullPolicy = "missing"
    routing: Routing = "auto"  # how the proxy reaches containers: published port or network
    on_shutdown: OnShutdown = "stop"  # what happens to model containers when the proxy exits
    # The engine's GPUs, declared (None: probed at start-up; see GET /api/hardware).
    gpus: list[GpuDeclaration] | None = None

    @field_validator("network")
    @classmethod
    def _user_defined_network(cls, network: str) -> str:
        # The engine's own networks resolve no container names and cannot be created.
        if network in ("bridge", "host", "none"):
            raise ValueError(
                f"{network!r} is one of the engine's own networks; name a user-defined bridge "
                "(default 'llamaswap'), which model containers join and are reached on by name"
            )
        return network


class EngineTls(_Schema):
    """An engine's TLS files (``tcp://HOST:2376``): the CA that signed the engine's
    certificate, and the client certificate and key the engine trusts."""

    ca: str = Field(min_length=1)
    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)


class EngineConfig(_Schema):
    """One entry of ``engines:``: a Docker engine the proxy runs model containers on."""

    host: str = Field(pattern=r"^(unix|ssh|tcp|npipe)://")  # the engine's URL
    tls: EngineTls | None = None  # for tcp:// (None: plain, or ssh:// which needs none)
    # Where the proxy reaches ports published on this engine (None: 127.0.0.1, the engine is
    # on the proxy's machine).
    address: str | None = Field(None, min_length=1)
    # The host address model ports are published on (None: 127.0.0.1 without `address`,
    # else 0.0.0.0; each start's upstream key keeps others off the model).
    bind: str | None = Field(None, min_length=1)
    # The engine's GPUs, declared (None: probed), as docker.gpus.
    gpus: list[GpuDeclaration] | None = None


class StoreConfig(_Schema):
    """Where activity rows are kept beyond memory (optional)."""

    # A SQLite file that keeps every activity row across restarts; None: memory only.
    path: str | None = Field(None, min_length=1)


#: llama-swap's peer timeouts when unset: seconds to connect, and to wait for the headers.
PEER_CONNECT_TIMEOUT_S = 30.0
PEER_RESPONSE_HEADER_TIMEOUT_S = 60.0
#: llama-swap's ``upstream.ignorePaths`` when none is set: files a browser asks for.
DEFAULT_UPSTREAM_IGNORE_PATHS = (r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",)
SelectorStrategy = Literal["warm", "pin", "spillover"]


class PeerTimeouts(Timeouts):
    """A peer's ``timeouts:``: llama-swap's HTTP transport settings. ``connect`` (30 s, the
    TLS handshake included) and ``responseHeader`` (60 s) bound the hop; ``tlsHandshake``,
    ``keepalive``, ``idleConn`` and ``expectContinue`` are accepted and have no effect here
    (idle connections are kept a few seconds, a body goes with its headers)."""

    tls_handshake: float | None = Field(None, ge=0)
    keepalive: float | None = Field(None, ge=0)
    idle_conn: float | None = Field(None, ge=0)
    expect_continue: float | None = Field(None, ge=0)


class PeerConfig(_Schema):
    """One entry of ``peers:``: another server (a llama-swap, this proxy, any OpenAI-style
    API) whose models are served through this proxy, as ``PEER/MODEL`` or by the model's
    bare name when one peer alone has it. Never started or swapped."""

    proxy: str  # base URL; the request's path is appended to it
    api_key: str = ""  # sent as "Authorization: Bearer" and "x-api-key" ("": the client's)
    models: list[str] = Field(min_length=1)
    filters: ModelFilters = ModelFilters()
    timeouts: PeerTimeouts = PeerTimeouts()

    @field_validator("proxy")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// base URL "
                             "(e.g. http://192.168.1.23:8080 or https://openrouter.ai/api)")
        try:
            parts.port  # noqa: B018 - raises on a port that is no number
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r}: a base URL takes no query or fragment")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: list[str]) -> list[str]:
        blank = [index for index, name in enumerate(models) if not name.strip()]
        if blank:
            raise ValueError(f"model name {blank[0]} is empty")
        return list(dict.fromkeys(models))  # a repeated name is one model (as in llama-swap)

    @property
    def connect_timeout(self) -> float | None:
        """Seconds to open a connection (TLS included); None: no limit."""
        value = self.timeouts.connect
        return PEER_CONNECT_TIMEOUT_S if value is None else (value or None)

    @property
    def response_header_timeout(self) -> float | None:
        """Seconds to wait for the response headers; None: no limit."""
        value = self.timeouts.response_header
        return PEER_RESPONSE_HEADER_TIMEOUT_S if value is None else (value or None)


class ProfileConfig(_Schema):
    """One entry of ``profiles:``: requested names replaced by others while it is active
    (``PUT /api/profiles/active``); an empty target makes the name answer 404."""

    description: str = ""
    pins: dict[str, str]

    @model_validator(mode="before")
    @classmethod
    def _mapping_form(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError(
                "llama-swap's old list form of a profile (NAME: [model, ...], requested as "
                "'NAME:model') is gone there and here: to run models side by side use a group "
                "with `swap: false`; a profile now is {description: ..., pins: {requested "
                "name: model id}}")
        return value

    @field_validator("pins", mode="before")
    @classmethod
    def _null_disables(cls, value: Any) -> Any:
        if isinstance(value, dict):  # `image-gen: ~` disables that name, as "" does
            return {key: "" if target is None else _scalar_to_str(target)
                    for key, target in value.items()}
        return value

    @field_validator("pins")
    @classmethod
    def _some_pins(cls, pins: dict[str, str]) -> dict[str, str]:
        if not pins:
            raise ValueError("a profile pins at least one name")
        if any(not name.strip() for name in pins):
            raise ValueError("pin names must not be empty")
        return pins


class SelectorSettings(_Schema):
    """A selector's ``settings:``."""

    # Requests each active target takes before the next target is started (spillover).
    spillover: int = Field(1, ge=1)


class SelectorConfig(_Schema):
    """One entry of ``selectors:``: a name that picks one of its targets per request.

    pin: always the first. warm: the first ready target, else the first starting one, else
    the first (started). spillover: targets in order, each taking ``settings.spillover``
    requests at once before the next is used.
    """

    strategy: SelectorStrategy
    targets: list[str] = Field(min_length=1)
    settings: SelectorSettings = SelectorSettings()
    name: str = ""
    description: str = ""
    unlisted: bool = False
    metadata: dict[str, Any] = {}


class UpstreamSettings(_Schema):
    """``upstream:``: the ``/upstream/<model>/<path>`` passthrough."""

    # Regular expressions (searched in the path after the model): a matching request to a
    # model that is not ready answers 409 instead of starting it. Empty: llama-swap's default.
    ignore_paths: list[str] = []
    _patterns: tuple[re.Pattern[str], ...] = PrivateAttr(())

    @field_validator("ignore_paths")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return patterns

    def model_post_init(self, context: Any) -> None:
        self._patterns = tuple(re.compile(p) for p in
                               (self.ignore_paths or DEFAULT_UPSTREAM_IGNORE_PATHS))

    def ignores(self, path: str) -> bool:
        """Whether ``path`` (after ``/upstream/<model>``, from its ``/``) must not start a model."""
        return any(pattern.search(path) for pattern in self._patterns)


# --------------------------------------------------------------------------- placement


class MatrixConfig(_Schema):
    """llama-swap's swap matrix (``config/matrix.py``): which models may run together."""

    # llama-swap's keys are snake_case here: written as they are, not camelCased.
    vars: dict[str, str] = {}  # short name → model id
    evict_costs: dict[str, int] = Field({}, alias="evict_costs")  # var or model → cost (1)
    sets: dict[str, str] = Field(min_length=1)  # name → expression, in definition order


class RouterSettings(_Schema):
    """``routing.router.settings``: what each router reads."""

    groups: dict[GroupId, GroupConfig] = {}
    matrix: MatrixConfig | None = None

    @field_validator("groups")
    @classmethod
    def _no_reserved_group(cls, groups: dict[str, GroupConfig]) -> dict[str, GroupConfig]:
        if DEFAULT_GROUP_ID in groups:
            raise ValueError(f"group id {DEFAULT_GROUP_ID!r} is reserved for ungrouped models")
        return groups


class RouterConfig(_Schema):
    """``routing.router``: what stops when a model starts, and where it runs.

    group: llama-swap's groups (the default). matrix: llama-swap's swap matrix. fit: each
    model placed on GPUs where its memory need fits, evicting the fewest idle models.
    """

    use: Literal["group", "matrix", "fit"] | None = None  # None: group (or matrix: legacy)
    settings: RouterSettings = RouterSettings()


class FifoSettings(_Schema):
    """``routing.scheduler.settings.fifo``."""

    priority: dict[str, int] = {}  # model id → priority (0); higher is served first


class SchedulerSettings(_Schema):
    fifo: FifoSettings = FifoSettings()


class SchedulerConfig(_Schema):
    """``routing.scheduler``: the order queued requests are served in (FIFO by priority)."""

    use: Literal["fifo"] = "fifo"
    settings: SchedulerSettings = SchedulerSettings()


class RoutingConfig(_Schema):
    """``routing:`` as llama-swap writes it (its legacy top-level ``groups``/``matrix`` too)."""

    router: RouterConfig = RouterConfig()
    scheduler: SchedulerConfig = SchedulerConfig()


class Config(_Schema):
    """The whole config file."""

    ignored_keys: ClassVar[dict[str, str]] = {
        "startPort": "ignored: no ports are handed out; each model's server listens on its "
        "own container `port` (${PORT} is that port)",
        "logToStdout": "ignored: the proxy logs to stderr (and GET /logs); a model's output "
        "is its container's log (`llamaswap-docker logs MODEL`, GET /logs/stream/MODEL)",
        "logTimeFormat": "ignored: log lines have one fixed time format",
        "logRequests": "ignored: every request is recorded as an activity row "
        "(GET /api/metrics/activity, the UI's Activity tab)",
        "ui": "ignored: the web UI at /ui has no settings",
        "performance": "ignored: the proxy samples itself and the host every second "
        "(GET /api/performance, the web UI's Overview), and each model container's CPU, memory "
        "and network while its page in the UI is open",
        "host": "ignored: the proxy's address is set with `serve --listen HOST:PORT` "
        "(or LLAMASWAP_LISTEN)",
        "port": "ignored: the proxy's address is set with `serve --listen HOST:PORT` "
        "(or LLAMASWAP_LISTEN)",
        "listen": "ignored: the proxy's address is set with `serve --listen HOST:PORT` "
        "(or LLAMASWAP_LISTEN)",
        "maxRunningModels": "ignored: which models run together is set by `groups` (swap, "
        "exclusive, persistent)",
    }

    health_check_timeout: int = Field(120, ge=1)  # seconds a model may take to become healthy
    # llama-swap's grace between SIGTERM and SIGKILL on unload, for every model; None and 0:
    # docker.stopTimeout (the same setting under this project's name).
    unload_timeout: int | None = Field(None, ge=0)
    global_ttl: int = Field(0, ge=0, alias="globalTTL")  # 0: never unload
    log_level: LogLevel = "info"
    include_aliases_in_list: bool = False
    # Named *_default because `send_loading_state(model_id)` is the per-model answer.
    send_loading_state_default: bool = Field(False, alias="sendLoadingState")
    # Named *_default because `max_request_body_size(model_id)` is the per-model answer.
    max_request_body_size_default: ByteSize = Field(DEFAULT_MAX_REQUEST_BODY_SIZE,
                                                    alias="maxRequestBodySize")
    api_keys: list[ApiKey] = []
    # Seconds a client may accept no bytes of a response before it is cut (its lease freed).
    stall_timeout_default: int = Field(300, ge=1, alias="stallTimeout")
    # Host header values served besides the loopback names (set: the Host check is on).
    allowed_hosts: list[str] = []
    cors: CorsConfig = CorsConfig()
    # Activity rows kept in memory (GET /api/metrics/activity, the UI's Activity tab).
    metrics_max_in_memory: int = Field(1000, ge=0, alias="metricsMaxInMemory")
    # MB of recent request/response bodies kept for GET /api/captures/<id>; 0: none kept.
    capture_buffer: int = Field(0, ge=0, alias="captureBuffer")
    store: StoreConfig = StoreConfig()
    macros: Macros = {}
    # Empty is allowed, as in llama-swap (a proxy of peers only, or an import that left every
    # model to a person): the loader warns.
    models: dict[ModelId, ModelConfig] = {}
    groups: dict[GroupId, GroupConfig] = {}
    hooks: HooksConfig = HooksConfig()
    docker: DockerSettings = DockerSettings()
    # Several Docker engines by name (None: one, docker.host / DOCKER_HOST); the first is
    # the one model containers go to when neither `engine:` nor placement says otherwise.
    engines: dict[RoutingName, EngineConfig] = {}
    # llama-swap's legacy top-level swap matrix (routing.router.settings.matrix's old place).
    matrix: MatrixConfig | None = None
    # Which router decides swaps and placement (group, matrix, fit), and queue priorities.
    routing: RoutingConfig = RoutingConfig()

    @field_validator("hooks", mode="before")
    @classmethod
    def _empty_hooks(cls, value: Any) -> Any:
        return {} if value is None else value  # `hooks:` with nothing under it

    @field_validator("unload_timeout")
    @classmethod
    def _zero_is_the_default(cls, value: int | None) -> int | None:
        return value or None  # llama-swap: 0 means its default
    # Remote servers whose models are routed to as PEER/MODEL (llama-swap's peers).
    peers: dict[RoutingName, PeerConfig] = {}
    # Runtime-switchable name replacements (GET /api/profiles, PUT /api/profiles/active).
    profiles: dict[RoutingName, ProfileConfig] = {}
    # Names that pick one of several models per request (pin, warm, spillover).
    selectors: dict[RoutingName, SelectorConfig] = {}
    upstream: UpstreamSettings = UpstreamSettings()

    _aliases: dict[str, str] = PrivateAttr(default_factory=dict)
    # setParamsByID keys that are aliases, by model (model.aliases stays as written).
    _by_id_aliases: dict[str, list[str]] = PrivateAttr(default_factory=dict)
    # "peer/model", and a model's bare name where one peer alone has it → (peer, model).
    _peer_names: dict[str, tuple[str, str]] = PrivateAttr(default_factory=dict)
    _group_of: dict[str, str] = PrivateAttr(default_factory=dict)
    _default_group: GroupConfig | None = PrivateAttr(None)
    # The compiled swap matrix (config/matrix.py), or why it does not compile.
    _matrix_program: Any = PrivateAttr(None)
    _matrix_issue: tuple[Loc, str] | None = PrivateAttr(None)
    _warnings: list[Any] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[Any]:
        """What the loader found worth saying of a valid config (``ConfigIssue`` items): the
        host-level powers its containers get (``config/risks.py``)."""
        return list(self._warnings)

    def set_warnings(self, warnings: list[Any]) -> None:
        self._warnings = list(warnings)

    @field_validator("models", mode="before")
    @classmethod
    def _no_models_is_empty(cls, models: Any) -> Any:
        return {} if models is None else models  # `models:` with every entry commented out

    @field_validator("groups")
    @classmethod
    def _no_reserved_group(cls, groups: dict[str, GroupConfig]) -> dict[str, GroupConfig]:
        if DEFAULT_GROUP_ID in groups:
            raise ValueError(f"group id {DEFAULT_GROUP_ID!r} is reserved for ungrouped models")
        return groups

    @model_validator(mode="after")
    def _index_and_check(self, info: ValidationInfo) -> Config:
        self._build_indexes()
        if not (info.context or {}).get(DEFER_REFERENCE_CHECKS):
            issues = self.reference_issues()
            if issues:
                raise ValueError("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in issues))
        return self

    def _build_indexes(self) -> None:
        # First definition wins, so lookups stay usable while issues are reported.
        for model_id, model in self.models.items():
            for alias in model.aliases:
                if alias not in self.models:
                    self._aliases.setdefault(alias, model_id)
        for group_id, group in self.swap_groups.items():
            for member in group.members:
                if member in self.models:
                    self._group_of.setdefault(member, group_id)
        ungrouped = [m for m in self.models if m not in self._group_of]
        if ungrouped:
            self._default_group = GroupConfig(members=ungrouped)
        self._index_routing()
        self._compile_matrix()

    def _index_routing(self) -> None:
        """setParamsByID names as aliases, and the names peers' models answer to."""
        for model_id, model in self.models.items():
            for name in model.filters.set_params_by_id:
                if name != model_id and name not in self.models and name not in model.aliases:
                    if self._aliases.setdefault(name, model_id) == model_id:
                        self._by_id_aliases.setdefault(model_id, []).append(name)
        bare: dict[str, list[tuple[str, str]]] = {}
        for peer_id, peer in self.peers.items():
            for name in peer.models:
                self._peer_names.setdefault(f"{peer_id}/{name}", (peer_id, name))
                bare.setdefault(name, []).append((peer_id, name))
        # A bare name only where one peer alone has it, and never over a "peer/model" name.
        for name, owners in bare.items():
            if len(owners) == 1:
                self._peer_names.setdefault(name, owners[0])

    def reference_issues(self) -> list[tuple[Loc, str]]:
        """Cross-field problems (aliases, group members, preload), each with its location."""
        issues: list[tuple[Loc, str]] = []
        owners: dict[str, str] = {}
        for model_id, model in self.models.items():
            for index, alias in enumerate(model.aliases):
                loc: Loc = ("models", model_id, "aliases", index)
                if alias in self.models:
                    issues.append((loc, f"alias {alias!r} is also a model id"))
                elif alias in owners:
                    owner = owners[alias]
                    where = "this model" if owner == model_id else f"model {owner!r}"
                    issues.append((loc, f"alias {alias!r} is already used by {where}"))
                else:
                    owners[alias] = model_id
        for model_id, model in self.models.items():  # after every written alias, as indexed
            for name in model.filters.set_params_by_id:
                loc = ("models", model_id, "filters", "setParamsByID", name)
                if name == model_id:
                    continue
                if name in self.models:
                    issues.append((loc, f"{name!r} is a model id: the keys of setParamsByID other "
                                        "than this model's own id become its aliases"))
                elif owners.setdefault(name, model_id) != model_id:
                    issues.append((loc, f"alias {name!r} is already used by model "
                                        f"{owners[name]!r}"))
        first_group: dict[str, str] = {}
        for group_id, group in self.swap_groups.items():
            for index, member in enumerate(group.members):
                loc = (*self._groups_loc, group_id, "members", index)
                if member not in self.models:
                    issues.append((loc, self._unknown_model(member, aliases_ok=False)))
                elif first_group.setdefault(member, group_id) != group_id:
                    issues.append(
                        (loc, f"model {member!r} is already a member of group {first_group[member]!r}")
                    )
        for index, name in enumerate(self.hooks.on_startup.preload):
            if self.resolve(name) is None:
                loc = ("hooks", "on_startup", "preload", index)
                issues.append((loc, self._unknown_model(name, aliases_ok=True)))
        return (issues + self._peer_issues() + self._selector_issues() + self._profile_issues()
                + self._routing_issues() + self._engine_issues())

    def _engine_issues(self) -> list[tuple[Loc, str]]:
        """Every ``engine:`` names an engine of ``engines:``; the engines replace docker.host."""
        issues: list[tuple[Loc, str]] = []
        if self.engines and self.docker.host:
            issues.append((("docker", "host"), "engines: names the engines; move this URL to "
                                               "an entry of engines: (host: ...)"))
        if self.engines and self.docker.gpus is not None:
            issues.append((("docker", "gpus"), "with engines:, declare each engine's GPUs "
                                               "under engines: NAME: gpus:"))
        for model_id, model in self.models.items():
            if model.engine is not None and model.engine not in self.engines:
                known = ", ".join(self.engines) or "none: there is no engines: block"
                issues.append((("models", model_id, "engine"),
                               f"engine {model.engine!r} is not under engines: ({known})"))
        return issues

    def _peer_issues(self) -> list[tuple[Loc, str]]:
        """Every "peer/model" name is one peer's model, and no other name (llama-swap's
        ValidatePeerNamespace)."""
        issues: list[tuple[Loc, str]] = []
        for peer_id, peer in self.peers.items():
            for index, name in enumerate(peer.models):
                fqn, loc = f"{peer_id}/{name}", ("peers", peer_id, "models", index)
                other = self._peer_names.get(fqn)
                if other is not None and other != (peer_id, name):
                    issues.append((loc, f"{fqn!r} names both this model and model {other[1]!r} "
                                        f"of peer {other[0]!r}: rename a peer"))
                elif fqn in self.models:
                    issues.append((loc, f"{fqn!r} is also a model id"))
                elif fqn in self._aliases:
                    issues.append((loc, f"{fqn!r} is also an alias of model "
                                        f"{self._aliases[fqn]!r}"))
                elif fqn in self.selectors:
                    issues.append((loc, f"{fqn!r} is also a selector"))
        for profile_id, profile in self.profiles.items():
            for pin in profile.pins:
                if pin in self._peer_names and "/".join(self._peer_names[pin]) == pin:
                    issues.append((("profiles", profile_id, "pins", pin),
                                   f"{pin!r} is a peer's model name and cannot be pinned"))
        return issues

    def _selector_issues(self) -> list[tuple[Loc, str]]:
        issues: list[tuple[Loc, str]] = []
        for selector_id, selector in self.selectors.items():
            loc: Loc = ("selectors", selector_id)
            if selector_id in self.models:
                issues.append((loc, f"selector {selector_id!r} is also a model id"))
            elif selector_id in self._aliases:
                issues.append((loc, f"selector {selector_id!r} is also an alias of model "
                                    f"{self._aliases[selector_id]!r}"))
            chosen: dict[str, int] = {}
            local: list[str] = []
            for index, target in enumerate(selector.targets):
                where: Loc = (*loc, "targets", index)
                if target in self.selectors:
                    issues.append((where, f"{target!r} is a selector: a selector's targets are "
                                          "models, aliases or peers' models"))
                    continue
                model_id = self.resolve(target)
                peer = self._peer_names.get(target) if model_id is None else None
                if model_id is None and peer is None:
                    issues.append((where, self._unknown_target(target)))
                    continue
                if selector.strategy == "warm" and model_id is None:
                    issues.append((where, f"{target!r} is a peer's model: strategy 'warm' picks "
                                          "among local models (their state is known here)"))
                    continue
                key = model_id or f"{peer[0]}/{peer[1]}"  # type: ignore[index]
                if selector.strategy == "spillover" and chosen.setdefault(key, index) != index:
                    issues.append((where, f"{target!r} is model {key!r} again "
                                          f"(targets[{chosen[key]}])"))
                elif model_id is not None:
                    local.append(model_id)
            if selector.strategy == "spillover" and len(set(local)) > 1:
                groups = {self.group_of(model_id)[0] for model_id in local}
                group = self.group_of(local[0])[1]
                if len(groups) > 1 or group.swap:
                    issues.append(((*loc, "targets"), "spillover runs its local targets side by "
                                   "side: put them in one group with `swap: false`"))
        return issues

    def _profile_issues(self) -> list[tuple[Loc, str]]:
        issues: list[tuple[Loc, str]] = []
        for profile_id, profile in self.profiles.items():
            for pin, target in profile.pins.items():
                if (target and target not in self.selectors and self.resolve(target) is None
                        and target not in self._peer_names):
                    issues.append((("profiles", profile_id, "pins", pin),
                                   self._unknown_target(target)))
        return issues

    def _unknown_target(self, name: str) -> str:
        known = [*self.models, *self._aliases, *self._peer_names, *self.selectors]
        return (f"unknown model {name!r}{_did_you_mean(name, known)}: name a model, an alias, "
                f"a peer's model or a selector")

    def _unknown_model(self, name: str, *, aliases_ok: bool) -> str:
        if not aliases_ok and name in self._aliases:
            return f"{name!r} is an alias of model {self._aliases[name]!r}; use the model id"
        known = list(self.models) + (list(self._aliases) if aliases_ok else [])
        return f"unknown model {name!r}{_did_you_mean(name, known)}"

    # ------------------------------------------------------------------ lookups

    @property
    def aliases(self) -> dict[str, str]:
        """Every alias and the model id it names."""
        return dict(self._aliases)

    def resolve(self, name: str) -> str | None:
        """The model id that ``name`` (a model id or an alias) names, or None."""
        if name in self.models:
            return name
        return self._aliases.get(name)

    def peer_model(self, name: str) -> tuple[str, str] | None:
        """(peer id, the peer's own model name) for ``peer/model``, or for a bare model name
        that one peer alone has; None otherwise. Local names win: ``resolve`` first."""
        return self._peer_names.get(name)

    def model_aliases(self, model_id: str) -> list[str]:
        """A model's aliases: those written, then its setParamsByID names."""
        return [*self.models[model_id].aliases, *self._by_id_aliases.get(model_id, ())]

    # ------------------------------------------------------------------ routing

    @property
    def router(self) -> str:
        """What decides swaps and placement: ``group`` (default), ``matrix`` or ``fit``."""
        use = self.routing.router.use
        if use is not None:
            return use
        return "matrix" if self.matrix is not None and not self._routing_style else "group"

    @property
    def _routing_style(self) -> bool:
        """Whether ``routing.router`` is written (then llama-swap's top-level keys are not)."""
        router = self.routing.router
        return (router.use is not None or bool(router.settings.groups)
                or router.settings.matrix is not None)

    @property
    def swap_groups(self) -> dict[str, GroupConfig]:
        """The groups the router follows (``routing.router.settings.groups`` or ``groups``);
        none under the matrix router."""
        if self.router == "matrix":
            return {}
        return self.routing.router.settings.groups if self._routing_style else self.groups

    @property
    def _groups_loc(self) -> Loc:
        return ("routing", "router", "settings", "groups") if self._routing_style else ("groups",)

    @property
    def swap_matrix(self) -> MatrixConfig | None:
        """The swap matrix the router follows, when the router is ``matrix``."""
        if self.router != "matrix":
            return None
        return self.routing.router.settings.matrix if self._routing_style else self.matrix

    @property
    def _matrix_loc(self) -> Loc:
        return ("routing", "router", "settings", "matrix") if self._routing_style else ("matrix",)

    @property
    def matrix_program(self) -> Program | None:
        """The compiled swap matrix (None: not the matrix router, or it does not compile)."""
        return self._matrix_program

    def evict_costs(self) -> dict[str, int]:
        """The matrix's ``evict_costs`` by model id (vars resolved); unlisted models cost 1."""
        matrix = self.swap_matrix
        if matrix is None:
            return {}
        return {matrix.vars.get(key, key): cost for key, cost in matrix.evict_costs.items()}

    def priority(self, model_id: str) -> int:
        """The model's queue priority (``routing.scheduler.settings.fifo.priority``; 0)."""
        priorities = self.routing.scheduler.settings.fifo.priority
        if not priorities:
            return 0
        for name, value in priorities.items():
            if self.resolve(name) == model_id:
                return value
        return 0

    def _resolve_matrix_name(self, name: str) -> str | None:
        """A name in a matrix: a var first, else a model id (not an alias), as llama-swap."""
        matrix = self.swap_matrix
        if matrix is not None and name in matrix.vars:
            return matrix.vars[name]
        return name if name in self.models else None

    def _compile_matrix(self) -> None:
        matrix = self.swap_matrix
        if matrix is None:
            return
        try:
            self._matrix_program = compile_matrix(matrix.sets.items(), self._resolve_matrix_name)
        except MatrixError as exc:
            # The set named first in the message, else the sets as a whole.
            where = next((name for name in matrix.sets if f"set {name!r}" in str(exc)), None)
            loc = (*self._matrix_loc, "sets", *((where,) if where else ()))
            self._matrix_issue = (loc, str(exc))

    def _routing_issues(self) -> list[tuple[Loc, str]]:
        """llama-swap's rules for routing: one style of keys, a valid matrix, known models."""
        issues: list[tuple[Loc, str]] = []
        legacy = bool(self.groups) or self.matrix is not None
        if legacy and self._routing_style:
            issues.append((("routing", "router"),
                           "the config uses both the legacy top-level 'groups'/'matrix' keys and "
                           "'routing.router': move them under routing.router.settings and remove "
                           "them"))
        elif self.groups and self.matrix is not None:
            issues.append((("matrix",), "a config cannot use both 'groups' and 'matrix'"))
        if self.routing.router.use == "matrix" and self.routing.router.settings.matrix is None:
            issues.append((("routing", "router", "use"), "routing.router.use is 'matrix' but "
                           "routing.router.settings.matrix is not set"))
        matrix = self.swap_matrix
        if matrix is not None:
            loc = self._matrix_loc
            for key, model_id in matrix.vars.items():
                if not VAR_KEY_RE.match(key):
                    issues.append(((*loc, "vars", key), f"var key {key!r} must contain only "
                                   "alphanumeric, '-' or '.' characters and be 1-32 characters long"))
                elif model_id not in self.models:
                    issues.append(((*loc, "vars", key), f"var key {key!r} references "
                                   + self._unknown_model(model_id, aliases_ok=False)))
            for key, cost in matrix.evict_costs.items():
                if cost <= 0:
                    issues.append(((*loc, "evict_costs", key), f"evict_cost for {key!r} must be a "
                                   f"positive integer, got {cost}"))
                elif self._resolve_matrix_name(key) is None:
                    issues.append(((*loc, "evict_costs", key),
                                   f"evict_costs: unknown var or model {key!r}"))
            if self._matrix_issue is not None:
                issues.append(self._matrix_issue)
        for name in self.routing.scheduler.settings.fifo.priority:
            if self.resolve(name) is None:
                issues.append((("routing", "scheduler", "settings", "fifo", "priority", name),
                               self._unknown_model(name, aliases_ok=True)))
        return issues

    def engine_of(self, model_id: str) -> str | None:
        """The engine a model is pinned to (``engine:``); None: any."""
        model = self.models.get(self._id(model_id))
        return model.engine if model is not None else None

    def group_of(self, model_id: str) -> tuple[str, GroupConfig]:
        """The group a model belongs to; ungrouped models share ``"(default)"``.

        The implicit default group has swap=true, exclusive=true (as in llama-swap).
        """
        model_id = self._id(model_id)
        group_id = self._group_of.get(model_id)
        if group_id is not None:
            return group_id, self.swap_groups[group_id]
        assert self._default_group is not None  # every ungrouped model is in it
        return DEFAULT_GROUP_ID, self._default_group

    def effective_ttl(self, model_id: str) -> int:
        """Seconds a model may sit idle before it is unloaded; 0 = never."""
        ttl = self.models[self._id(model_id)].ttl
        return self.global_ttl if ttl == -1 else ttl

    def send_loading_state(self, model_id: str) -> bool:
        """Whether to stream loading progress to clients while the model starts."""
        value = self.models[self._id(model_id)].send_loading_state
        return self.send_loading_state_default if value is None else value

    def max_request_body_size(self, model_id: str | None = None) -> int:
        """The largest request body accepted for a model, in bytes.

        Without a model: the largest any model accepts (a body is read before its model is
        known; the model's own limit is checked once it is).
        """
        if model_id is None:
            return max([self.max_request_body_size_default] + [
                m.max_request_body_size for m in self.models.values()
                if m.max_request_body_size is not None])
        value = self.models[self._id(model_id)].max_request_body_size
        return self.max_request_body_size_default if value is None else value

    def sleep_mode(self, model_id: str) -> int:
        """The model's vLLM sleep level when evicted (0: it is stopped instead)."""
        return self.models[self._id(model_id)].sleep_mode

    def sleep_ttl(self, model_id: str) -> int:
        """Seconds an asleep model may stay asleep before its container stops; 0: no limit."""
        return self.models[self._id(model_id)].sleep_ttl

    def stop_timeout(self, model_id: str) -> int:
        """Seconds the engine waits after SIGTERM before it kills the container.

        The model's ``stopTimeout`` or ``unloadTimeout`` (llama-swap's name), else the global
        ``unloadTimeout``, else ``docker.stopTimeout``.
        """
        model = self.models[self._id(model_id)]
        for value in (model.stop_timeout, model.unload_timeout):
            if value is not None:
                return value
        return self.default_stop_timeout

    @property
    def default_stop_timeout(self) -> int:
        """The grace of a container no model's own setting covers: the global
        ``unloadTimeout``, else ``docker.stopTimeout``."""
        return self.docker.stop_timeout if self.unload_timeout is None else self.unload_timeout

    def health_timeout(self, model_id: str) -> int:
        """Seconds the model may take to pass its health check (or to wake up)."""
        value = self.models[self._id(model_id)].health_check_timeout
        return self.health_check_timeout if value is None else value

    def _id(self, name: str) -> str:
        model_id = self.resolve(name)
        if model_id is None:
            raise KeyError(name)
        return model_id


def _did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
