"""Resolving a requested name: profiles → selectors → aliases (setParamsByID names too) →
peers, and the body that goes out. Pure logic: model states come from a dict."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from llamaswap_docker.config import Config, load_config_text
from llamaswap_docker.errors import ConfigError, ModelNotFound, ModelNotLoaded, NoTargetAvailable
from llamaswap_docker.lifecycle import ModelState
from llamaswap_docker.observe import EventBus
from llamaswap_docker.proxy import parse_model_request, rewrite_body
from llamaswap_docker.proxy.routing import Router, Spillover, pick_warm

READY, STARTING, STOPPED, STOPPING, ASLEEP, FAILED = (
    ModelState.READY, ModelState.STARTING, ModelState.STOPPED, ModelState.STOPPING,
    ModelState.ASLEEP, ModelState.FAILED)

CONFIG = """
models:
  big: {image: x, aliases: [large]}
  small: {image: x}
  tiny: {image: x}
  coder:
    image: x
    filters:
      setParams: {temperature: 0.7, "top_k?": 40}
      setParamsByID:
        "${MODEL_ID}": {effort: medium}
        "${MODEL_ID}:high": {effort: high, "temperature?": 1.0}
        "${MODEL_ID}:plain":
groups:
  side: {swap: false, members: [small, tiny]}
peers:
  lab:
    proxy: http://10.0.0.2:8080/base
    apiKey: k
    models: [llama, org/model-b, shared]
    filters: {setParamsByID: {"lab/llama": {seed: 1}}}
  cloud:
    proxy: https://api.example.com/v1
    models: [shared, gpt]
selectors:
  auto: {strategy: warm, targets: [large, small, tiny]}
  fixed: {strategy: pin, targets: [small, big]}
  pool:
    strategy: spillover
    targets: [small, tiny, lab/llama]
    settings: {spillover: 2}
profiles:
  work:
    description: at work
    pins: {chat: big, code: coder:high, draw: ~, gpt: fixed}
  home:
    pins: {chat: small}
"""


class States(dict):
    """Model id → state; a missing model is stopped."""

    def __call__(self, model_id: str) -> ModelState | None:
        return self.get(model_id, STOPPED)


@pytest.fixture
def config() -> Config:
    return load_config_text(CONFIG)


def router(config: Config, states: States | None = None, events: EventBus | None = None,
           holder: list[Config] | None = None) -> Router:
    holder = holder if holder is not None else [config]
    return Router(lambda: holder[0], states if states is not None else States(), events)


# -- aliases, setParamsByID names, peers -----------------------------------------------------


@pytest.mark.parametrize(("name", "model_id", "peer"), [
    ("big", "big", None),
    ("large", "big", None),                  # an alias
    ("coder:high", "coder", None),           # a setParamsByID name is an alias
    ("coder:plain", "coder", None),          # even with nothing to set
    ("lab/llama", "lab/llama", "lab"),       # peer/model
    ("llama", "lab/llama", "lab"),           # the bare name, one peer alone has it
    ("lab/org/model-b", "lab/org/model-b", "lab"),  # names with '/' in peer and model
    ("org/model-b", "lab/org/model-b", "lab"),
    ("cloud/shared", "cloud/shared", "cloud"),
    ("gpt", "cloud/gpt", "cloud"),
])
def test_names_resolve_to_models_and_peers(config: Config, name: str, model_id: str,
                                          peer: str | None) -> None:
    route = router(config).route(name)
    assert (route.model_id, route.peer_id, route.name) == (model_id, peer, name)
    if peer:
        assert route.remote_name == model_id.removeprefix(f"{peer}/")


def test_a_bare_name_two_peers_share_is_not_a_name(config: Config) -> None:
    with pytest.raises(ModelNotFound, match="'shared' is not configured"):
        router(config).route("shared")


def test_a_local_model_wins_over_a_peers_bare_name() -> None:
    config = load_config_text("""
