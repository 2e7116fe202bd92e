"""Macro expansion on the raw config data, before schema validation.

``${name}`` is replaced by the model's macro ``name``, else the global one; ``${env.NAME}``
by the environment variable; ``${PORT}`` and ``${MODEL_ID}`` by the model's ``port`` (its
backend's default port when unset) and id. Macro values may use macros themselves (cycles are errors). ``$${`` writes a literal
``${``. Expansion runs on the plain data parsed from YAML, so every problem is reported
at the location of the string that used the macro, which the loader maps to a line.

Expanded: every string under ``models.<id>`` (except the model's own ``macros``),
``apiKeys``, ``peers`` (global macros only) and the top-level ``docker`` block, and the keys
of ``filters.setParamsByID`` (``"${MODEL_ID}:high"``). In ``filters.setParams`` and
``setParamsByID`` a string that is exactly one macro keeps the macro's type
(``temperature: ${temp}`` stays a number), as in llama-swap.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from .backends import default_port
from .schema import Loc

__all__ = ["expand_macros"]

# ${name}, or $${name} for a literal "${name}".
_REFERENCE_RE = re.compile(r"\$(\$?)\{([^{}]*)\}")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_Issue = tuple[Loc, str]


class _MacroError(Exception):
    """A reference that cannot be resolved; the message is shown to the user."""


class _Scope:
    """The macros visible from one place in the config, resolved lazily and memoised."""

    def __init__(
        self,
        layers: list[Mapping[str, Any]],
        builtins: Mapping[str, Any],
        environ: Mapping[str, str],
    ) -> None:
        self._layers = layers  # first match wins: model macros, then global ones
        self._builtins = builtins
        self._environ = environ
        self._resolved: dict[str, Any] = {}

    def value(self, name: str, chain: tuple[str, ...] = ()) -> Any:
        """The value of ``${name}``: a str, or the macro's own scalar when it is not text."""
        if name.startswith("env."):
            var = name[4:]
            if not _ENV_NAME_RE.match(var):
                raise _MacroError(f"invalid environment variable name in '${{{name}}}'")
            if var not in self._environ:
                raise _MacroError(f"environment variable {var!r} is not set (used as '${{{name}}}')")
            return self._environ[var]  # taken literally: env values are not expanded
        if name in self._builtins:
            return self._builtins[name]
        if name in self._resolved:
            return self._resolved[name]
        if name in chain:
            cycle = " -> ".join(f"${{{n}}}" for n in (*chain[chain.index(name) :], name))
            raise _MacroError(f"macro cycle: {cycle}")
        for layer in self._layers:
            if name in layer:
                raw = layer[name]
                break
        else:
            raise _MacroError(self._unknown(name))
        if raw is None or isinstance(raw, (dict, list)):
            raise _MacroError(f"macro '${{{name}}}' is not a string, number or boolean")
        value = self.expand(raw, (*chain, name)) if isinstance(raw, str) else raw
        self._resolved[name] = value
        return value

    def expand(self, text: str, chain: tuple[str, ...] = ()) -> str:
        """Expand every reference in ``text``; the first failure raises ``_MacroError``."""

        def replace(match: re.Match[str]) -> str:
            escaped, name = match.groups()
            if escaped:
                return "${" + name + "}"
            return _to_text(self.value(name, chain))

        return _REFERENCE_RE.sub(replace, text)

    def _unknown(self, name: str) -> str:
        known = {*self._builtins, *(n for layer in self._layers for n in layer)}
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean '${{{close[0]}}}'?)" if close else ""
        return f"unknown macro '${{{name}}}'{hint}"


def _to_text(value: Any) -> str:
    if isinstance(value, bool):  # YAML spelling, as llama-swap's %v prints it
        return "true" if value else "false"
    return str(value)


