"""Placement on the real engine: a declared two-GPU inventory, ``routing.router.use: fit``.

There is no GPU here, so the models are ``platform: cpu`` containers with a declared ``vram``:
placement, eviction and adoption are read from what the engine records — each container's
``LLAMASWAP_DEVICES`` and ``io.llamaswap.devices`` label — and from ``/running`` and
``GET /api/hardware``. For ``platform: cuda`` the created (never started) container's device
request is read back instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import docker
import httpx
import yaml

from llamaswap_docker.config import load_config_text
from llamaswap_docker.lifecycle import Scheduler
from llamaswap_docker.lifecycle.need import needs_of
from llamaswap_docker.lifecycle.placement import Device
from llamaswap_docker.lifecycle.scheduler import Start
from llamaswap_docker.runtime import Containers, ContainerSpec, Engine
from tests.conftest import RUN_INSTANCE, chat, fake_model, model_containers
from tests.integration.test_observe import EventReader, wait_for

GiB = 1 << 30
TWO_GPUS = {"gpus": [{"id": 0, "memory": "24GiB"}, {"id": 1, "memory": "24GiB"}]}
FIT = {"router": {"use": "fit"}}


def models() -> dict[str, Any]:
    return {"big": fake_model(vram="20GiB"), "big2": fake_model(vram="20GiB"),
            "mid": fake_model(vram="14GiB"), "small": fake_model(vram="8GiB"),
            "huge": fake_model(vram="30GiB")}


def placed_on(client: docker.DockerClient, instance: str, model_id: str) -> str | None:
    """The GPUs the engine records for the model's one running container (label and env
    must agree), or None when it has none."""
    found = [c for c in model_containers(client, instance, model_id, all=False)]
    if not found:
        return None
    [container] = found
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert env["LLAMASWAP_DEVICES"] == container.labels["io.llamaswap.devices"]
    return env["LLAMASWAP_DEVICES"]


def running(url: str) -> dict[str, dict[str, Any]]:
    return {e["model"]: e for e in httpx.get(f"{url}/running", timeout=10).json()["running"]}


def test_fit_places_models_by_memory_and_evicts_the_least_recently_used(
        start_proxy: Callable[..., Any], docker_client: docker.DockerClient,
        instance_name: str) -> None:
    proxy = start_proxy(models(), routing=FIT, docker=TWO_GPUS)
    for model_id in ("big", "mid", "small"):
        assert chat(proxy.url, model_id).status_code == 200
    # big fills GPU 0; mid and small share GPU 1.
    assert [placed_on(docker_client, instance_name, m) for m in ("big", "mid", "small")] == [
        "0", "1", "1"]
    assert chat(proxy.url, "mid").status_code == 200  # used again: big is the oldest
    reader = EventReader(proxy.url)
    try:
        assert chat(proxy.url, "big2").status_code == 200
        [event] = wait_for(lambda: reader.of("placement"))
    finally:
        reader.close()
    assert (event["model"], event["policy"], event["gpus"], event["evicted"]) == (
        "big2", "fit", ["0"], ["big"])
    assert event["free_before"] == {"0": 4 * GiB, "1": 2 * GiB}
    assert "evicting big frees 20.0 GiB" in event["why"]
    assert placed_on(docker_client, instance_name, "big2") == "0"
    assert placed_on(docker_client, instance_name, "big") is None  # evicted, removed
    now = running(proxy.url)
    assert sorted(now) == ["big2", "mid", "small"]
    assert now["big2"]["gpus"] == ["0"] and now["big2"]["need_bytes"] == 20 * GiB
    assert now["big2"]["need_source"] == "declared"
    hardware = httpx.get(f"{proxy.url}/api/hardware", timeout=10).json()
    assert hardware["router"] == "fit" and hardware["source"] == "declared"
    assert [(g["id"], g["placed_bytes"], sorted(m["model"] for m in g["models"]))
            for g in hardware["gpus"]] == [("0", 20 * GiB, ["big2"]),
                                           ("1", 22 * GiB, ["mid", "small"])]
    assert [a["memory"]["capacity_bytes"] for a in hardware["accelerators"]] == [24 * GiB] * 2


def test_a_model_that_cannot_fit_gets_503_in_the_callers_dialect(
        start_proxy: Callable[..., Any], docker_client: docker.DockerClient,
        instance_name: str) -> None:
    proxy = start_proxy(models(), routing=FIT, docker=TWO_GPUS)
    assert chat(proxy.url, "big").status_code == 200
    openai_style = chat(proxy.url, "huge")
    assert openai_style.status_code == 503
    error = openai_style.json()["error"]
    assert error["code"] == "insufficient_gpu_memory"
    assert "needs 30.0 GiB" in error["message"]
    assert "the largest free memory is 24.0 GiB now" in error["message"]
    anthropic_style = httpx.post(f"{proxy.url}/v1/messages", timeout=30, json={
        "model": "huge", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic_style.status_code == 503
    body = anthropic_style.json()
    assert body["type"] == "error" and "30.0 GiB" in body["error"]["message"]
    assert placed_on(docker_client, instance_name, "big") == "0"  # nothing evicted for it
    assert model_containers(docker_client, instance_name, "huge") == []


def test_a_restarted_proxy_adopts_containers_where_they_were_placed(
        start_proxy: Callable[..., Any], docker_client: docker.DockerClient,
        instance_name: str) -> None:
    keep = {**TWO_GPUS, "onShutdown": "keep"}
    first = start_proxy(models(), routing=FIT, docker=keep)
    for model_id in ("big", "small"):
        assert chat(first.url, model_id).status_code == 200
    assert placed_on(docker_client, instance_name, "small") == "1"
    ids = {m: model_containers(docker_client, instance_name, m, all=False)[0].id
           for m in ("big", "small")}
    first.stop()
    second = start_proxy(models(), routing=FIT, docker=keep)
    now = running(second.url)
    assert {m: now[m]["container_id"] for m in ("big", "small")} == ids  # adopted, not replaced
    assert (now["big"]["gpus"], now["small"]["gpus"]) == (["0"], ["1"])
    hardware = httpx.get(f"{second.url}/api/hardware", timeout=10).json()
    assert [g["placed_bytes"] for g in hardware["gpus"]] == [20 * GiB, 8 * GiB]
    # The adopted memory counts: mid (14) fits beside small on GPU 1, not beside big.
    assert chat(second.url, "mid").status_code == 200
    assert placed_on(docker_client, instance_name, "mid") == "1"
    assert placed_on(docker_client, instance_name, "big") == "0"
    httpx.post(f"{second.url}/api/models/unload", timeout=60)
    deadline = time.monotonic() + 30
    while model_containers(docker_client, instance_name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert model_containers(docker_client, instance_name) == []


def test_the_default_router_swaps_as_before_on_the_configs_gpus(
        start_proxy: Callable[..., Any], docker_client: docker.DockerClient,
        instance_name: str) -> None:
    # The group router with declared GPUs: swaps as before, memory unchecked.
    proxy = start_proxy({"a": fake_model(vram="20GiB"), "b": fake_model(vram="20GiB", gpus=1,
                                                                        platform="cuda")},
                        docker=TWO_GPUS)
    assert chat(proxy.url, "a").status_code == 200
    assert placed_on(docker_client, instance_name, "a") == "0,1"  # no `gpus`: every GPU
    reader = EventReader(proxy.url)
    try:
        assert chat(proxy.url, "b").status_code != 200  # cuda cannot start here...
        [event] = wait_for(lambda: reader.of("placement"))
    finally:
        reader.close()
    assert placed_on(docker_client, instance_name, "a") is None  # ...but a was swapped out
    assert (event["model"], event["policy"], event["gpus"], event["evicted"]) == (
        "b", "group", ["0"], ["a"])  # `gpus: 1`: the first GPU
    assert event["need_bytes"] == 20 * GiB and event["fits"] is True


def test_a_cuda_container_gets_a_device_request_for_the_gpus_placement_chose(
        docker_client: docker.DockerClient, images: dict[str, str]) -> None:
    config = load_config_text(yaml.safe_dump({
        "routing": FIT, "docker": TWO_GPUS,
        "models": {"busy": {"image": images["fake"], "vram": "20GiB"},
                   "gpu": {"image": images["fake"], "platform": "cuda", "vram": "10GiB"}}}))
    scheduler = Scheduler(config.models, config)
    devices = tuple(Device(g.id, g.memory) for g in config.docker.gpus or ())
    scheduler.set_inventory(devices, needs_of(config, devices))
    waiter, _ = scheduler.enqueue("busy")
    scheduler.ready("busy", _ref("busy"), 0.0)
    _, decisions = scheduler.enqueue("gpu")
    [start] = [d for d in decisions if isinstance(d, Start)]
    assert start.placement is not None and start.placement.devices == ("1",)
    spec = ContainerSpec.from_model("gpu", config.models["gpu"]).with_gpus(
        start.placement.devices, start.placement.per_device)
    engine = Engine.from_settings()
    containers = Containers(engine, f"{RUN_INSTANCE}-cuda", f"{RUN_INSTANCE}-net", "host")
    created = containers.create(spec)  # created, never started: there is no GPU here
    try:
        attrs = docker_client.api.inspect_container(created.id)
        [request] = attrs["HostConfig"]["DeviceRequests"]
        assert (request["Driver"], request["Count"], request["DeviceIDs"]) == ("nvidia", 0, ["1"])
        env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
        assert (env["LLAMASWAP_DEVICES"], env["CUDA_VISIBLE_DEVICES"]) == ("1", "0")
        labels = attrs["Config"]["Labels"]
        assert (labels["io.llamaswap.devices"], labels["io.llamaswap.vram"]) == (
            "1", str(10 * GiB))
        assert labels["io.llamaswap.spec-hash"] == ContainerSpec.from_model(
            "gpu", config.models["gpu"]).spec_hash
        assert containers.list_owned("gpu")[0].devices == ("1",)
    finally:
        containers.stop(created.id, 0)
        engine.close()


def _ref(model_id: str) -> Any:
    from llamaswap_docker.runtime import ContainerRef

    return ContainerRef(id=model_id, name=model_id, model_id=model_id, instance="t",
                        spec_hash="h", status="running", base_url="http://x")
