"""Editing the llama-swap file in place with ruamel.yaml's round trip.

Comments, key order, quoting and anchors stay; indentation follows the file's. A key to
comment out, delete, or put a note above is first renamed to a numbered sentinel key (its
value and comments kept); ``dump`` then turns each sentinel line into what its action says:
the block commented out under its reason, the block gone, or comment lines.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, merge_attrib
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString, ScalarString

from ...errors import ConfigError
from .words import FOLD

__all__ = [
    "Actions",
    "comment_out",
    "delete",
    "dump",
    "is_sentinel",
    "load",
    "note_at",
    "note_before",
    "position",
    "put",
    "scalar_like",
]

#: What each sentinel key stands for, by its number: ``("comment", key text, *reasons)``,
#: ``("delete",)`` or ``("note", *lines)``.
Actions = dict[int, tuple[str, ...]]

_SENTINEL = "__llamaswap_import_{}__"
_SENTINEL_LINE = re.compile(r"^( *)__llamaswap_import_(\d+)__:(.*)$")
_counter = iter(range(1, 1 << 62))


def load(text: str, source: str) -> tuple[YAML, CommentedMap]:
    """The file as a round-trip document, and the YAML that dumps it as it was written.

    Raises:
        ConfigError: the text is not YAML, not a mapping, or has no ``models``.
    """
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


def dump(yaml: YAML, doc: CommentedMap, actions: Actions) -> str:
    """The document's text, each sentinel turned into what its action says."""
    out = io.StringIO()
    yaml.dump(doc, out)
    return "\n".join(_render(out.getvalue().split("\n"), actions))


def scalar_like(original: Any, text: str) -> Any:
    """``text`` (with fold marks) as a scalar of the same style as ``original``."""
    if isinstance(original, FoldedScalarString):
        folds = [i for i, ch in enumerate(text) if ch == FOLD]
        scalar = FoldedScalarString(text.replace(FOLD, " "))
        scalar.fold_pos = folds  # type: ignore[attr-defined]
        return scalar
    text = text.replace(FOLD, " ")
    if isinstance(original, LiteralScalarString):
        return LiteralScalarString(text)
    if isinstance(original, ScalarString):
        return type(original)(text)
    return LiteralScalarString(text) if "\n" in text.rstrip("\n") else text.strip()


def is_sentinel(key: Any) -> bool:
    """Whether ``key`` stands for a key commented out, deleted, or a note."""
    return str(key).startswith("__llamaswap")


def put(entry: CommentedMap, key: str, value: Any, at: int) -> None:
    """Set ``key``; a new one goes at index ``at``."""
    if any(k == key for k, _ in entry.non_merged_items()):
        entry[key] = value
    else:
        entry.insert(at, key, value)


def position(parent: CommentedMap, key: Any) -> int:
    """``key``'s place in the mapping as written, for ``insert``: a merge (``<<: *x``) line
    before it counts too."""
    index = [k for k, _ in parent.non_merged_items()].index(key)
    merge = getattr(parent, merge_attrib, None)
    merge_pos = getattr(merge, "merge_pos", -1) if merge else -1
    return index + 1 if 0 <= merge_pos <= index else index


def comment_out(parent: CommentedMap, key: Any, actions: Actions, *reasons: str) -> None:
    """``key`` and its block become comment lines under ``reasons``."""
    if _anchors(parent[key]):
        # Aliases elsewhere still name its anchor: the node leaves the tree (the dump then
        # defines the anchor where it is used first) and a copy of it becomes the comment.
        text = io.StringIO()
        YAML().dump({key: parent[key]}, text)
        index = position(parent, key)
        del parent[key]
        _insert_note(parent, index, actions,
                     *reasons, *text.getvalue().rstrip("\n").split("\n"))
        return
    number = _rename(parent, key)
    actions[number] = ("comment", _key_text(key), *reasons)


def delete(parent: CommentedMap, key: Any, actions: Actions) -> None:
    """``key`` and its block go (their comments with them)."""
    number = _rename(parent, key)
    actions[number] = ("delete",)


def note_at(parent: CommentedMap, key: Any, actions: Actions, note: str) -> None:
    """A comment line above ``key``."""
    _insert_note(parent, position(parent, key), actions, note)


def note_before(entry: CommentedMap, notes: list[str], actions: Actions) -> None:
    """Notes as comments above the model's first key."""
    _insert_note(entry, 0, actions, *(f"import: {note}" for note in notes))


def _insert_note(parent: CommentedMap, index: int, actions: Actions, *lines: str) -> None:
    actions[_sentinel_at(parent, index, None)] = ("note", *lines)


def _sentinel_at(parent: CommentedMap, index: int, value: Any) -> int:
    """A new numbered sentinel key at ``index``; returns its number."""
    number = next(_counter)
    parent.insert(index, _SENTINEL.format(number), value)
    return number


def _rename(parent: CommentedMap, key: Any) -> int:
    """Put a numbered sentinel key where ``key`` was (value and comments kept)."""
    index = position(parent, key)
    value = parent[key]
    comments = parent.ca.items.pop(key, None)
    del parent[key]
    number = _sentinel_at(parent, index, value)
    if comments is not None:
        parent.ca.items[_SENTINEL.format(number)] = comments
    return number


def _key_text(key: Any) -> str:
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_ .:/+-]*", text) and \
        not text.endswith(" ") else '"' + text.replace('"', '\\"') + '"'


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
