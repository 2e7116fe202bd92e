"""llama-swap's swap matrix: its set language, compiled once, solved per swap.

A matrix names the model combinations allowed to run together (llama-swap
``config.example.yaml``, ``routing.router.settings.matrix``)::

    vars: {g: gemma, q: qwen, v: voxtral}
    evict_costs: {v: 50}                      # default 1
    sets:
      standard: "(g | q) & v"                 # [g, v], [q, v]
      full: "llama-70B"

``&`` runs models together, ``|`` offers alternatives, ``()`` groups, ``+name`` inlines another
set. A set permits every subset of itself. To start a model the solver keeps the set that
holds it and evicts the running models outside it whose ``evict_costs`` add up least; equal
costs go to the set defined first (sets a ``+ref`` names come before the set naming them).
A model in no set runs alone.

This is a port of llama-swap's ``internal/matrix`` (``dsl.go``, ``program.go``), answer for
answer: expressions are never expanded into their Cartesian product; each query projects them
onto the models it is about (the target and the running ones), keeping per expression only
the combinations no other one contains (a superset keeps at least as much running, so it
costs no more), in the order they are met.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["MatrixDecision", "MatrixError", "Program", "VAR_KEY_RE", "compile_matrix", "parse"]

#: What a ``vars`` key may be (llama-swap ``internal/config/matrix.go``).
VAR_KEY_RE = re.compile(r"^[a-zA-Z0-9.-]{1,32}$")


class MatrixError(ValueError):
    """A matrix that cannot be compiled; the message says where and why."""


# -- the language ------------------------------------------------------------------------------

_AND, _OR, _LPAREN, _RPAREN, _REF, _IDENT, _EOF = "&", "|", "(", ")", "+", "ident", "eof"


@dataclass(frozen=True)
class _Token:
    kind: str
    value: str = ""


@dataclass(eq=False)
class _Node:
    kind: str  # "leaf", "ref", "and", "or"
    name: str = ""
    children: list[_Node] = field(default_factory=list)
    ref: _Node | None = None


def _is_ident(ch: str) -> bool:
    return ch.isalnum() or ch in "_-."


def tokenize(text: str) -> list[_Token]:
    """The tokens of an expression, ending with ``eof``.

    Raises:
        MatrixError: a character outside the language, or ``+`` without a set name.
    """
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "&|()":
            tokens.append(_Token(ch, ch))
            i += 1
        elif ch == "+":
            start = i = i + 1
            while i < len(text) and _is_ident(text[i]):
                i += 1
            if i == start:
                raise MatrixError(f"expected set name after '+' at position {start}")
            tokens.append(_Token(_REF, text[start:i]))
        elif _is_ident(ch):
            start = i
            while i < len(text) and _is_ident(text[i]):
                i += 1
            tokens.append(_Token(_IDENT, text[start:i]))
        else:
            raise MatrixError(f"unexpected character {ch!r} at position {i}")
    tokens.append(_Token(_EOF))
    return tokens


class _Parser:
    """``or := and ('|' and)*``, ``and := atom ('&' atom)*``, ``atom := name | +ref | (or)``."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else _Token(_EOF)

    def next(self) -> _Token:
        token = self.peek()
        if token.kind != _EOF:
            self.pos += 1
        return token

    def either(self) -> _Node:
        children = [self.both()]
        while self.peek().kind == _OR:
            self.next()
            children.append(self.both())
        return children[0] if len(children) == 1 else _Node("or", children=children)

    def both(self) -> _Node:
        children = [self.atom()]
        while self.peek().kind == _AND:
            self.next()
            children.append(self.atom())
        return children[0] if len(children) == 1 else _Node("and", children=children)

    def atom(self) -> _Node:
        token = self.next()
        if token.kind == _IDENT:
            return _Node("leaf", token.value)
        if token.kind == _REF:
            return _Node("ref", token.value)
        if token.kind == _LPAREN:
            inner = self.either()
            if self.next().kind != _RPAREN:
                raise MatrixError("parse: missing closing parenthesis")
            return inner
        raise MatrixError(f"parse: unexpected token {token.value!r}")


