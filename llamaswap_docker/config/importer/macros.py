"""llama-swap's macros as the import reads them, and which ones it rewrites where defined.

``Macros`` substitutes what one model sees, as llama-swap does, and parses a command into a
``Source`` that follows whole-word text macros (``${server}``) into their own values, so a
change inside one can be made where it is defined. ``macro_rewrites`` decides where it can:
a macro used only as whole words of converted commands, and changed alike by every use, is
rewritten in place; any other is left as written (and the models get the new text inline).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap

from .plan import Plan
from .words import FOLD, MACRO, Leaf, Ref, Source, Word, display, emit, split_words, tokenize

__all__ = ["Macros", "macro_rewrites"]


class Macros:
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
            return self.expand(str(value).replace(FOLD, " "), depth + 1, record)

        return MACRO.sub(replace, text)

    def source(self, text: str, chain: tuple[tuple[str, ...], ...] = ()) -> Source:
        """Parse ``text`` into words, following whole-word text macros into their own
        sources (so that a change inside one can be made where it is defined)."""
        src = Source(text)
        for start, end, value in tokenize(text):
            raw = text[start:end]
            match = MACRO.fullmatch(raw)
            found = self.lookup(match.group(1)) if match else None
            if found and isinstance(found[1], str) and found[0] not in chain:
                key, value_ = found
                child = self.source(display(value_), (*chain, key))
                src.nodes.append(Ref(start, end, key, child))
                continue
            leaf = Leaf(start, end, raw)
            expanded = split_words(self.expand(raw.replace(FOLD, " ")))
            if len(expanded) == 1:
                leaf.words.append(Word(expanded[0], value, leaf))
            else:
                leaf.words += [Word(word, word, leaf) for word in expanded]
            src.nodes.append(leaf)
        return src


def macro_rewrites(doc: CommentedMap, plans: dict[str, Plan]) -> dict[tuple[str, ...], str]:
    """Macros to rewrite where they are defined: used only in converted commands, as whole
    words, and changed alike by every use."""
    uses: dict[tuple[str, ...], list[tuple[Ref, Plan]]] = {}
    pinned: set[tuple[str, ...]] = set()
    for plan in plans.values():
        if plan.status == "person" or plan.source is None:
            continue
        pinned |= plan.embedded
        for ref in plan.source.refs():
            uses.setdefault(ref.key, []).append((ref, plan))
    pinned |= _macros_used_elsewhere(doc, plans)
    depth: dict[tuple[str, ...], int] = {}

    def depth_of(ref: Ref) -> int:
        return 1 + max((depth_of(r) for r in ref.child.refs() if r is not ref), default=0)

    for key, items in uses.items():
        depth[key] = max(depth_of(ref) for ref, _ in items)
    rewritten: dict[tuple[str, ...], str] = {}
    for key in sorted(uses, key=lambda k: depth[k]):
        texts = {emit(ref.child, plan.edits, rewritten) for ref, plan in uses[key]}
        if key in pinned or len(texts) != 1:
            continue
        text = texts.pop()
        original = uses[key][0][0].child.text
        if text != original and tokenize(text):
            rewritten[key] = text
    return rewritten


def _macros_used_elsewhere(doc: CommentedMap, plans: dict[str, Plan]) -> set[tuple[str, ...]]:
    """Macros referenced outside the converted commands (they must keep their value), with
    the macros their values reference in turn."""
    found: set[tuple[str, ...]] = set()

    def scan(value: Any, scope: str | None) -> None:
        if isinstance(value, str):
            for name in MACRO.findall(value):
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
                for name in MACRO.findall(value):
                    if ("global", name) not in found:
                        found.add(("global", name))
                        changed = True
    return found