models: {llama: {image: x}}
peers: {lab: {proxy: "http://h", models: [llama]}}
""")
    assert router(config).route("llama").peer is None
    assert router(config).route("lab/llama").peer_id == "lab"


# -- profiles --------------------------------------------------------------------------------


def test_a_profile_pins_names_while_active_and_only_then(config: Config) -> None:
    events = EventBus()
    watching = events.subscribe()
    routes = router(config, events=events)
    with pytest.raises(ModelNotFound):
        routes.route("chat")  # a pin is no name until its profile is active
    assert routes.activate("work") is True
    assert watching.queue.get_nowait()[0:1] == ("profileChanged",)
    assert routes.route("chat").model_id == "big"
    code = routes.route("code")
    assert (code.name, code.model_id) == ("coder:high", "coder")  # setParamsByID's key
    assert routes.route("big").model_id == "big"  # names that are not pinned are unchanged
    with pytest.raises(ModelNotFound, match="turned off by the active profile 'work'"):
        routes.route("draw")
    assert routes.activate("work") is False and watching.queue.empty()  # no change, no event
    routes.activate("home")
    assert routes.route("chat").model_id == "small"
    routes.activate(None)
    changes = [watching.queue.get_nowait() for _ in range(watching.queue.qsize())]
    assert [(kind, data["active"]) for kind, data in changes] == [
        ("profileChanged", "home"), ("profileChanged", None)]
    with pytest.raises(KeyError):
        routes.activate("nope")


def test_a_pin_may_name_a_selector_which_then_chooses(config: Config) -> None:
    routes = router(config)
    routes.activate("work")
    route = routes.route("gpt")  # pinned to selector "fixed", which pins "small"
    assert (route.model_id, route.selector) == ("small", "fixed")


def test_a_reloaded_config_starts_with_no_profile_and_says_so(config: Config) -> None:
    events = EventBus()
    holder = [config]
    routes = router(config, events=events, holder=holder)
    routes.activate("work")
    watching = events.subscribe()
    holder[0] = load_config_text(CONFIG)  # what a reload does: a new Config object
    assert routes.active_profile is None
    assert watching.queue.get_nowait()[1]["active"] is None


def test_a_name_routed_before_a_reload_or_a_profile_is_routed_anew_after_it(config: Config) -> None:
    # Plain names' routes are kept per config (most requests name one): a reload that moves an
    # alias or drops a model, and a profile that pins the name, must each be seen at once.
    holder = [config]
    routes = router(config, holder=holder)
    assert routes.route("large").model_id == "big" and routes.route("tiny").model_id == "tiny"
    assert routes.route("large") is routes.route("large")
    holder[0] = load_config_text(CONFIG.replace("aliases: [large]", "")
                                 .replace("small: {image: x}", "small: {image: x, aliases: [large]}")
                                 .replace("  tiny: {image: x}\n", "").replace(", tiny]", "]")
                                 .replace("[small, tiny, lab/llama]", "[small, lab/llama]"))
    assert routes.route("large").model_id == "small"
    with pytest.raises(ModelNotFound):
        routes.route("tiny")
    pinned = load_config_text(CONFIG.replace("home:\n    pins: {chat: small}",
                                             "home:\n    pins: {chat: small, big: tiny}"))
    holder[0] = pinned
    assert routes.route("big").model_id == "big"
    routes.activate("home")
    assert routes.route("big").model_id == "tiny"
    routes.activate(None)
    assert routes.route("big").model_id == "big"


# -- selectors -------------------------------------------------------------------------------


def test_pin_always_takes_the_first_target(config: Config) -> None:
    states = States(big=READY)
    assert router(config, states).route("fixed").model_id == "small"


@pytest.mark.parametrize(("states", "expected"), [
    ({}, "large"),                                      # nothing runs: the first (cold start)
    ({"small": READY}, "small"),                        # the first ready one
    ({"small": READY, "tiny": READY}, "small"),
    ({"tiny": READY, "big": STARTING}, "tiny"),         # ready beats starting
    ({"tiny": STARTING}, "tiny"),                       # starting beats a cold start
    ({"small": ASLEEP}, "small"),                       # waking beats a cold start
    ({"small": ASLEEP, "tiny": STARTING}, "tiny"),
    ({"big": READY}, "large"),                          # an alias target, by its model's state
    ({"big": FAILED, "small": STOPPING}, "large"),
])
def test_warm_prefers_ready_then_starting_then_the_first(config: Config, states: dict[str, Any],
                                                        expected: str) -> None:
    route = router(config, States(states)).route("auto")
    assert (route.name, route.selector) == (expected, "auto")
    assert pick_warm(["large", "small", "tiny"], config.resolve, States(states)) == expected


def spill(spillover: int = 2, peer: bool = True) -> Spillover:
    targets = [("a", "a", True), ("b", "b", True)] + ([("p/m", "p/m", False)] if peer else [])
    return Spillover(targets, spillover)


def test_spillover_fills_each_target_to_its_share_before_the_next() -> None:
    pool, states = spill(2), States()
    chosen = [pool.reserve(states) for _ in range(2)]
    assert chosen == ["a", "a"]          # cold: the first; then it takes its share
    assert pool.reserve(states) == "b"   # a is full: the next cold target
    states["a"] = states["b"] = READY
    assert pool.reserve(states) == "b"   # least busy active one first
    assert pool.reserve(states) == "p/m"  # both full: the peer
    assert pool.in_flight == {"a": 2, "b": 2, "p/m": 1}
    pool.release("a")
    assert pool.reserve(states) == "a"


def test_spillover_round_robins_between_equally_busy_targets() -> None:
    pool = spill(4, peer=False)
    states = States(a=READY, b=READY)
    assert [pool.reserve(states) for _ in range(4)] == ["a", "b", "a", "b"]


def test_spillover_skips_stopping_targets_and_has_none_when_all_stop() -> None:
    pool = spill(1, peer=False)
    states = States(a=STOPPING)
    assert pool.reserve(states) == "b"
    states["b"] = STOPPING
    with pytest.raises(NoTargetAvailable):
        pool.reserve(states)


def test_spillover_uses_busy_targets_beyond_their_share_when_nothing_is_cold() -> None:
    pool = spill(1, peer=False)
    states = States(a=READY, b=READY)
    assert sorted(pool.reserve(states) for _ in range(4)) == ["a", "a", "b", "b"]


def test_a_spillover_route_gives_its_reservation_back_once(config: Config) -> None:
    routes = router(config)
    taken = [routes.route("pool"), routes.route("pool")]
    assert [route.model_id for route in taken] == ["small", "small"]  # its share of 2
    for route in taken:
        assert route.release is not None
        route.release()
    assert routes.route("pool").model_id == "small"  # free again (else: tiny)


# -- /upstream/ ------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "model_id", "rest"), [
    ("big/health", "big", "health"),
    ("lab/org/model-b/v1/models", "lab/org/model-b", "v1/models"),  # longest match
    ("org/model-b/props", "lab/org/model-b", "props"),
    ("coder:high/props", "coder", "props"),
])
def test_upstream_takes_the_longest_prefix_that_names_something(
        config: Config, target: str, model_id: str, rest: str) -> None:
    route, left = router(config).upstream(target)
    assert (route.model_id, left) == (model_id, rest)


def test_upstream_applies_pins_but_not_selectors(config: Config) -> None:
    routes = router(config)
    with pytest.raises(ModelNotFound):
        routes.upstream("auto/health")
    routes.activate("work")
    route, rest = routes.upstream("chat/props")
    assert (route.model_id, rest) == ("big", "props")


@pytest.mark.parametrize(("path", "state", "refused"), [
    ("/favicon.ico", STOPPED, True),   # llama-swap's default patterns
    ("/static/app.js", ASLEEP, True),
    ("/favicon.ico", READY, False),    # loaded: nothing starts, so it is served
    ("/v1/models", STOPPED, False),
])
def test_ignored_upstream_paths_do_not_start_a_model(config: Config, path: str,
                                                    state: ModelState, refused: bool) -> None:
    routes = router(config, States(big=state))
    route, _ = routes.upstream("big" + path)
    if refused:
        with pytest.raises(ModelNotLoaded, match="upstream.ignorePaths"):
            routes.check_ignored(route, path)
    else:
        routes.check_ignored(route, path)


def test_ignore_paths_replace_the_default_and_never_apply_to_peers() -> None:
    config = load_config_text("""
