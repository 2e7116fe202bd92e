"""A llama-swap command's words, each tied to where it is written, and the text written back.

``tokenize`` splits a command as llama-swap does (comment lines and trailing backslashes
dropped, then like a POSIX shell) and keeps each word's span. A ``Source`` is a command's text
(a ``cmd``, a macro's value, a ``bash -c`` script) parsed into ``Leaf`` words and ``Ref``
nodes (a word that is exactly one text macro, whose value is a source too). A conversion marks
words to replace or drop (``Edits``); ``emit`` writes the text back with only those words
changed, so the user's layout, comment lines and macros stay.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.scalarstring import FoldedScalarString

__all__ = [
    "FOLD",
    "MACRO",
    "WINDOWS_PATH",
    "Edits",
    "Leaf",
    "Ref",
    "Source",
    "SplitError",
    "Word",
    "basename",
    "display",
    "emit",
    "one_line",
    "split_words",
    "tokenize",
]

#: Marks a line break that a folded (``>``) scalar turns into a space: the command sees a
#: space, the output keeps the line. Python counts it as whitespace.
FOLD = "\x1f"
#: Marks the characters of a dropped word until ``_apply`` takes them out.
_DROP = "\x00"
#: ``${name}``: a macro reference.
MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
#: ``C:\llama\…`` or any backslash: a Windows path.
WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]|\\")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./{}$\-]+$")


class SplitError(ValueError):
    """A command that a shell could not split (an unclosed quote)."""


def display(value: Any) -> str:
    """A scalar's text with folded line breaks marked (``FOLD``)."""
    text = str(value)
    if isinstance(value, FoldedScalarString):
        chars = list(text)
        for pos in getattr(value, "fold_pos", []) or []:
            if 0 <= pos < len(chars) and chars[pos] == " ":
                chars[pos] = FOLD
        text = "".join(chars)
    return text


def tokenize(text: str) -> list[tuple[int, int, str]]:
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
                    raise SplitError("a single quote is not closed")
                value.append(chars[i + 1:end])
                i = end + 1
            elif ch == '"':
                i += 1
                while True:
                    if i >= n:
                        raise SplitError("a double quote is not closed")
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
        tokens.append((start, i, "".join(value).replace(FOLD, " ")))
    return tokens


def split_words(text: str) -> list[str]:
    """The words of a command, without their spans."""
    return [value for _, _, value in tokenize(text)]


def one_line(text: str) -> str:
    """A command's words as written, on one line (its comment lines and line breaks gone)."""
    return " ".join(text[s:e].replace(FOLD, " ") for s, e, _ in tokenize(text))


def basename(program: str) -> str:
    """A program's file name, whether its path uses ``/`` or ``\\``."""
    return re.split(r"[\\/]", program.rstrip("/\\"))[-1]


def _quote(word: str) -> str:
    return word if word and _SAFE_WORD.match(word) else shlex.quote(word)


@dataclass(eq=False)
class Word:
    """One argument: its text after macros, and as written (macros kept) where it is one
    whole word of its source."""

    text: str
    raw: str
    leaf: Leaf


@dataclass(eq=False)
class Leaf:
    """A word of a source as written, and the argument(s) it expands to."""

    start: int
    end: int
    raw: str
    words: list[Word] = field(default_factory=list)


@dataclass(eq=False)
class Ref:
    """A word that is exactly one text macro (``${server}``): its value is a source too."""

    start: int
    end: int
    key: tuple[str, ...]
    child: Source


@dataclass(eq=False)
class Source:
    """A command's text (a ``cmd``, a macro's value, a ``bash -c`` script) and its words."""

    text: str
    nodes: list[Leaf | Ref] = field(default_factory=list)

    def words(self) -> list[Word]:
        out: list[Word] = []
        for node in self.nodes:
            out += node.child.words() if isinstance(node, Ref) else node.words
        return out

    def refs(self) -> Iterator[Ref]:
        for node in self.nodes:
            if isinstance(node, Ref):
                yield node
                yield from node.child.refs()


#: What a conversion does to one word (by ``id``): replace it (text) or drop it (None).
Edits = dict[int, "str | None"]


def emit(src: Source, edits: Edits, rewritten: Mapping[tuple[str, ...], str]) -> str:
    """``src``'s text with the edits applied. A macro word stays as written when its value is
    unchanged or rewritten where it is defined (``rewritten``); it goes when all of its words
    go; else its new value is written in its place."""
    pieces: list[tuple[int, int, str | None]] = []
    for node in src.nodes:
        if isinstance(node, Leaf):
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
        text = emit(node.child, edits, rewritten)
        if text == node.child.text:
            continue
        if not tokenize(text):
            pieces.append((node.start, node.end, None))
        elif rewritten.get(node.key) == text:
            continue
        else:
            pieces.append((node.start, node.end, one_line(text)))
    return _apply(src.text, pieces)


def _apply(text: str, pieces: list[tuple[int, int, str | None]]) -> str:
    """Replace spans; a dropped word goes with the blank beside it, and a line it leaves
    empty goes whole, so the user's layout and comment lines stay."""
    if not pieces:
        return text
    chars = text
    for start, end, new in sorted(pieces, reverse=True):
        chars = chars[:start] + (_DROP * (end - start) if new is None else new) + chars[end:]
    parts = re.split(f"([\n{FOLD}])", chars)
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
