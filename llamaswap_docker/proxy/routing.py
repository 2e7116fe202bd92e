"""From an HTTP request to the model it names, and the body to forward.

The model comes from the JSON body's ``model``, a multipart form field ``model`` (audio and
image uploads), or ``?model=``. The body is read once and forwarded as the same bytes unless
the model's config must change it (``useModelName``, ``filters``).

A name is resolved in llama-swap's order (``Router``):

    active profile's pins → selectors (pin, warm, spillover) → model ids and aliases
    (setParamsByID names included) → peers' models ("peer/model", or a bare name one peer
    alone has)

and ``setParamsByID`` is keyed by the name that comes out of the first two steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import orjson
from loguru import logger

from llamaswap_docker.config import Config, ModelConfig, PeerConfig, SelectorConfig
from llamaswap_docker.errors import (
    ModelNotFound,
    ModelNotLoaded,
    NoTargetAvailable,
    RequestError,
    UnsupportedMediaType,
)
from llamaswap_docker.lifecycle import ModelState
from llamaswap_docker.observe import EventBus

__all__ = [
    "ModelRequest",
    "Route",
    "Router",
    "Spillover",
    "multipart_field",
    "parse_model_request",
    "pick_warm",
    "replace_multipart_field",
    "rewrite_body",
    "split_upstream_target",
]

_T = TypeVar("_T")


@dataclass
class ModelRequest:
    """A request's model name and body, as the client sent them."""

    model_name: str
    body: bytes
    #: The parsed JSON body, when it was JSON (None for multipart and others).
    payload: dict[str, Any] | None
    content_type: str = ""


def _multipart_delimiter(content_type: str) -> bytes | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value.strip('"'):
            return b"--" + value.strip('"').encode()
    return None


def _is_text_field(head: bytes, name: str) -> bool:
    return f'name="{name}"'.encode() in head and b"filename=" not in head


def multipart_field(body: bytes, content_type: str, name: str) -> str | None:
    """The value of a small text field in a multipart/form-data body, or None."""
    delimiter = _multipart_delimiter(content_type)
    if delimiter is None:
        return None
    # Parts follow a delimiter: text before the first one (or a body without any) is no part.
    for section in body.split(delimiter)[1:]:
        head, sep, value = section.partition(b"\r\n\r\n")
        if sep and _is_text_field(head, name):
            return value.removesuffix(b"\r\n").decode("utf-8", "replace").strip()
    return None


def replace_multipart_field(body: bytes, content_type: str, name: str, value: str) -> bytes:
    """``body`` with text field ``name`` set to ``value`` (unchanged when there is none)."""
    delimiter = _multipart_delimiter(content_type)
    if delimiter is None:
        return body
    sections = body.split(delimiter)
    for index, section in enumerate(sections):
        head, sep, _ = section.partition(b"\r\n\r\n")
        if sep and _is_text_field(head, name):
            sections[index] = head + sep + value.encode() + b"\r\n"
            return delimiter.join(sections)
    return body


def _is_json(media_type: str) -> bool:
    return media_type in ("application/json", "") or media_type.endswith("+json")


def parse_model_request(body: bytes, content_type: str, query_model: str | None,
                        uploads: bool = False) -> ModelRequest:
    """Find the model a request names.

    A body is read as JSON only with a JSON content type (or none): ``text/plain`` and form
    encodings are what a web page can send cross-site without a CORS preflight, so they are
    refused. ``uploads``: the route takes files (``multipart/form-data``, model in a field).

    Raises:
        RequestError: malformed JSON, or no model named anywhere.
        UnsupportedMediaType: any other content type.
    """
    media_type = content_type.split(";")[0].strip().lower()
    payload: dict[str, Any] | None = None
    model: Any = None
    if uploads and media_type == "multipart/form-data":
        model = multipart_field(body, content_type, "model")
    elif not _is_json(media_type):
        expected = "application/json or multipart/form-data" if uploads else "application/json"
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not accepted here: send {expected} "
            "(curl: -H 'content-type: application/json')")
    elif body:
        parsed = _loads(body)
        if not isinstance(parsed, dict):
            raise RequestError(
                f"request body must be a JSON object, not {_json_kind(parsed)}")
        payload = parsed
        model = parsed.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError(f'"model" must be a string, not {_json_kind(model)}')
    if model is None or model == "":
        model = query_model
    if not isinstance(model, str) or not model:
        raise RequestError(
            "the request names no model: set \"model\" in the JSON body "
            "(or the 'model' form field, or ?model=); GET /v1/models lists them"
        )
    return ModelRequest(model, body, payload, content_type)