models: {m: {image: x}}
peers: {lab: {proxy: "http://h", models: [p]}}
upstream: {ignorePaths: ['^/ws$', '^/api/jobs$']}
""")
    routes = router(config)
    for path in ("/ws", "/api/jobs"):
        with pytest.raises(ModelNotLoaded):
            routes.check_ignored(routes.route("m"), path)
    routes.check_ignored(routes.route("m"), "/favicon.ico")  # the default is replaced
    routes.check_ignored(routes.route("p"), "/ws")  # a peer starts nothing


# -- the body sent -----------------------------------------------------------------------------


def body_for(config: Config, name: str, payload: dict[str, Any], **routing: Any) -> dict[str, Any]:
    routes = router(config)
    for profile in routing.values():
        routes.activate(profile)
    route = routes.route(name)
    request = parse_model_request(json.dumps(payload).encode(), "application/json", None)
    target = route.peer if route.peer is not None else config.models[route.model_id]
    rename = route.remote_name if route.peer else (route.name if route.name != name else None)
    return json.loads(rewrite_body(request, target, rename=rename, requested=route.name))


def test_set_params_by_id_follow_set_params_and_set_if_absent_keeps_the_clients(
        config: Config) -> None:
    plain = body_for(config, "coder", {"model": "coder", "temperature": 0.1, "top_k": 3})
    assert plain == {"model": "coder", "temperature": 0.7, "top_k": 3, "effort": "medium"}
    high = body_for(config, "coder:high", {"model": "coder:high"})
    # temperature? is absent-only: setParams' 0.7 is there before it.
    assert high == {"model": "coder:high", "temperature": 0.7, "top_k": 40, "effort": "high"}
    assert body_for(config, "coder:plain", {"model": "coder:plain", "top_k": 1}) == {
        "model": "coder:plain", "temperature": 0.7, "top_k": 1}


def test_a_pinned_name_reaches_the_server_as_the_name_chosen(config: Config) -> None:
    sent = body_for(config, "code", {"model": "code"}, profile="work")
    assert sent["model"] == "coder:high" and sent["effort"] == "high"


def test_a_peer_gets_its_own_model_name_and_its_filters(config: Config) -> None:
    assert body_for(config, "lab/llama", {"model": "lab/llama"}) == {"model": "llama", "seed": 1}
    assert body_for(config, "llama", {"model": "llama"}) == {"model": "llama"}


def test_an_unchanged_body_is_forwarded_as_the_same_bytes(config: Config) -> None:
    raw = b'{"model": "coder", "temperature": 0.7, "top_k": 1, "effort": "medium"}'
    request = parse_model_request(raw, "application/json", None)
    assert rewrite_body(request, config.models["coder"]) is raw


# -- config errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    ("selectors: {big: {strategy: pin, targets: [small]}}", "selector 'big' is also a model id"),
    ("selectors: {s: {strategy: warm, targets: [lab/p]}}", "strategy 'warm' picks among local"),
    ("selectors: {s: {strategy: pin, targets: [nope]}}", "unknown model 'nope'"),
    ("selectors: {s: {strategy: spillover, targets: [big, small]}}",
     "put them in one group with `swap: false`"),
    ("selectors: {s: {strategy: fastest, targets: [big]}}", "'warm', 'pin' or 'spillover'"),
    ("profiles: {p: {pins: {x: nope}}}", "profiles.p.pins.x: unknown model 'nope'"),
    ("profiles: {p: [big, small]}", "old list form of a profile"),
    ("profiles: {p: {pins: {}}}", "pins at least one name"),
    ("peers: {x: {proxy: 'h:80', models: [a]}}", "not an http:// or https:// base URL"),
    ("peers: {x: {proxy: 'http://h', models: []}}", "at least 1 item"),
    ("peers: {big: {proxy: 'http://h', models: [a]}, 'big/a': {proxy: 'http://h', models: [b]}}",
     ""),  # "big/a" and "big/a/b": no clash
    ("upstream: {ignorePaths: ['(']}", "invalid regular expression"),
])
def test_routing_vocabulary_errors_name_their_place(extra: str, message: str) -> None:
    text = ("models:\n  big: {image: x, aliases: [large]}\n  small: {image: x}\n"
            "peers: {lab: {proxy: 'http://h', models: [p]}}\n" if "peers:" not in extra else
            "models:\n  big: {image: x, aliases: [large]}\n  small: {image: x}\n") + extra + "\n"
    if not message:
        load_config_text(text)
        return
    with pytest.raises(ConfigError, match="config.yaml:[0-9]+: .*" + re.escape(message)):
        load_config_text(text, source="config.yaml")


def test_set_params_by_id_names_may_not_take_another_models_name() -> None:
    with pytest.raises(ConfigError, match=r"config.yaml:3: models.a.filters.setParamsByID.b: "
                                          "'b' is a model id"):
        load_config_text("models:\n  b: {image: x}\n  a: {image: x, filters: {setParamsByID: "
                         "{b: {t: 1}}}}\n", source="config.yaml")
    with pytest.raises(ConfigError, match="alias 'q' is already used by model 'b'"):
        load_config_text("models:\n  b: {image: x, aliases: [q]}\n  a: {image: x, filters: "
                         "{setParamsByID: {q: {t: 1}}}}\n")


def test_a_peers_full_name_is_reserved() -> None:
    with pytest.raises(ConfigError, match="'lab/m' is also a model id"):
        load_config_text("models: {lab/m: {image: x}}\npeers: {lab: {proxy: 'http://h', "
                         "models: [m]}}\n")


def test_peer_keys_expand_macros_and_environment() -> None:
    config = load_config_text(
        "macros: {host: 10.0.0.9}\nmodels: {m: {image: x}}\npeers:\n  lab:\n"
        "    proxy: http://${host}:8080\n    apiKey: ${env.LAB_KEY}\n    models: [p]\n"
        "    timeouts: {connect: 5, responseHeader: 0, keepalive: 30, idleConn: 90}\n",
        environ={"LAB_KEY": "sk-lab"})
    peer = config.peers["lab"]
    assert (peer.proxy, peer.api_key) == ("http://10.0.0.9:8080", "sk-lab")
    assert (peer.connect_timeout, peer.response_header_timeout) == (5, None)  # 0: no limit
    default = load_config_text("models: {m: {image: x}}\npeers: {l: {proxy: 'http://h', "
                               "models: [p]}}\n").peers["l"]
    assert (default.connect_timeout, default.response_header_timeout) == (30, 60)
