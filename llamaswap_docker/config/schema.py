"""The YAML schema of llamaswap-docker's config file, as typed pydantic models.

Names follow llama-swap (github.com/mostlygeek/llama-swap): YAML keys are camelCase
(``healthCheckTimeout``, ``checkEndpoint``...), Python attributes are snake_case. What
differs is what a model *is*: an image started as a Docker container, instead of a
command started as a local process. So ``proxy`` and ``cmdStop`` are rejected, and
``image``, ``port``, ``volumes`` and ``docker`` are new.

These models validate values that have already had their macros expanded (see
``macros.py``); ``loader.py`` turns validation errors into ``file:line: field`` messages.
Cross-field checks (aliases, groups, preload) are ``Config.reference_issues()``; they run
when a ``Config`` is validated, unless the loader defers them to report them with lines.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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

__all__ = [
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
    "ModelConfig",
    "GroupConfig",
    "OnStartupHooks",
    "HooksConfig",
    "DockerSettings",
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


ModelId = Annotated[str, _no_blank("model id")]
GroupId = Annotated[str, _no_blank("group id")]
Alias = Annotated[str, _no_blank("alias")]
ApiKey = Annotated[str, _no_blank("api key")]
MacroName = Annotated[str, AfterValidator(_check_macro_name)]
MacroValue = Annotated[str | int | float | bool, BeforeValidator(_check_macro_value)]
Macros = dict[MacroName, MacroValue]
StrList = Annotated[list[str], BeforeValidator(_str_list)]
StrMap = Annotated[dict[str, str], BeforeValidator(_str_map)]


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


def _check_volume(spec: str, info: ValidationInfo) -> str:
    # Relative host paths are resolved like docker compose does: against the config
    # file's folder (the loader passes it as "base_dir"), else the working directory.
    source, sep, rest = spec.partition(":")
    if sep and (source in (".", "..") or source.startswith(("./", "../", "~"))):
        if source.startswith("~"):
            try:
                resolved = Path(source).expanduser()
            except RuntimeError as exc:  # ~unknownuser
                raise ValueError(f"volume {spec!r}: cannot expand {source!r}: {exc}") from None
        else:
            base = (info.context or {}).get("base_dir") or Path.cwd()
            resolved = Path(base) / source
        # abspath, not resolve(): the folder the user named, symlinks and all.
        spec = f"{os.path.abspath(resolved)}:{rest}"
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


# --------------------------------------------------------------------------- models


class _Schema(BaseModel):
    """Base of every config model: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )

    #: Keys known to be wrong here, with the hint the loader shows instead of
    #: "unknown field" (mostly llama-swap keys that make no sense with containers).
    unsupported_keys: ClassVar[dict[str, str]] = {}


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


class ModelFilters(_Schema):
    """Request rewriting: parameters to strip from, or force into, every request."""

    # "strip_params" (llama-swap's older spelling) is accepted too, as the field name.
    strip_params: str = ""  # comma-separated, as in llama-swap
    set_params: dict[str, Any] = {}

    @property
    def stripped_params(self) -> list[str]:
        """Parameters to remove: sorted, de-duplicated, never ``model``."""
        names = {name.strip() for name in self.strip_params.split(",")}
        return sorted(name for name in names if name and name not in PROTECTED_PARAMS)

    @property
    def effective_set_params(self) -> dict[str, Any]:
        """Parameters to set, without protected ones (llama-swap ignores those too)."""
        return {k: v for k, v in self.set_params.items() if k not in PROTECTED_PARAMS}


class ModelConfig(_Schema):
    """One entry of ``models:``: an image, how to run it, and how to talk to it."""

    unsupported_keys: ClassVar[dict[str, str]] = {
        "proxy": "llamaswap-docker routes to the container itself; "
        "set `port` to the container port instead",
        "cmdStop": "containers are stopped through the Docker API; set `stopTimeout`",
        "timeouts": "requests have no total timeout here; a start is bounded by "
        "`healthCheckTimeout`",
    }

    # What runs, and on what: declared first so later fields' validators can see them.
    backend: Backend = "custom"  # a preset fills image, port, env... (config/backends.py)
    platform: Platform = "cpu"  # picks the image tag and the GPU device options
    vulkan_driver: VulkanDriver = "mesa"  # platform vulkan: /dev/dri (mesa) or NVIDIA's
    gpus: Gpus = None  # None: every GPU of a GPU platform
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
    stop_timeout: int | None = Field(None, ge=0)  # None: docker.stopTimeout
    # vLLM sleep mode: evicting the model puts it to sleep (level 1: weights to CPU RAM, level
    # 2: weights dropped) instead of stopping its container; the next request wakes it.
    sleep_mode: Literal[0, 1, 2] = 0
    sleep_ttl: int = Field(0, ge=0, alias="sleepTTL")  # seconds it may stay asleep; 0: no limit
    filters: ModelFilters = ModelFilters()
    macros: Macros = {}
    docker: ContainerOptions = ContainerOptions()

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


