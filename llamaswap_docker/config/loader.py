"""Load a config file: YAML with line numbers, macros, schema, cross-field checks.

Every problem found on the way is collected and raised as ONE ``ConfigError``::

    invalid config config.yaml: 2 errors
      config.yaml:14: models.llama-8b.ttl: Input should be a valid integer, ...
      config.yaml:21: models.llama-8b.tll: unknown field 'tll' (did you mean 'ttl'?)

The exception also carries the structured list as ``exc.errors`` (``ConfigIssue``).
Lines come from PyYAML's node tree: the data is built from the composed nodes while
recording the line of every mapping key and list item under its location, so errors
from any later stage (macros, pydantic, reference checks) can be mapped back.
``load_config_sources`` reads several files (``--config`` and ``--config-dir``) merged by
llama-swap's rules (``merge.py``); each location then also knows its file.

A valid config may still carry warnings (``Config.warnings``): llama-swap keys that mean
nothing here (each schema model's ``ignored_keys``), a ``cmd`` that starts with a host
program, and the host powers given to containers (``risks.py``). A file that fails and looks
like llama-swap's says so first, and points at ``config import`` (``compat.py``).
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .compat import (
    HINT_ERRORS_SHOWN,
    LLAMA_SWAP_KEYS,
    MISSING_IMAGE,
    cmd_warnings,
    llama_swap_hint,
    llama_swap_models,
)
from .macros import expand_macros
from .merge import MergeConflict, Origins, Source, merge_sources, source_files
from .risks import host_risks
from .schema import DEFER_REFERENCE_CHECKS, Config, Loc, ModelConfig, format_loc

__all__ = ["ConfigIssue", "config_sources", "load_config", "load_config_sources",
           "load_config_text"]

_KEY = "[key]"  # pydantic's loc marker for an invalid mapping key
# Prefixes pydantic puts before messages of ValueError/assert raised in validators.
_MESSAGE_PREFIXES = ("Value error, ", "Assertion failed, ")
#: (location, line, message) of one problem, before it becomes a ConfigIssue.
_Problem = tuple[Loc, int | None, str]
_PYTHONIC_RE = re.compile(r"(?<=valid )dictionary(?: or instance of \w+)?")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file."""

    file: str
    line: int | None  # 1-based; None when no line applies (e.g. a missing top-level key)
    field: str  # dotted path, "" for the whole document
    message: str
    #: Of a warning: "risk" (a host power given to a container) or "notice" (a key ignored,
    #: a command that looks wrong); "" for an error.
    kind: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def load_config(
    path: str | os.PathLike[str],
    *,
    macros: Mapping[str, str | int | float | bool] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the config file at ``path``.

    ``macros`` override (or add) global macros; ``environ`` replaces ``os.environ`` for
    ``${env.X}``. Relative host paths in ``volumes`` resolve against the file's folder.
    Raises ``ConfigError`` naming every problem with its line.
    """
    return load_config_text(
        _read(path), source=str(path), base_dir=Path(os.path.abspath(path)).parent, macros=macros,
        environ=environ,
    )


def config_sources(
    config: str | os.PathLike[str] | None, config_dir: str | os.PathLike[str] | None
) -> list[Path]:
    """The files ``load_config_sources`` reads, in merge order (``ConfigError`` if none)."""
    try:
        return source_files(config, config_dir)
    except ValueError as exc:
        _unreadable(config_dir if config_dir is not None else config or "", str(exc))


def load_config_sources(
    config: str | os.PathLike[str] | None = None,
    config_dir: str | os.PathLike[str] | None = None,
    *,
    macros: Mapping[str, str | int | float | bool] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load a config file, the ``*.yaml`` files of a folder, or both, merged as llama-swap's
    ``-config`` and ``-config-dir`` are (see ``merge.py``).

    Every message names the file and line the problem was written on.
    Raises ``ConfigError``.
    """
    paths = config_sources(config, config_dir)
    if config_dir is None:
        return load_config(paths[0], macros=macros, environ=environ)
    sources = []
    for path in paths:
        problems: list[_Problem] = []
        data, lines = _parse(_read(path), str(path), problems, allow_empty=True)
        if problems:
            _raise(str(path), problems)
        if data is not None:
            sources.append(Source(str(path), data, lines))
    label = " + ".join(filter(None, [str(config) if config is not None else None,
                                     f"{config_dir}/*.yaml"]))
    if not sources:
        _raise(label, [((), None, "the config is empty (every file is)")])
    try:
        data, origins = merge_sources(sources)
    except MergeConflict as exc:
        issue = ConfigIssue(exc.file, exc.line, format_loc(exc.loc), exc.message)
        _raise_issues(label, [issue])
    return _load(data, _LineIndex(origins.lines, origins), label,
                 base_dir=Path(os.path.abspath(sources[0].path)).parent, macros=macros,
                 environ=environ)


def load_config_text(
    text: str,
    source: str = "<string>",
    *,
    base_dir: str | os.PathLike[str] | None = None,
    macros: Mapping[str, str | int | float | bool] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate config YAML given as text; ``source`` names it in messages.

    ``base_dir`` is where relative volume paths resolve (default: the working directory).
    """
    problems: list[_Problem] = []
    data, lines = _parse(text, source, problems)
    return _load(data, _LineIndex(lines), source, problems, base_dir=base_dir, macros=macros,
                 environ=environ)


def _load(
    data: dict[Any, Any],
    line_of: _LineIndex,
    source: str,
    problems: list[_Problem] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None,
    macros: Mapping[str, str | int | float | bool] | None,
    environ: Mapping[str, str] | None,
) -> Config:
    """Macros, schema and cross-field checks on parsed data; warnings on a valid config."""
    problems = list(problems or [])
    parsed = data
    if macros:
        # Overrides win over the file's own macros, as a CLI flag would.
        current = data.get("macros")
        data["macros"] = {**(current if isinstance(current, dict) else {}), **macros}
    data, macro_issues = expand_macros(data, os.environ if environ is None else environ)
    problems += [(loc, line_of(loc), msg) for loc, msg in macro_issues]

    context = {DEFER_REFERENCE_CHECKS: True, "base_dir": base_dir}
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        for loc, msg in _schema_issues(exc, data):
            # A string that failed macro expansion fails validation too: say it once.
            if not any(_overlaps(loc, other) for other, _ in macro_issues):
                problems.append((loc, line_of(loc), msg))
        config = None
    else:
        problems += [(loc, line_of(loc), msg) for loc, msg in config.reference_issues()]

    if problems or config is None:
        # A llama-swap file fails on every model at once: say that first, where it applies.
        hint_file = line_of.file(("models", next(iter(llama_swap_models(parsed)), "")))
        _raise(source, problems, line_of, llama_swap_hint(parsed, hint_file or source))

    def warning(loc: Loc, message: str, kind: str) -> ConfigIssue:
        return ConfigIssue(line_of.file(loc) or source, line_of(loc), format_loc(loc), message,
                           kind)

    config.set_warnings([warning(loc, message, "notice") for loc, message in
                         _ignored_keys(data) + cmd_warnings(config) + _no_models(config)]
                        + [warning(loc, message, "risk") for loc, message in host_risks(config)])
    return config


def _no_models(config: Config) -> list[tuple[Loc, str]]:
    if config.models:
        return []
    serves = "only its peers' models" if config.peers else "nothing"
    return [(("models",), f"no models: this proxy serves {serves} until some are added")]


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        _unreadable(path, f"config file not found: {path}")
    except UnicodeDecodeError as exc:
        _unreadable(path, f"cannot read config file {path}: not UTF-8 ({exc.reason})")
    except OSError as exc:
        _unreadable(path, f"cannot read config file {path}: {exc.strerror or exc}")


def _ignored_keys(data: Any) -> list[tuple[Loc, str]]:
    """Each ignored key written (a schema model's ``ignored_keys``), with what replaces it."""
    found: list[tuple[Loc, str]] = []

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, dict):
            model = _model_at(loc)
            ignored = model.ignored_keys if model is not None else {}
            for key, child in value.items():
                if isinstance(key, str) and key in ignored:
                    found.append(((*loc, key), ignored[key]))
                else:
                    walk(child, (*loc, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index))

    walk(data, ())
    return found


# --------------------------------------------------------------------------- YAML


def _parse(
    text: str, source: str, problems: list[_Problem], *, allow_empty: bool = False
) -> tuple[dict[Any, Any], dict[Loc, int]]:
    """Parse YAML into plain data plus the line of every key and item (an empty document:
    None, with ``allow_empty``)."""
    loader = yaml.SafeLoader(text)
    builder = _Builder(loader, problems)
    try:
        node = loader.get_single_node()
        data = builder.build(node, ()) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = "; ".join(filter(None, [exc.context, exc.problem])) or str(exc)
        _raise(source, [((), mark.line + 1 if mark else None, f"YAML syntax error: {message}")])
    except yaml.YAMLError as exc:
        _raise(source, [((), None, f"YAML syntax error: {exc}")])
    finally:
        loader.dispose()
    if data is None:
        if allow_empty:
            return None, {}  # type: ignore[return-value]
        _raise(source, [((), None, "the config is empty")])
    if not isinstance(data, dict):
        kind = type(data).__name__
        _raise(source, [((), 1, f"the config must be a mapping of settings, not a {kind}")])
    return data, builder.lines


class _Builder:
    """Builds Python data from composed YAML nodes, recording lines by location."""

    def __init__(self, loader: yaml.SafeLoader, problems: list[_Problem]) -> None:
        self._loader = loader
        self._problems = problems
        self._open: set[int] = set()  # nodes being built: catches recursive anchors
        self.lines: dict[Loc, int] = {}

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self._loader.construct_object(node, deep=True)
        if id(node) in self._open:
            self._problems.append((loc, node.start_mark.line + 1, "recursive YAML alias"))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*loc, index)] = item.start_mark.line + 1
                    items.append(self.build(item, (*loc, index)))
                return items
            return self._mapping(node, loc)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        merge_tag = "tag:yaml.org,2002:merge"
        explicit = sum(1 for key_node, _ in node.value if key_node.tag != merge_tag)
        self._loader.flatten_mapping(node)  # resolves "<<" merge keys in place...
        first_explicit = len(node.value) - explicit  # ...putting merged pairs first
        out: dict[Any, Any] = {}
        written: set[Any] = set()  # keys written in this mapping (merged ones may be overridden)
        for index, (key_node, value_node) in enumerate(node.value):
            key = self._loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):
                self._problems.append((loc, line, "mapping keys must be scalars"))
                continue
            if index >= first_explicit:
                if key in written:
                    self._problems.append(((*loc, key), line, f"duplicate key {key!r}"))
                written.add(key)
            self.lines[(*loc, key)] = line
            out[key] = self.build(value_node, (*loc, key))
        return out


