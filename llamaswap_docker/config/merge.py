"""Several config files as one: llama-swap's ``-config`` plus ``-config-dir`` rules.

The sources are the ``--config`` file, then the ``*.yml`` / ``*.yaml`` files directly in
``--config-dir`` in file-name order (llama-swap's ``internal/config/merge.go``):

- mappings merge key by key; under the *identity* mappings (``models``, ``groups``, ``peers``,
  ``profiles``, ``selectors``, ``matrix`` and their places under ``routing``) each key names one
  thing, and a key defined in two files is an error;
- lists concatenate (``apiKeys``, a group's members...);
- a scalar set twice must be set to the same value; a null (an empty key) yields to a value;
- a mapping against a list or a scalar is an error;
- empty files are skipped; the ``--config`` file found again in the folder is an error.

Merging works on the plain data the loader parsed from each file, and keeps, for every location
of the merged data, the file and line it came from, so that every later error still names both.
Relative host paths in a model's ``volumes`` are resolved against the folder of the file that
defines the model before the files are merged.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import Loc, format_loc, resolve_volume

__all__ = ["IDENTITY_PATHS", "MergeConflict", "Origins", "Source", "merge_sources", "source_files"]

#: Dotted paths whose children are identity-keyed: a child defined in two files is an error.
IDENTITY_PATHS = frozenset({
    "models", "groups", "profiles", "selectors", "peers", "matrix",
    "routing.router.settings.groups", "routing.router.settings.matrix",
})
_YAML_SUFFIXES = (".yml", ".yaml")
_ENTITY = {"models": "model", "groups": "group", "profiles": "profile", "selectors": "selector",
           "peers": "peer"}


@dataclass
class Source:
    """One parsed file: its data and the line of each location in it."""

    path: str
    data: dict[Any, Any]
    lines: dict[Loc, int]


@dataclass
class Origins:
    """Where each location of the merged data was written: file and line."""

    default_file: str
    files: dict[Loc, str] = field(default_factory=dict)
    lines: dict[Loc, int] = field(default_factory=dict)

    def add(self, source: Source, src: Loc, dst: Loc) -> None:
        """Record the locations of ``source`` under ``src`` as found at ``dst`` now."""
        cut = len(src)
        for loc, line in source.lines.items():
            if loc[:cut] == src:
                target = dst + loc[cut:]
                self.lines[target] = line
                self.files[target] = source.path

    def file(self, loc: Loc) -> str:
        """The file of a location, or of its nearest ancestor that has one."""
        while loc:
            if loc in self.files:
                return self.files[loc]
            loc = loc[:-1]
        return self.default_file


class MergeConflict(Exception):
    """Two files disagree; ``file``, ``line`` and ``loc`` say where the second one does."""

    def __init__(self, file: str, line: int | None, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.loc = loc
        self.message = message


def source_files(config: str | os.PathLike[str] | None,
                 config_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The files to read, in merge order.

    Raises:
        ValueError: neither is given, the folder cannot be listed, the ``--config`` file is
            also in the folder, or there is nothing to read.
    """
    if config is None and config_dir is None:
        raise ValueError("give a config file, a config folder (--config-dir), or both")
    files = [Path(config)] if config is not None else []
    if config_dir is not None:
        folder = Path(config_dir)
        try:
            listed = sorted((entry for entry in folder.iterdir()
                             if entry.name.endswith(_YAML_SUFFIXES) and not entry.is_dir()),
                            key=lambda entry: entry.name)
        except OSError as exc:
            raise ValueError(f"cannot list config folder {folder}: {exc.strerror or exc}") from None
        if config is not None:
            mine = os.path.abspath(config)
            if any(os.path.abspath(entry) == mine for entry in listed):
                raise ValueError(f"config file {config} is also in the config folder "
                                 f"{folder}; remove it from one")
        files += listed
    if not files:
        raise ValueError(f"no *.yaml or *.yml files in the config folder {config_dir}")
    return files


def merge_sources(sources: list[Source]) -> tuple[dict[Any, Any], Origins]:
    """The merged data of ``sources`` (in order) and where each location came from.

    Raises:
        MergeConflict: the first disagreement between two files.
    """
    assert sources, "nothing to merge"
    origins = Origins(sources[0].path)
    merged: dict[Any, Any] = {}
    for source in sources:
        _resolve_volumes(source)
        _merge_mapping(merged, source.data, (), (), source, origins)
    return merged, origins


def _merge_mapping(dst: dict[Any, Any], src: dict[Any, Any], dst_loc: Loc, src_loc: Loc,
                   source: Source, origins: Origins) -> None:
    identity = format_loc(dst_loc) in IDENTITY_PATHS
    for key, value in src.items():
        dst_child, src_child = (*dst_loc, key), (*src_loc, key)
        if key not in dst:
            dst[key] = value
            origins.add(source, src_child, dst_child)
        elif identity:
            kind = _ENTITY.get(str(dst_loc[-1]), "entry")
            raise MergeConflict(
                source.path, source.lines.get(src_child), dst_child,
                f"{kind} {key!r} is defined twice: here and in {origins.file(dst_child)}")
        else:
            dst[key] = _merge_value(dst[key], value, dst_child, src_child, source, origins)


def _merge_value(dst: Any, src: Any, dst_loc: Loc, src_loc: Loc, source: Source,
                 origins: Origins) -> Any:
    if isinstance(dst, dict) and isinstance(src, dict):
        _merge_mapping(dst, src, dst_loc, src_loc, source, origins)
        return dst
    if isinstance(dst, list) and isinstance(src, list):
        offset = len(dst)
        for index in range(len(src)):
            origins.add(source, (*src_loc, index), (*dst_loc, offset + index))
        return dst + src
    if src is None:
        return dst
    if dst is None:
        origins.add(source, src_loc, dst_loc)
        return src
    line = source.lines.get(src_loc)
    if isinstance(dst, (dict, list)) or isinstance(src, (dict, list)):
        raise MergeConflict(source.path, line, dst_loc,
                            f"{_kind(src)} here, but {origins.file(dst_loc)} has "
                            f"{_kind(dst)} at {format_loc(dst_loc)}")
    if dst == src and type(dst) is type(src):
        return dst
    raise MergeConflict(source.path, line, dst_loc,
                        f"set to {src!r} here and to {dst!r} in {origins.file(dst_loc)}: "
                        "a setting may be repeated across files only with the same value")


def _kind(value: Any) -> str:
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) \
        else "a value"


def _resolve_volumes(source: Source) -> None:
    """``./x:/models`` in a model of this file → the folder next to this file."""
    models = source.data.get("models")
    if not isinstance(models, dict):
        return
    base = os.path.dirname(os.path.abspath(source.path))
    for entry in models.values():
        volumes = entry.get("volumes") if isinstance(entry, dict) else None
        if not isinstance(volumes, list):
            continue
        for index, spec in enumerate(volumes):
            if not isinstance(spec, str):
                continue
            with contextlib.suppress(ValueError):  # ~unknownuser: the schema says so
                volumes[index] = resolve_volume(spec, base)