def parse(text: str) -> _Node:
    """Parse one set expression.

    Raises:
        MatrixError: empty, or not in the language.
    """
    text = text.strip()
    if not text:
        raise MatrixError("empty DSL expression")
    try:
        tokens = tokenize(text)
    except MatrixError as exc:
        raise MatrixError(f"tokenize: {exc}") from None
    parser = _Parser(tokens)
    root = parser.either()
    if parser.peek().kind != _EOF:
        raise MatrixError(f"parse: unexpected token {parser.peek().value!r} after expression")
    return root


def _walk(node: _Node) -> Iterable[_Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


# -- the program -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatrixDecision:
    """The set chosen for a target and what it evicts of the running models."""

    evict: tuple[str, ...]  # in the order the running models were given
    target_set: tuple[str, ...]  # sorted: the chosen combination, in full
    set_name: str = ""  # "" when the target is in no set (it runs alone)
    dsl: str = ""
    total_cost: int = 0


@dataclass(eq=False)
class _Set:
    name: str
    dsl: str
    root: _Node
    support: frozenset[str] = frozenset()  # every model the expression can name


#: One projected combination: a bit mask over the query's models, and a witness tree from
#: which the full combination is read back (a model name, or a pair of witnesses).
_State = tuple[int, object]


class _Evaluator:
    """Projects expressions onto the models one query is about."""

    def __init__(self, relevant: Iterable[str]) -> None:
        self.bits: dict[str, int] = {}
        for model in relevant:
            self.bits.setdefault(model, len(self.bits))
        self._memo: dict[int, list[_State]] = {}

    @property
    def full(self) -> int:
        return (1 << len(self.bits)) - 1

    def evaluate(self, node: _Node) -> list[_State]:
        known = self._memo.get(id(node))
        if known is not None:
            return known
        states: list[_State] = []
        if node.kind == "leaf":
            bit = self.bits.get(node.name)
            states = [((1 << bit) if bit is not None else 0, node.name)]
        elif node.kind == "ref":
            assert node.ref is not None
            states = self.evaluate(node.ref)
        elif node.kind == "or":
            for child in node.children:
                for state in self.evaluate(child):
                    states = _add_to_frontier(states, state)
        else:  # and: the union of one choice per child, dominated choices dropped as we go
            states = [(0, None)]
            for child in node.children:
                combined: list[_State] = []
                for left_mask, left_witness in states:
                    for right_mask, right_witness in self.evaluate(child):
                        combined = _add_to_frontier(
                            combined, (left_mask | right_mask, (left_witness, right_witness)))
                states = combined
        self._memo[id(node)] = states
        return states


def _add_to_frontier(states: list[_State], candidate: _State) -> list[_State]:
    """Keep ``candidate`` unless a kept state contains it; drop the kept states it contains."""
    mask = candidate[0]
    if any(mask & ~kept == 0 for kept, _ in states):
        return states
    return [state for state in states if state[0] & ~mask != 0] + [candidate]


def _flatten(witness: object) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    stack = [witness]
    while stack:
        current = stack.pop()
        if current is None:
            continue
        if isinstance(current, str):
            seen.setdefault(current)
        else:
            left, right = current  # type: ignore[misc]
            stack.extend((right, left))
    return tuple(sorted(seen))


class Program:
    """A compiled matrix: immutable, solved per query."""

    def __init__(self, sets: list[_Set]) -> None:
        self.sets = sets
        self.models = frozenset(m for s in sets for m in s.support)

    @property
    def set_names(self) -> list[str]:
        """The sets in tie-breaking order."""
        return [s.name for s in self.sets]

    def solve(self, target: str, running: Sequence[str],
              costs: Mapping[str, int] | None = None) -> MatrixDecision:
        """The lowest-cost set holding ``target``, and the running models it evicts."""
        costs = costs or {}
        if target in running:
            name, dsl = self._containing(running)
            return MatrixDecision((), tuple(running), name, dsl)
        evaluator = _Evaluator([target, *running])
        target_bit = 1 << evaluator.bits[target]
        best: tuple[int, _Set, _State] | None = None
        if target in self.models:
            for candidate in self.sets:
                if target not in candidate.support:
                    continue
                for state in evaluator.evaluate(candidate.root):
                    if not state[0] & target_bit:
                        continue
                    cost = sum(costs.get(m, 1) for m in running
                               if not state[0] & (1 << evaluator.bits[m]))
                    if best is None or cost < best[0]:
                        best = (cost, candidate, state)
        if best is None:
            return MatrixDecision(tuple(running), (target,))
        cost, chosen, (mask, witness) = best
        evict = tuple(m for m in running if not mask & (1 << evaluator.bits[m]))
        return MatrixDecision(evict, _flatten(witness), chosen.name, chosen.dsl, cost)

    def can_contain_all(self, models: Sequence[str]) -> bool:
        """Whether one combination holds every one of ``models``."""
        return not models or self._containing(models)[0] != ""

    def _containing(self, models: Sequence[str]) -> tuple[str, str]:
        if not models:
            return "", ""
        evaluator = _Evaluator(models)
        wanted = set(models)
        for candidate in self.sets:
            if not wanted <= candidate.support:
                continue
            if any(evaluator.full & ~mask == 0 for mask, _ in evaluator.evaluate(candidate.root)):
                return candidate.name, candidate.dsl
        return "", ""


def compile_matrix(definitions: Iterable[tuple[str, str]],
                   resolve: Callable[[str], str | None]) -> Program:
    """Parse, resolve and link named set expressions.

    Args:
        definitions: (set name, expression), in definition order.
        resolve: a name in an expression → a model id, or None when it names nothing.

    Raises:
        MatrixError: a set that does not parse, names an unknown var or model, or references
            an undefined set or itself (directly or not).
    """
    definitions = list(definitions)
    if not definitions:
        raise MatrixError("matrix must define at least one set")
    names = {name for name, _ in definitions}
    roots: dict[str, _Node] = {}
    dsl: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for name, text in definitions:
        try:
            root = parse(text)
        except MatrixError as exc:
            raise MatrixError(f"set {name!r}: {exc}") from None
        refs: list[str] = []
        for node in _walk(root):
            if node.kind == "leaf":
                model = resolve(node.name)
                if model is None:
                    raise MatrixError(f"set {name!r}: unknown var or model {node.name!r}")
                node.name = model
            elif node.kind == "ref":
                if node.name not in names:
                    raise MatrixError(f"set {name!r} references undefined set {node.name!r}")
                if node.name not in refs:
                    refs.append(node.name)
        roots[name], dsl[name], deps[name] = root, text, refs
    for root in roots.values():
        for node in _walk(root):
            if node.kind == "ref":
                node.ref = roots[node.name]
    supports: dict[int, frozenset[str]] = {}

    def support(node: _Node) -> frozenset[str]:
        if id(node) not in supports:
            if node.kind == "leaf":
                found = frozenset((node.name,))
            elif node.kind == "ref":
                assert node.ref is not None
                found = support(node.ref)
            else:
                found = frozenset().union(*(support(child) for child in node.children))
            supports[id(node)] = found
        return supports[id(node)]

    return Program([_Set(name, dsl[name], roots[name], support(roots[name]))
                    for name in _topological(list(dsl), deps)])


def _topological(order: list[str], deps: dict[str, list[str]]) -> list[str]:
    """Sets after the sets they reference, otherwise in definition order."""
    state: dict[str, int] = {}
    out: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 1:
            raise MatrixError(f"circular reference detected involving set {name!r}")
        if state.get(name) == 2:
            return
        state[name] = 1
        for dependency in deps[name]:
            visit(dependency)
        state[name] = 2
        out.append(name)

    for name in order:
        if name not in state:
            visit(name)
    return out