class _Expander:
    """Walks the data, expanding strings and collecting an issue per failing reference."""

    def __init__(self) -> None:
        self.issues: list[_Issue] = []

    def string(self, text: str, scope: _Scope, loc: Loc, *, keep_type: bool = False) -> Any:
        if keep_type:
            match = _REFERENCE_RE.fullmatch(text)
            if match and not match.group(1):
                try:
                    return scope.value(match.group(2))
                except _MacroError as exc:
                    self.issues.append((loc, str(exc)))
                    return text
        failures: list[str] = []

        def replace(match: re.Match[str]) -> str:
            try:
                return scope.expand(match.group(0))
            except _MacroError as exc:
                failures.append(str(exc))  # report every bad reference, not just the first
                return match.group(0)

        expanded = _REFERENCE_RE.sub(replace, text)
        self.issues += [(loc, message) for message in dict.fromkeys(failures)]
        return text if failures else expanded

    def walk(self, value: Any, scope: _Scope, loc: Loc, *, keep_type: bool = False) -> Any:
        if isinstance(value, str):
            return self.string(value, scope, loc, keep_type=keep_type)
        if isinstance(value, dict):
            return {k: self.walk(v, scope, (*loc, k), keep_type=keep_type) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, scope, (*loc, i), keep_type=keep_type) for i, v in enumerate(value)]
        return value

    def model(
        self,
        model_id: Any,
        model: dict[Any, Any],
        global_macros: Mapping[str, Any],
        environ: Mapping[str, str],
    ) -> dict[Any, Any]:
        own = model.get("macros")
        layers = [own if isinstance(own, dict) else {}, global_macros]
        loc: Loc = ("models", model_id)
        # ${PORT} is the port after expansion: "port: ${llama_port}" is allowed.
        port = model.get("port", default_port(model.get("backend")))
        if isinstance(port, str):
            port = self.string(port, _Scope(layers, {"MODEL_ID": model_id}, environ), (*loc, "port"))
        scope = _Scope(layers, {"PORT": port, "MODEL_ID": model_id}, environ)
        out: dict[Any, Any] = {}
        for key, value in model.items():
            if key == "macros":
                out[key] = value  # definitions are expanded where they are used
            elif key == "port":
                out[key] = port
            elif key == "filters" and isinstance(value, dict):
                out[key] = self.filters(value, scope, (*loc, key))
            else:
                out[key] = self.walk(value, scope, (*loc, key))
        return out

    def filters(self, filters: dict[Any, Any], scope: _Scope, loc: Loc) -> dict[Any, Any]:
        """A ``filters`` block: set values keep a lone macro's type, and setParamsByID's keys
        are expanded too (``"${MODEL_ID}:high"``)."""
        out: dict[Any, Any] = {}
        for key, value in filters.items():
            if key == "setParamsByID" and isinstance(value, dict):
                by_id: dict[Any, Any] = {}
                for name, params in value.items():
                    where = (*loc, key, name)
                    expanded = self.string(name, scope, where) if isinstance(name, str) else name
                    if expanded in by_id:
                        self.issues.append((where, f"{name!r} is {expanded!r} again"))
                    by_id[expanded] = self.walk(params, scope, where, keep_type=True)
                out[key] = by_id
            else:
                out[key] = self.walk(value, scope, (*loc, key), keep_type=key == "setParams")
        return out

    def peer(self, peer: dict[Any, Any], scope: _Scope, loc: Loc) -> dict[Any, Any]:
        """A ``peers`` entry: global macros and ``${env.X}`` (an ``apiKey`` kept out of the
        file), filters as a model's."""
        return {key: self.filters(value, scope, (*loc, key))
                if key == "filters" and isinstance(value, dict)
                else self.walk(value, scope, (*loc, key)) for key, value in peer.items()}


def expand_macros(
    data: dict[Any, Any], environ: Mapping[str, str]
) -> tuple[dict[Any, Any], list[_Issue]]:
    """Return a copy of ``data`` with macros expanded, and the problems found.

    Strings that fail to expand are left as they were; every issue is
    ``(location, message)``, the location being that of the string.
    """
    expander = _Expander()
    macros = data.get("macros")
    global_macros: Mapping[str, Any] = macros if isinstance(macros, dict) else {}
    top = _Scope([global_macros], {}, environ)
    out = dict(data)
    if isinstance(data.get("apiKeys"), list):
        out["apiKeys"] = expander.walk(data["apiKeys"], top, ("apiKeys",))
    if isinstance(data.get("docker"), dict):
        out["docker"] = expander.walk(data["docker"], top, ("docker",))
    if isinstance(data.get("peers"), dict):
        out["peers"] = {peer_id: expander.peer(peer, top, ("peers", peer_id))
                        if isinstance(peer, dict) else peer
                        for peer_id, peer in data["peers"].items()}
    models = data.get("models")
    if isinstance(models, dict):
        out["models"] = {
            model_id: expander.model(model_id, model, global_macros, environ)
            if isinstance(model, dict)
            else model
            for model_id, model in models.items()
        }
    return out, expander.issues