class HooksConfig(_Schema):
    """``hooks:`` block (llama-swap spells ``on_startup`` in snake_case)."""

    on_startup: OnStartupHooks = Field(OnStartupHooks(), alias="on_startup")


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


class DockerSettings(_Schema):
    """Top-level ``docker:`` block: the engine and how model containers are run."""

    host: str | None = None  # engine URL; None: DOCKER_HOST or the local socket
    network: str = Field("llamaswap", min_length=1)  # user-defined bridge for model containers
    instance: str = Field("default", pattern=_INSTANCE_RE.pattern)  # tells proxies apart
    stop_timeout: int = Field(10, ge=0)  # seconds between SIGTERM and SIGKILL
    pull_policy: PullPolicy = "missing"
    routing: Routing = "auto"  # how the proxy reaches containers: published port or network
    on_shutdown: OnShutdown = "stop"  # what happens to model containers when the proxy exits

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


class StoreConfig(_Schema):
    """Where activity rows are kept beyond memory (optional)."""

    # A SQLite file that keeps every activity row across restarts; None: memory only.
    path: str | None = Field(None, min_length=1)


class Config(_Schema):
    """The whole config file."""

    unsupported_keys: ClassVar[dict[str, str]] = {
        "startPort": "ports are not allocated: each model's server listens on its own "
        "container `port`",
        "logToStdout": "the proxy logs to stderr and GET /logs; model output is read from "
        "the engine (GET /logs/stream/<model>); remove the key",
        "logTimeFormat": "log lines use one fixed, greppable time format; remove the key",
    }

    health_check_timeout: int = Field(120, ge=1)  # seconds a model may take to become healthy
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
    models: dict[ModelId, ModelConfig] = Field(min_length=1)
    groups: dict[GroupId, GroupConfig] = {}
    hooks: HooksConfig = HooksConfig()
    docker: DockerSettings = DockerSettings()

    _aliases: dict[str, str] = PrivateAttr(default_factory=dict)
    _group_of: dict[str, str] = PrivateAttr(default_factory=dict)
    _default_group: GroupConfig | None = PrivateAttr(None)
    _warnings: list[Any] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[Any]:
        """What the loader found worth saying of a valid config (``ConfigIssue`` items): the
        host-level powers its containers get (``config/risks.py``)."""
        return list(self._warnings)

    def set_warnings(self, warnings: list[Any]) -> None:
        self._warnings = list(warnings)

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
        for group_id, group in self.groups.items():
            for member in group.members:
                if member in self.models:
                    self._group_of.setdefault(member, group_id)
        ungrouped = [m for m in self.models if m not in self._group_of]
        if ungrouped:
            self._default_group = GroupConfig(members=ungrouped)

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
        first_group: dict[str, str] = {}
        for group_id, group in self.groups.items():
            for index, member in enumerate(group.members):
                loc = ("groups", group_id, "members", index)
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
        return issues

    def _unknown_model(self, name: str, *, aliases_ok: bool) -> str:
        if not aliases_ok and name in self._aliases:
            return f"{name!r} is an alias of model {self._aliases[name]!r}; use the model id"
        known = list(self.models) + (list(self._aliases) if aliases_ok else [])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown model {name!r}{hint}"

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

    def model(self, name: str) -> ModelConfig:
        """The model that ``name`` (id or alias) names; KeyError if none."""
        model_id = self.resolve(name)
        if model_id is None:
            raise KeyError(name)
        return self.models[model_id]

    def group_of(self, model_id: str) -> tuple[str, GroupConfig]:
        """The group a model belongs to; ungrouped models share ``"(default)"``.

        The implicit default group has swap=true, exclusive=true (as in llama-swap).
        """
        model_id = self._id(model_id)
        group_id = self._group_of.get(model_id)
        if group_id is not None:
            return group_id, self.groups[group_id]
        assert self._default_group is not None  # every ungrouped model is in it
        return DEFAULT_GROUP_ID, self._default_group

    def effective_groups(self) -> dict[str, GroupConfig]:
        """``groups`` plus the implicit ``"(default)"`` group when some model is ungrouped."""
        groups = dict(self.groups)
        if self._default_group is not None:
            groups[DEFAULT_GROUP_ID] = self._default_group
        return groups

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
        """Seconds the engine waits after SIGTERM before it kills the container."""
        value = self.models[self._id(model_id)].stop_timeout
        return self.docker.stop_timeout if value is None else value

    def preload_models(self) -> list[str]:
        """Model ids to load at startup (aliases resolved, duplicates dropped)."""
        ids = (self.resolve(name) for name in self.hooks.on_startup.preload)
        return list(dict.fromkeys(i for i in ids if i is not None))

    def _id(self, name: str) -> str:
        model_id = self.resolve(name)
        if model_id is None:
            raise KeyError(name)
        return model_id