def rewrite_body(request: ModelRequest, model: ModelConfig | PeerConfig, *,
                 rename: str | None = None, requested: str | None = None,
                 extra: dict[str, Any] | None = None) -> bytes:
    """The body to forward: the original bytes unless the model name sent or filters change it.

    ``rename``: the model name to send (default: a model's ``useModelName``; a peer's own
    name for its model, or the target a profile or selector chose). ``requested``: the name
    ``setParamsByID`` is keyed by (default: the name the client sent). Filters run in
    llama-swap's order: strip, ``setParams``, ``setParamsByID``; a key ending in ``?`` sets
    its parameter only where the body (as the steps before left it) lacks it. ``extra``: keys
    the proxy sets last, after the filters (``stream_options`` asking for a stream's usage).
    """
    if rename is None and isinstance(model, ModelConfig):
        rename = model.use_model_name or None
    payload = request.payload
    if payload is None:
        if rename and request.content_type.lower().startswith("multipart/form-data"):
            return replace_multipart_field(request.body, request.content_type, "model", rename)
        return request.body
    filters = model.filters
    strip = [name for name in filters.stripped_params if name in payload]
    steps = (filters.effective_set_params,
             filters.set_params_for(request.model_name if requested is None else requested))
    rewritten: dict[str, Any] | None = None
    if strip or (rename and payload.get("model") != rename):
        rewritten = {key: value for key, value in payload.items() if key not in strip}
    current = payload if rewritten is None else rewritten
    for params in steps:
        for key, value in params.items():
            name = key.removesuffix("?")
            if name != key:  # "name?": only where the body lacks it
                if name in current:
                    continue
            elif current.get(name, _ABSENT) == value:
                continue  # already so: the bytes may stay as sent
            if rewritten is None:
                rewritten = current = dict(payload)
            current[name] = value
    if extra:
        if rewritten is None:
            rewritten = dict(payload)
        rewritten.update(extra)
    if rewritten is None:
        return request.body
    if rename:
        rewritten["model"] = rename
    try:
        return orjson.dumps(rewritten)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, NaN: stdlib json
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()


_ABSENT = object()


