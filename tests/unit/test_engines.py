"""Several engines (``engines:``) without an engine: the config, the engine choice, GPU ids
qualified by engine, and placement across engines."""

from __future__ import annotations

import asyncio
import textwrap
from typing import Any

import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.errors import ConfigError, EngineUnreachable
from llamaswap_docker.lifecycle.engines import EngineSet, EngineSlot, on_engines
from llamaswap_docker.lifecycle.inventory import Inventories
from llamaswap_docker.lifecycle.placement import (
    Device, FitPolicy, Holder, Need, NoFit, Placement, View, config_placement, models_to_evict,
)
from llamaswap_docker.runtime import Containers

GiB = 1 << 30

CONFIG = """\
engines:
  local: {host: "unix:///var/run/docker.sock"}
  box2:
    host: tcp://box2:2376
    tls: {ca: /certs/ca.pem, cert: /certs/cert.pem, key: /certs/key.pem}
    address: 192.168.1.20
    gpus: [{id: 0, memory: 24GiB}, {id: 1, memory: 24GiB}]
models:
  big: {image: x, engine: box2, vram: 18GiB, platform: cuda, gpus: [1]}
  small: {image: x, vram: 4GiB}
"""


def config(text: str = CONFIG) -> Any:
    return load_config_text(textwrap.dedent(text), source="config.yaml", environ={})


def failure(text: str) -> Any:
    with pytest.raises(ConfigError) as caught:
        config(text)
    (issue,) = caught.value.errors  # type: ignore[attr-defined]
    return issue


def test_engines_are_read_with_their_tls_address_and_gpus() -> None:
    loaded = config()
    box2 = loaded.engines["box2"]
    assert list(loaded.engines) == ["local", "box2"]
    assert (box2.tls.ca, box2.tls.cert, box2.tls.key) == (
        "/certs/ca.pem", "/certs/cert.pem", "/certs/key.pem")
    assert box2.address == "192.168.1.20" and [g.id for g in box2.gpus] == ["0", "1"]
    assert loaded.models["big"].engine == "box2" and loaded.models["small"].engine is None


def test_an_unknown_engine_is_reported_at_its_line() -> None:
    issue = failure(CONFIG.replace("engine: box2", "engine: box3"))
    assert (issue.field, issue.line) == ("models.big.engine", 9)
    assert "'box3' is not under engines: (local, box2)" in issue.message


def test_engine_without_engines_and_docker_host_beside_them_are_refused() -> None:
    issue = failure("models:\n  m: {image: x, engine: box2}\n")
    assert issue.field == "models.m.engine" and "there is no engines: block" in issue.message
    issue = failure(CONFIG + "docker: {host: 'tcp://x:2375'}\n")
    assert issue.field == "docker.host" and "move this URL" in issue.message


def test_an_engine_url_must_name_its_scheme() -> None:
    issue = failure("engines:\n  a: {host: box2:2376}\n")
    assert issue.field == "engines.a.host"


def test_gpus_named_in_the_config_are_qualified_by_their_engine() -> None:
    loaded = config()
    needs = on_engines(loaded, {"big": Need(18 * GiB, "declared", pinned=("1",)),
                                "small": Need(4 * GiB, "declared", pinned=("0",))})
    assert needs["big"].engine == "box2" and needs["big"].pinned == ("box2:1",)
    assert needs["small"].engine == "" and needs["small"].pinned == ("local:0",)


def _slots(*up: bool) -> EngineSet:
    loaded = config()
    engines = EngineSet.of(loaded)
    for slot, answers in zip(engines.slots.values(), up):
        slot.up = answers
    return engines


def test_a_start_goes_to_the_pin_else_the_placement_else_the_first_engine_up() -> None:
    assert _slots(True, True).choose("box2") == "box2"
    assert _slots(True, True).choose(None, "box2") == "box2"
    assert _slots(True, True).choose(None) == "local"
    assert _slots(False, True).choose(None) == "box2"
    assert _slots(False, False).choose(None) == "local"


def test_a_down_engine_is_named_in_its_error() -> None:
    engines = _slots(True, False)
    engines.slots["box2"].reason = "pinging the engine: no answer"
    with pytest.raises(EngineUnreachable, match="engine 'box2' is not reachable .*no answer"):
        engines.containers("box2")
    listed = {e["name"]: e for e in engines.to_json()}
    assert listed["box2"]["up"] is False and "no answer" in str(listed["box2"]["reason"])
    assert listed["local"]["up"] is True and listed["local"]["reason"] is None