class _LineIndex:
    """The line of a location, or of its nearest ancestor that has one (and, from several
    files, its file)."""

    def __init__(self, lines: dict[Loc, int], origins: Origins | None = None) -> None:
        self._lines = lines
        self._origins = origins

    def file(self, loc: Loc) -> str | None:
        """The file the location was written in; None: the only file."""
        return self._origins.file(loc) if self._origins is not None else None

    def __call__(self, loc: Loc) -> int | None:
        while loc:
            if loc in self._lines:
                return self._lines[loc]
            loc = loc[:-1]
        return None


# --------------------------------------------------------------------------- schema errors


def _schema_issues(exc: ValidationError, data: dict[Any, Any]) -> list[tuple[Loc, str]]:
    """Turn pydantic's errors into (data location, message), merging union alternatives."""
    merged: dict[Loc, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = _data_loc(error["loc"], data, missing=error["type"] == "missing")
        message = error["msg"]
        for prefix in _MESSAGE_PREFIXES:
            message = message.removeprefix(prefix)
        # YAML words for pydantic's Python ones: "valid dictionary or instance of X".
        message = _PYTHONIC_RE.sub("mapping", message)
        if _KEY in error["loc"] and error["type"] != "value_error":
            message = f"invalid key {loc[-1]!r}: {message}"
        if error["type"] == "extra_forbidden" and loc:
            message = _unknown_field(loc[:-1], loc[-1])
        elif error["type"] == "missing" and loc:
            message = (MISSING_IMAGE if len(loc) == 3 and loc[0] == "models"
                       and loc[-1] == "image" else f"missing required field {loc[-1]!r}")
        messages = merged.setdefault(loc, [])
        if message not in messages:
            messages.append(message)
    # Several messages at one location are the members of a union that all failed.
    return [(loc, "; ".join(messages)) for loc, messages in merged.items()]


def _data_loc(loc: tuple[int | str, ...], data: Any, *, missing: bool = False) -> Loc:
    """Keep the parts of pydantic's ``loc`` that exist in the data.

    Union members and validators add tags ("str", "list[str]") that are not keys of
    the data; only for a ``missing`` error does the absent last part belong (the field).
    """
    out: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        if part == _KEY:
            continue  # the key itself is at the location so far
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif not (missing and index == len(loc) - 1):
            continue
        out.append(part)
    return tuple(out)


def _overlaps(a: Loc, b: Loc) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _unknown_field(parent: Loc, key: Any) -> str:
    model = _model_at(parent)
    if model is None:
        return f"unknown field {key!r}"
    hint = model.unsupported_keys.get(key) if isinstance(key, str) else None
    if hint:
        return f"unsupported field {key!r}: {hint}"
    level = {Config: "top", ModelConfig: "model"}.get(model)  # type: ignore[call-overload]
    llama_swap = LLAMA_SWAP_KEYS[level] if level else frozenset()
    if key in llama_swap:
        return f"unsupported field {key!r}: llama-swap's {key!r} has no equivalent here"
    allowed = [field.alias or name for name, field in model.model_fields.items()]
    suggestion = _closest(str(key), [*allowed, *model.ignored_keys], prefer=llama_swap)
    return f"unknown field {key!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else "")


def _closest(key: str, allowed: list[str], prefer: frozenset[str] = frozenset()) -> str | None:
    """The name ``key`` is a typo of: the same but for case, or a few letters off (``tll`` →
    ``ttl``); never a different word that merely shares a part (``unloadTimeout`` is no
    ``stallTimeout``). Ties go to ``prefer`` (llama-swap's own keys)."""
    by_case = {name.lower(): name for name in allowed}
    if key.lower() in by_case:
        return by_case[key.lower()]
    scored = [(_typo_distance(key.lower(), name.lower()), name not in prefer, name)
              for name in allowed]
    fits = [entry for entry in scored if _is_typo(key, entry[2], entry[0])]
    return min(fits)[2] if fits else None


_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")


def _is_typo(key: str, name: str, distance: int) -> bool:
    """Whether ``key`` (``distance`` edits from ``name``) reads as a misspelt ``name``: one
    slip anywhere, or a few, each word still recognisable (``loadTimeout`` is not a typo of
    ``unloadTimeout``: "load" is not "unload")."""
    if distance <= 1:
        return True
    if distance > (2 if len(name) <= 14 else 3):
        return False
    words, name_words = _WORD_RE.findall(key), _WORD_RE.findall(name)
    return len(words) == len(name_words) and all(
        _typo_distance(a.lower(), b.lower()) <= (1 if len(b) < 8 else 2)
        for a, b in zip(words, name_words))


def _typo_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of two neighbours that make ``a``
    into ``b`` (optimal string alignment)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model whose fields live at ``loc`` (following dicts and lists)."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or n: f for n, f in tp.model_fields.items()}
            field = fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the structural type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            structural = [a for a in members if _is_structural(_unwrap(a))]
            tp = (structural or members)[0]
        else:
            return tp


def _is_structural(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, list) or (
        isinstance(tp, type) and issubclass(tp, BaseModel)
    )


# --------------------------------------------------------------------------- raising


def _raise(source: str, problems: list[_Problem], line_of: _LineIndex | None = None,
           hint: str | None = None) -> typing.NoReturn:
    issues = [
        ConfigIssue(file=(line_of.file(loc) if line_of else None) or source, line=line,
                    field=format_loc(loc), message=message)
        for loc, line, message in problems
    ]
    _raise_issues(source, issues, hint)


def _raise_issues(source: str, issues: list[ConfigIssue], hint: str | None = None
                  ) -> typing.NoReturn:
    """One ``ConfigError`` for every issue; with a ``hint`` (the file is llama-swap's), the
    hint first and only the first few issues in the message (``errors`` has them all)."""
    # Reading order: by line, problems without a line last; stable otherwise.
    issues = sorted(issues, key=lambda issue: (issue.line is None, issue.file, issue.line or 0))
    count = len(issues)
    if hint:
        shown = issues[:HINT_ERRORS_SHOWN]
        more = count - len(shown)
        lines = [hint, *(f"  {issue}" for issue in shown)]
        if more:
            lines.append(f"  … and {more} more error{'' if more == 1 else 's'}")
    else:
        head = f"invalid config {source}: {count} error{'' if count == 1 else 's'}"
        lines = [head, *(f"  {issue}" for issue in issues)]
    error = ConfigError("\n".join(lines))
    error.errors = issues  # type: ignore[attr-defined]
    error.hint = hint  # type: ignore[attr-defined]
    raise error


def _unreadable(path: str | os.PathLike[str], message: str) -> typing.NoReturn:
    # A one-line message, but the same ``errors`` attribute as every other ConfigError.
    error = ConfigError(message)
    error.errors = [ConfigIssue(file=str(path), line=None, field="", message=message)]  # type: ignore[attr-defined]
    raise error from None
