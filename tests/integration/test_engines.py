"""Several Docker engines behind one proxy (``engines:``), on a real second ``dockerd``.

The second engine runs with ``--live-restore``: stopping it takes its API away while its
containers run on, as when a remote machine's engine stops answering; started again, it
reports them as before. Every wait polls the state it means, with a generous deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import httpx

from tests.conftest import ProxyHandle, chat, fake_model, model_containers
from tests.integration.conftest import SecondEngine

DEADLINE_S = 60


def _main_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _engines(second: SecondEngine) -> dict[str, Any]:
    return {"main": {"host": _main_url()}, "box2": {"host": second.url}}


def _running(url: str) -> dict[str, dict[str, Any]]:
    entries = httpx.get(f"{url}/running", params={"all": "true"}, timeout=10).json()["running"]
    return {entry["model"]: entry for entry in entries}


def _poll(what: str, check: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _state(url: str, model: str) -> str:
    try:
        return _running(url)[model]["state"]
    except httpx.HTTPError:
        return "?"


def _answers(url: str, model: str) -> bool:
    try:
        return chat(url, model).status_code == 200
    except httpx.HTTPError:
        return False


def _stream_in_thread(url: str, model: str) -> tuple[threading.Thread, list[str]]:
    """A long stream read in a thread (every line kept), once it flows."""
    streamed: list[str] = []

    def stream() -> None:
        body = {"model": model, "stream": True, "max_tokens": 100000,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                streamed.append(line)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    _poll("the stream to flow", lambda: len(streamed) > 2)
    return reader, streamed


def test_models_on_two_engines_and_one_goes_away_and_comes_back(
        start_proxy: Callable[..., ProxyHandle], second_engine: SecondEngine,
        docker_client: docker.DockerClient, instance_name: str) -> None:
    proxy = start_proxy({
        "here": fake_model(engine="main"),
        "there": fake_model("--tokens", "100000", "--token-rate", "20", engine="box2"),
    }, engines=_engines(second_engine))
    url = proxy.url
    assert chat(url, "here").status_code == 200
    assert chat(url, "there", max_tokens=2).status_code == 200
    running = _running(url)
    assert running["here"]["engine"] == "main" and running["there"]["engine"] == "box2"
    # Each container is on its engine, and only there.
    second = second_engine.client()
    there_id = running["there"]["container_id"]
    assert [c.id for c in model_containers(second, instance_name, "there")] == [there_id]
    assert not model_containers(docker_client, instance_name, "there")
    assert model_containers(docker_client, instance_name, "here")
    hardware = httpx.get(f"{url}/api/hardware", timeout=10).json()
    assert [(e["name"], e["up"]) for e in hardware["engines"]] == [("main", True), ("box2", True)]

    # A stream in flight on the second engine when it goes away gets an error event.
    reader, streamed = _stream_in_thread(url, "there")

    gone_at = time.monotonic()
    second_engine.stop()
    stopped_at = time.monotonic()
    _poll("the second engine's model to fail", lambda: _state(url, "there") == "failed")
    failed_after = time.monotonic() - stopped_at
    print(f"\nengine stop took {stopped_at - gone_at:.2f}s; its model failed "
          f"{failed_after:.2f}s after the engine was down")
    reader.join(DEADLINE_S)
    assert not reader.is_alive()
    # In-band: the engine's port forwarder went with it (the connection closed), or the
    # proxy cut the request as the engine went away (the error names it).
    assert any(line.startswith("data:") and '"error"' in line for line in streamed), streamed[-3:]
    # Requests for it: 503 naming the engine; the first engine's model serves on.
    refused = chat(url, "there")
    assert refused.status_code == 503 and "box2" in refused.json()["error"]["message"]
    assert chat(url, "here").status_code == 200
    assert "box2" in _running(url)["there"]["failure"]

    back_at = time.monotonic()
    second_engine.start()
    engine_up = time.monotonic()
    _poll("the second engine's model to be adopted", lambda: _state(url, "there") == "ready")
    _poll("the adopted model to answer", lambda: _answers(url, "there"))
    answered_after = time.monotonic() - engine_up
    print(f"engine start took {engine_up - back_at:.2f}s; its model was adopted and answered "
          f"{answered_after:.2f}s after the engine answered")
    assert _running(url)["there"]["container_id"] == there_id  # adopted, not started again
    second.close()


def test_a_proxy_started_with_an_engine_down_serves_the_others_and_adopts_it_later(
        proxy_processes: Callable[..., Any], second_engine: SecondEngine,
        instance_name: str) -> None:
    models = {"here": fake_model(engine="main"), "there": fake_model(engine="box2"),
              "anywhere": fake_model()}
    first = proxy_processes(models, engines=_engines(second_engine),
                            docker={"onShutdown": "keep"})
    assert chat(first.url, "there").status_code == 200
    there_id = _running(first.url)["there"]["container_id"]
    first.signal(15)
    assert first.wait() == 0

    second_engine.stop()
    try:
        proxy = proxy_processes(models, engines=_engines(second_engine))  # stops on exit
        assert chat(proxy.url, "here").status_code == 200
        refused = chat(proxy.url, "there")
        assert refused.status_code == 503 and "box2" in refused.json()["error"]["message"]
        # A model pinned nowhere goes to an engine that answers.
        assert chat(proxy.url, "anywhere").status_code == 200
        assert _running(proxy.url)["anywhere"]["engine"] == "main"
    finally:
        second_engine.start()
    up_at = time.monotonic()
    _poll("the model on the returned engine to be adopted",
          lambda: _running(proxy.url)["there"]["state"] == "ready")
    _poll("the adopted model to answer", lambda: _answers(proxy.url, "there"))
    print(f"\nadopted and answering {time.monotonic() - up_at:.2f}s after the engine answered")
    assert _running(proxy.url)["there"]["container_id"] == there_id
    proxy.signal(15)
    assert proxy.wait() == 0
    # A clean shutdown stops the containers on every engine.
    client = second_engine.client()
    assert not model_containers(client, instance_name)
    client.close()


def test_fit_places_across_engines_and_engine_pins_hold(
        start_proxy: Callable[..., ProxyHandle], second_engine: SecondEngine,
        docker_client: docker.DockerClient, instance_name: str) -> None:
    """One declared 24 GiB GPU per engine: a model that no longer fits on the first engine
    goes to the second (no eviction); a pinned one goes to its engine whatever fits."""
    engines = _engines(second_engine)
    engines["main"]["gpus"] = [{"id": 0, "memory": "24GiB"}]
    engines["box2"]["gpus"] = [{"id": 0, "memory": "24GiB"}]
    proxy = start_proxy({
        "big": fake_model(vram="20GiB"), "big2": fake_model(vram="20GiB"),
        "small": fake_model(vram="2GiB", engine="box2"),
    }, engines=engines, routing={"router": {"use": "fit"}})
    for model_id in ("big", "big2", "small"):
        assert chat(proxy.url, model_id).status_code == 200
    running = _running(proxy.url)
    assert {m: (running[m]["engine"], running[m]["gpus"]) for m in running} == {
        "big": ("main", ["main:0"]), "big2": ("box2", ["box2:0"]),
        "small": ("box2", ["box2:0"])}
    second = second_engine.client()
    on_box2 = {c.labels["io.llamaswap.model"]: c for c in model_containers(second, instance_name)}
    assert sorted(on_box2) == ["big2", "small"]
    env = dict(e.split("=", 1) for e in on_box2["big2"].attrs["Config"]["Env"])
    assert env["LLAMASWAP_DEVICES"] == "0"  # the engine's own id, not placement's box2:0
    assert [c.labels["io.llamaswap.model"] for c in
            model_containers(docker_client, instance_name)] == ["big"]
    hardware = httpx.get(f"{proxy.url}/api/hardware", timeout=10).json()
    assert [(g["id"], g["placed_bytes"] >> 30) for g in hardware["gpus"]] == [
        ("main:0", 20), ("box2:0", 22)]
    second.close()


def test_cleanup_engine_and_ps_name_the_second_engine(
        start_proxy: Callable[..., ProxyHandle], second_engine: SecondEngine,
        docker_client: docker.DockerClient, instance_name: str, tmp_path: Any) -> None:
    from tests.conftest import proxy_config_yaml
    from tests.integration.test_cli import cli

    models = {"there": fake_model(engine="box2")}
    proxy = start_proxy(models, engines=_engines(second_engine))
    assert chat(proxy.url, "there").status_code == 200
    listed = cli("ps", url=proxy.url)
    assert listed.returncode == 0, listed.stderr
    assert "ENGINE" in listed.stdout and "box2" in listed.stdout
    second = second_engine.client()
    orphan = second.containers.run(
        "llamaswap/fake-upstream:local", ["--port", "8080"], detach=True,
        labels={"io.llamaswap.managed": "true", "io.llamaswap.instance": instance_name,
                "io.llamaswap.model": "gone"})
    config = tmp_path / "config.yaml"
    config.write_text(proxy_config_yaml(models, instance_name, engines=_engines(second_engine)))

    removed = cli("cleanup", "-c", str(config), "--engine", "box2", "--yes", url=proxy.url)

    assert removed.returncode == 0, removed.stderr
    assert "engine 'box2'" in removed.stdout and f"removed {orphan.name}" in removed.stdout
    [kept] = model_containers(second, instance_name, "there")  # the proxy's: left alone
    assert kept.id == _running(proxy.url)["there"]["container_id"]
    refused = cli("cleanup", "-c", str(config), "--engine", "box9", url=proxy.url)
    assert refused.returncode != 0 and "box9" in refused.stderr
    second.close()


def test_an_engine_over_tls(start_proxy: Callable[..., ProxyHandle],
                            second_engine: SecondEngine, instance_name: str) -> None:
    """The second engine's TLS port (``--tlsverify``), with the CA and a client certificate:
    models run there as on its socket; without the client certificate it refuses, and the
    proxy says so for that engine alone."""
    engines = {"main": {"host": _main_url()},
               "tls": {"host": second_engine.tls_url, "tls": second_engine.tls},
               "notls": {"host": second_engine.tls_url}}
    proxy = start_proxy({"there": fake_model(engine="tls"), "nowhere": fake_model(engine="notls"),
                         "here": fake_model(engine="main")}, engines=engines, docker={
                             "instance": instance_name})
    assert chat(proxy.url, "there").status_code == 200
    assert _running(proxy.url)["there"]["engine"] == "tls"
    second = second_engine.client()
    assert model_containers(second, instance_name, "there")
    second.close()
    refused = chat(proxy.url, "nowhere")
    assert refused.status_code == 503 and "'notls' is not reachable" in refused.json()["error"][
        "message"]
    engines_now = {e["name"]: e for e in httpx.get(f"{proxy.url}/api/hardware",
                                                   timeout=10).json()["engines"]}
    assert engines_now["tls"]["up"] and not engines_now["notls"]["up"]
    assert chat(proxy.url, "here").status_code == 200


def test_an_engine_that_stops_answering_cuts_its_streams_and_is_adopted_when_it_answers(
        start_proxy: Callable[..., ProxyHandle], second_engine: SecondEngine) -> None:
    """A frozen engine (its socket accepts, nothing answers) while its model's port still
    works: only the proxy's pings can tell. Its model fails, the stream in flight is cut with
    an error naming the engine, the other engine serves; thawed, the model is adopted."""
    proxy = start_proxy({
        "here": fake_model(engine="main"),
        "there": fake_model("--tokens", "100000", "--token-rate", "20", engine="box2"),
    }, engines=_engines(second_engine))
    url = proxy.url
    assert chat(url, "there", max_tokens=2).status_code == 200
    there_id = _running(url)["there"]["container_id"]
    reader, streamed = _stream_in_thread(url, "there")
    second_engine.freeze()
    try:
        frozen_at = time.monotonic()
        _poll("the frozen engine's model to fail", lambda: _state(url, "there") == "failed")
        failed_after = time.monotonic() - frozen_at
        print(f"\nfrozen engine: its model failed {failed_after:.2f}s after it stopped answering")
        reader.join(DEADLINE_S)
        assert not reader.is_alive()
        assert any("request cut" in line and "box2" in line for line in streamed), streamed[-3:]
        assert chat(url, "here").status_code == 200
    finally:
        second_engine.thaw()
    thawed_at = time.monotonic()
    _poll("the model to be adopted", lambda: _state(url, "there") == "ready")
    _poll("the adopted model to answer", lambda: _answers(url, "there"))
    print(f"thawed engine: its model adopted and answering {time.monotonic() - thawed_at:.2f}s "
          "after it answered again")
    assert _running(url)["there"]["container_id"] == there_id