def _loads(body: bytes) -> Any:
    """Parse a JSON body; orjson first (twice as fast as json on a 4 MB image request, and this
    runs on the event loop), the standard library for what orjson refuses but JSON allows
    (integers beyond 64 bits)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, depth
        raise RequestError(f"request body is not valid JSON: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def split_upstream_target(
    resolve: Callable[[str], _T | None], target: str, raw_target: str | None = None
) -> tuple[_T, str]:
    """``/upstream/<model>/<path>``: the longest prefix of the target naming a model (ids may
    contain '/'), and the rest of the path.

    ``raw_target`` is the same target still percent-encoded, as the client wrote it: the rest is
    cut from it, so ``%2F``, ``%3F`` or ``%00`` reach the model server unchanged.

    Raises:
        ModelNotFound: no prefix names a model.
    """
    parts = (raw_target if raw_target is not None else target).split("/")
    for cut in range(len(parts), 0, -1):
        prefix = "/".join(parts[:cut])
        found = resolve(unquote(prefix) if raw_target is not None else prefix)
        if found is not None:
            return found, "/".join(parts[cut:])
    raise ModelNotFound(
        f"no model in /upstream/{target}; GET /v1/models lists the models you can use"
    )


# --------------------------------------------------------------------------- routes

#: A model's state now (None: no such model), as the router sees it.
StateOf = Callable[[str], ModelState | None]
#: States in which a warm selector prefers a target, best first (waking beats a cold start).
_WARM_ORDER = (ModelState.READY, ModelState.STARTING, ModelState.ASLEEP)


class Route:
    """Where one request goes, once profiles, selectors, aliases and peers are resolved."""

    __slots__ = ("name", "model_id", "peer", "peer_id", "remote_name", "selector", "release")

    def __init__(self, name: str, model_id: str, *, peer: PeerConfig | None = None,
                 peer_id: str | None = None, remote_name: str | None = None,
                 selector: str | None = None, release: Callable[[], None] | None = None) -> None:
        #: The name after the profile and the selector: an id, alias or peer name
        #: (``setParamsByID`` is keyed by it).
        self.name = name
        #: A local model id, or "peer/model" for a peer's model (the name activity uses).
        self.model_id = model_id
        self.peer = peer
        self.peer_id = peer_id
        #: The peer's own name for its model (sent in the body instead of ours).
        self.remote_name = remote_name
        #: The selector that chose it, if one did.
        self.selector = selector
        #: Gives back a spillover selector's reservation (call once, when the request ends).
        self.release = release

    def __repr__(self) -> str:
        return f"Route({self.name!r} -> {self.model_id!r})"


def pick_warm(targets: list[str], model_of: Callable[[str], str | None],
              state_of: StateOf) -> str:
    """llama-swap's ``warm``: the first target that is ready, else the first starting (here:
    then the first asleep), else the first target (which then starts)."""
    states = [state_of(model_id) if (model_id := model_of(target)) else None
              for target in targets]
    for wanted in _WARM_ORDER:
        for target, state in zip(targets, states):
            if state is wanted:
                return target
    return targets[0]


class Spillover:
    """One ``spillover`` selector's reservations: requests in flight through it, by target.

    Targets fill in order: while every active target (loaded or starting, or busy with this
    selector's requests) holds ``settings.spillover`` requests or more, the next cold target
    takes the request; else the least busy active target does (round-robin on ties). Targets
    stopping are skipped. A peer's model is active while it has requests in flight.
    """

    def __init__(self, targets: list[tuple[str, str, bool]], spillover: int) -> None:
        #: (target as written, model id or "peer/model", local?)
        self.targets = targets
        self.spillover = spillover
        self.in_flight: dict[str, int] = {}
        self._turn = 0

    @classmethod
    def for_selector(cls, config: Config, selector: SelectorConfig) -> Spillover:
        targets = []
        for target in selector.targets:
            model_id = config.resolve(target)
            peer = config.peer_model(target) if model_id is None else None
            key = model_id or "/".join(peer or (target,))
            targets.append((target, key, model_id is not None))
        return cls(targets, selector.settings.spillover)

    def reserve(self, state_of: StateOf) -> str:
        """Choose a target for one request and count it in flight (``release`` it after).

        Raises:
            NoTargetAvailable: every target is stopping.
        """
        active: list[tuple[str, str, bool]] = []
        cold: list[tuple[str, str, bool]] = []
        for candidate in self.targets:
            _, key, local = candidate
            busy = self.in_flight.get(key, 0) > 0
            state = state_of(key) if local else None
            if state is ModelState.STOPPING:
                continue
            if busy or state in (ModelState.READY, ModelState.STARTING):
                active.append(candidate)
            else:
                cold.append(candidate)
        if not active and not cold:
            raise NoTargetAvailable("every target of the selector is stopping; retry shortly")
        if active and (self._least(active) < self.spillover or not cold):
            choice = self._least_busy(active)
        else:
            choice = cold[0]
        self.in_flight[choice[1]] = self.in_flight.get(choice[1], 0) + 1
        return choice[0]

    def release(self, target: str) -> None:
        """A request reserved on ``target`` ended."""
        for written, key, _ in self.targets:
            if written == target and self.in_flight.get(key, 0) > 0:
                self.in_flight[key] -= 1
                return

    def _least(self, targets: list[tuple[str, str, bool]]) -> int:
        return min(self.in_flight.get(key, 0) for _, key, _ in targets)

    def _least_busy(self, targets: list[tuple[str, str, bool]]) -> tuple[str, str, bool]:
        least = self._least(targets)
        tied = [t for t in targets if self.in_flight.get(t[1], 0) == least]
        choice = tied[self._turn % len(tied)]
        self._turn += 1
        return choice


class Router:
    """Requested names → routes, and what routing keeps at runtime: the active profile and
    the spillover selectors' reservations. A reloaded config starts with no profile active
    and no reservations (as llama-swap's reload does).

    Args:
        config: the config in force (read on every call: a reload swaps it).
        state_of: a local model's state now (warm and spillover selectors read it).
        events: where ``profileChanged`` is published (``GET /api/events``).
    """

    def __init__(self, config: Callable[[], Config], state_of: StateOf,
                 events: EventBus | None = None) -> None:
        self._source = config
        self._state_of = state_of
        self._events = events
        self._config = config()
        self._active: str | None = None
        self._spillovers: dict[str, Spillover] = {}
        # The routes of plain model ids and aliases, made once per config: most requests
        # name one, and a Route is never changed once made.
        self._plain: dict[str, Route] = {}

    @property
    def config(self) -> Config:
        config = self._source()
        if config is not self._config:
            self._config, self._spillovers, self._plain = config, {}, {}
            if self._active is not None:
                self._active = None
                logger.info("config reloaded: no profile is active")
                self._publish()
        return config

    @property
    def active_profile(self) -> str | None:
        """The active profile's name; None: none is."""
        self.config  # noqa: B018 - a reload deactivates it
        return self._active

    def activate(self, name: str | None) -> bool:
        """Make profile ``name`` the active one (None: none); True when that changed.

        Raises:
            KeyError: no profile of that name.
        """
        if name is not None and name not in self.config.profiles:
            raise KeyError(name)
        if name == self._active:
            return False
        self._active = name
        logger.bind(profile=name or "-").info("active profile changed")
        self._publish()
        return True

    def _publish(self) -> None:
        if self._events is not None:
            self._events.publish("profileChanged", {"active": self._active})

    def route(self, name: str) -> Route:
        """The route of a requested name (body, form field or ``?model=``).

        A spillover selector's route holds a reservation: call ``route.release()`` once
        the request ends.

        Raises:
            ModelNotFound: nothing of that name, or the active profile turns it off.
            NoTargetAvailable: a selector has no target it can use now.
        """
        config = self._source()
        if config is self._config and self._active is None:
            route = self._plain.get(name)
            if route is not None:  # the common case: a model id or an alias, as before
                return route
        config = self.config
        name = self._pinned(config, name)
        selector = config.selectors.get(name)
        if selector is None:
            route = self._resolve(config, name)
            if self._active is None and route.peer is None:
                self._plain[name] = route
            return route
        if selector.strategy == "pin":
            target = selector.targets[0]
        elif selector.strategy == "warm":
            target = pick_warm(selector.targets, config.resolve, self._state_of)
        else:
            spillover = self._spillovers.get(name)
            if spillover is None:
                spillover = self._spillovers[name] = Spillover.for_selector(config, selector)
            target = spillover.reserve(self._state_of)
            logger.bind(selector=name, target=target).debug("selector chose a target")
            return self._resolve(config, target, name, lambda: spillover.release(target))
        logger.bind(selector=name, target=target).debug("selector chose a target")
        return self._resolve(config, target, name)

    def upstream(self, target: str, raw_target: str | None = None) -> tuple[Route, str]:
        """``/upstream/<model>/<path>``: the route of the longest prefix of ``target`` that
        names a model, an alias, a peer's model or a pin of the active profile, and the rest
        of the path (cut from ``raw_target``, still percent-encoded, when given). Selectors
        do not apply here, as in llama-swap.

        Raises:
            ModelNotFound: no prefix names anything.
        """
        config = self.config

        def find(name: str) -> Route | None:
            name = self._pinned(config, name)
            if config.resolve(name) is None and config.peer_model(name) is None:
                return None
            return self._resolve(config, name)

        return split_upstream_target(find, target, raw_target)

    def check_ignored(self, route: Route, path: str) -> None:
        """Refuse an ``/upstream/`` request whose path matches ``upstream.ignorePaths`` while
        its model is not ready: a browser's favicon or script must not start (or swap in) a
        model. ``path``: the decoded path after the model, from its ``/``.

        Raises:
            ModelNotLoaded: it matches and the (local) model is not ready.
        """
        if route.peer is not None or not self.config.upstream.ignores(path):
            return
        if self._state_of(route.model_id) is not ModelState.READY:
            raise ModelNotLoaded(
                f"model {route.model_id!r} is not loaded and {path!r} matches "
                "upstream.ignorePaths, so it does not start the model; load the model first "
                "(a request to any other path, or POST /api/models/load/<model>)")

    def _pinned(self, config: Config, name: str) -> str:
        if self._active is None:
            return name
        target = config.profiles[self._active].pins.get(name)
        if target is None:
            return name
        if not target:
            raise ModelNotFound(f"model {name!r} is turned off by the active profile "
                                f"{self._active!r}; GET /api/profiles lists its pins")
        return target

    @staticmethod
    def _resolve(config: Config, name: str, selector: str | None = None,
                 release: Callable[[], None] | None = None) -> Route:
        model_id = config.resolve(name)
        if model_id is not None:
            return Route(name, model_id, selector=selector, release=release)
        peer = config.peer_model(name)
        if peer is not None:
            peer_id, remote_name = peer
            return Route(name, f"{peer_id}/{remote_name}", peer=config.peers[peer_id],
                         peer_id=peer_id, remote_name=remote_name, selector=selector,
                         release=release)
        if release is not None:
            release()
        raise ModelNotFound(
            f"model {name!r} is not configured; GET /v1/models lists the models you can use")