def test_gpu_ids_repeat_across_engines_so_placement_sees_them_qualified() -> None:
    loaded = config(CONFIG.replace('local: {host: "unix:///var/run/docker.sock"}',
                                   'local: {host: "unix:///x", gpus: [{id: 0, memory: 8GiB}]}'))
    inventory = Inventories({"local": object(), "box2": object()})  # type: ignore[dict-item]
    asyncio.run(inventory.discover(loaded, {}))
    assert [(d.id, d.engine, d.memory // GiB) for d in inventory.devices()] == [
        ("local:0", "local", 8), ("box2:0", "box2", 24), ("box2:1", "box2", 24)]
    data = inventory.to_json("fit", {"big": Placement(("box2:1",), 18 * GiB, "box2")},
                             {"big": "ready"})
    assert [(g["id"], g["engine"], g["placed_bytes"] // GiB) for g in data["gpus"]] == [
        ("local:0", "local", 0), ("box2:0", "box2", 0), ("box2:1", "box2", 18)]
    inventory.reconnected("box2", None)  # gone: placement leaves its GPUs alone
    assert [d.id for d in inventory.devices()] == ["local:0"]


TWO_ENGINES = (Device("a:0", 24 * GiB, "a"), Device("a:1", 24 * GiB, "a"),
               Device("b:0", 24 * GiB, "b"))


def _fit(need: Need, holders: tuple[Holder, ...] = ()) -> Any:
    rules = config("models: {m: {image: x}}")
    return FitPolicy(rules).plan("m", View(tuple(h.model_id for h in holders), need,
                                           TWO_ENGINES, holders))


def test_fit_places_on_another_engine_rather_than_evict() -> None:
    holders = (Holder("x", Placement(("a:0",), 20 * GiB, "a"), last_used=1.0),
               Holder("y", Placement(("a:1",), 20 * GiB, "a"), last_used=2.0))
    plan = _fit(Need(10 * GiB, "declared"), holders)
    assert plan.placement == Placement(("b:0",), 10 * GiB, "b") and not plan.evict


def test_fit_keeps_a_models_gpus_on_one_engine_and_honours_its_pin() -> None:
    plan = _fit(Need(40 * GiB, "declared", count=2))
    assert plan.placement.devices == ("a:0", "a:1") and plan.placement.engine == "a"
    pinned = _fit(Need(40 * GiB, "declared", count=2, engine="b"))
    assert isinstance(pinned, NoFit) and "asks for 2 GPUs and the inventory has 1" in pinned.reason
    assert _fit(Need(4 * GiB, "declared", engine="b")).placement.devices == ("b:0",)


def test_the_config_placement_stays_on_one_engine() -> None:
    every = config_placement(Need(None, "unknown", every=True), TWO_ENGINES)
    assert every == Placement(("a:0", "a:1"), None, "a")
    pinned = config_placement(Need(None, "unknown", every=True, engine="b"), TWO_ENGINES)
    assert pinned == Placement(("b:0",), None, "b")


def test_group_swaps_stay_on_one_engine() -> None:
    rules = config("""\
        engines: {a: {host: "unix:///a"}, b: {host: "unix:///b"}}
        models:
          here: {image: x, engine: a}
          there: {image: x, engine: b}
          also_here: {image: x, engine: a}
          anywhere: {image: x}
        """)
    assert models_to_evict("there", ["here", "also_here", "anywhere"], rules) == {"anywhere"}
    assert models_to_evict("here", ["there", "also_here"], rules) == {"also_here"}
    # A model pinned nowhere may run on any engine: the group rules hold for it everywhere.
    assert models_to_evict("anywhere", ["here", "there"], rules) == {"here", "there"}


class _NoEngine:
    client = None


def test_a_remote_engines_ports_are_published_on_every_interface_and_reached_at_its_address(
) -> None:
    attrs = {"NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "0.0.0.0",
                                                         "HostPort": "49153"}]}}}
    remote = Containers(_NoEngine(), "i", "n", "host", "box2",  # type: ignore[arg-type]
                        "192.168.1.20")
    assert remote.bind == "0.0.0.0"
    assert remote._base_url(attrs, "c", 8080) == "http://192.168.1.20:49153"
    local = Containers(_NoEngine(), "i", "n", "host")  # type: ignore[arg-type]
    assert (local.bind, local._base_url(attrs, "c", 8080)) == ("127.0.0.1",
                                                               "http://127.0.0.1:49153")
    pinned = Containers(_NoEngine(), "i", "n", "host", "box2", "box2.lan",  # type: ignore[arg-type]
                        "192.168.1.20")
    assert pinned.bind == "192.168.1.20"
    six = Containers(_NoEngine(), "i", "n", "host", "box2", "fd00::20")  # type: ignore[arg-type]
    assert six._base_url(attrs, "c", 8080) == "http://[fd00::20]:49153"


def test_an_engine_slot_is_named_default_without_engines() -> None:
    assert EngineSlot("", None).label == "default" and EngineSlot("box2", None).label == "box2"


def test_an_engine_that_never_answers_does_not_hold_the_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A machine that is off accepts nothing and answers nothing: the start goes on without
    it after the connection deadline, and an engine that refuses is down at once."""
    import socket
    import time

    from llamaswap_docker.lifecycle import engines as engines_module

    monkeypatch.setattr(engines_module, "CONNECT_TIMEOUT_S", 0.5)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        port = silent.getsockname()[1]
        loaded = config(f"""\
            engines:
              silent: {{host: "tcp://127.0.0.1:{port}"}}
              gone: {{host: "unix://{tmp_path}/none.sock"}}
            """)
        engines = EngineSet.of(loaded)
        started = time.monotonic()
        engines.connect_all()
        assert time.monotonic() - started < 5
        assert "no answer within" in engines.slots["silent"].reason
        assert not engines.slots["silent"].up and not engines.slots["gone"].up
        assert "not reachable" in engines.slots["gone"].reason
        assert "Start the engine" not in engines.slots["gone"].reason  # no local advice
        engines.release()
    finally:
        silent.close()
