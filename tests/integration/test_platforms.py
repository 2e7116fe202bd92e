"""Backends × platforms on the real engine: what it records for each preset, swaps, pulls.

There is no GPU and no registry here. Containers are created (never started) through
``Containers.create`` and read back with ``inspect``: the engine records device requests,
devices, groups, runtime and IPC mode as given and checks them only at start. The preset images
cannot be pulled, so the fake upstream image is tagged under their names for the module and
untagged afterwards.
"""

from __future__ import annotations

import grp
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import httpx
import openai
import pytest

from llamaswap_docker.config import ModelConfig, load_config_text
from llamaswap_docker.config.backends import HF_CACHE_VOLUME, PLATFORMS, backend_preset
from llamaswap_docker.errors import ConfigError, EngineError, ImagePullFailed
from llamaswap_docker.runtime import Containers, ContainerSpec, Engine
from llamaswap_docker.runtime.images import ensure_image
from tests.conftest import (
    FAKE_UPSTREAM_IMAGE,
    LLAMA_SERVER_IMAGE,
    RUN_INSTANCE,
    model_containers,
)

HF_TOKEN = "hf_test_not_a_real_token"
#: A registry host that cannot resolve anywhere (RFC 2606 reserves .invalid).
UNREACHABLE_IMAGE = "registry.llamaswap.invalid/ghost/model:1"


def preset_images() -> list[str]:
    refs = []
    for backend in ("llama.cpp", "vllm"):
        for platform in PLATFORMS:
            image = backend_preset(backend, platform).image  # type: ignore[union-attr]
            if image is not None:
                refs.append(image)
    return refs


def host_group(name: str) -> str:
    try:
        return str(grp.getgrnam(name).gr_gid)
    except KeyError:
        return name


DRI_GROUPS = [host_group("video"), host_group("render")]


def nvidia(count: int = -1, ids: list[str] | None = None, caps: list[str] | None = None) -> dict[str, Any]:
    return {"Driver": "nvidia", "Count": count, "DeviceIDs": ids, "Capabilities": [caps or ["gpu"]],
            "Options": {}}


def device(path: str) -> dict[str, str]:
    return {"PathOnHost": path, "PathInContainer": path, "CgroupPermissions": "rwm"}


#: Per platform: the ``gpus`` the test asks for, and what the engine must record for it.
PLATFORM_CASES: dict[str, dict[str, Any]] = {
    "cpu": {"gpus": None, "requests": None, "devices": [], "groups": None, "runtime": None, "env": {}},
    "cuda": {"gpus": [0, 1], "requests": [nvidia(0, ["0", "1"])], "devices": [], "groups": None,
             "runtime": None, "env": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}},
    "rocm": {"gpus": 2, "requests": None, "devices": [device("/dev/kfd"), device("/dev/dri")],
             "groups": DRI_GROUPS, "runtime": None, "env": {"ROCR_VISIBLE_DEVICES": "0,1"}},
    "vulkan": {"gpus": [1], "requests": None, "devices": [device("/dev/dri")], "groups": DRI_GROUPS,
               "runtime": None, "env": {"GGML_VK_VISIBLE_DEVICES": "1"}},
    "intel": {"gpus": [0], "requests": None, "devices": [device("/dev/dri")], "groups": DRI_GROUPS,
              "runtime": None, "env": {"ONEAPI_DEVICE_SELECTOR": "level_zero:0"}},
    "musa": {"gpus": "all", "requests": None, "devices": [], "groups": None, "runtime": "mthreads",
             "env": {"MTHREADS_VISIBLE_DEVICES": "all"}},
}


@pytest.fixture(scope="module")
def tagged_preset_images(docker_client: docker.DockerClient, images: dict[str, str]) -> Iterator[list[str]]:
    """Every preset image name, present on the engine (the fake upstream under that name)."""
    fake = docker_client.images.get(FAKE_UPSTREAM_IMAGE)
    tagged: list[str] = []
    # The vLLM preset's named HF-cache volume is created with the first container using it.
    had_hf_volume = bool(docker_client.volumes.list(filters={"name": HF_CACHE_VOLUME}))
    try:
        for ref in preset_images():
            try:
                present = docker_client.images.get(ref)
            except docker.errors.ImageNotFound:
                pass
            else:
                if present.id == fake.id:
                    tagged.append(ref)  # left by an interrupted run: untag it this time
                continue  # a real one (a machine that can pull): use it, leave it
            repository, tag = ref.rsplit(":", 1)
            assert fake.tag(repository, tag)
            tagged.append(ref)
        yield preset_images()
    finally:
        for ref in tagged:  # untag only: the fake image keeps its own name
            docker_client.images.remove(ref, noprune=True)
        if not had_hf_volume:
            for volume in docker_client.volumes.list(filters={"name": HF_CACHE_VOLUME}):
                if volume.name == HF_CACHE_VOLUME:
                    volume.remove(force=True)


@pytest.fixture
def containers(docker_client: docker.DockerClient, instance_name: str) -> Iterator[tuple[Containers, list[str]]]:
    """``Containers`` for this test's instance, and a list of ids it removes afterwards."""
    engine = Engine.from_settings()
    model_containers_ = Containers(engine, instance_name, f"{RUN_INSTANCE}-net", "host")
    model_containers_.ensure_network()
    created: list[str] = []
    yield model_containers_, created
    for container_id in created:
        try:
            docker_client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
    engine.close()


def model_config(body: str) -> ModelConfig:
    text = "models:\n  m:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    return load_config_text(text, source="test.yaml", environ={}).models["m"]


def model_body(backend: str, platform: str) -> str:
    gpus = PLATFORM_CASES[platform]["gpus"]
    lines = [f"platform: {platform}"] + ([f"gpus: {gpus}"] if gpus is not None else [])
    if backend == "llama.cpp":
        lines += ["backend: llama.cpp", "cmd: -m /models/tiny.gguf -ngl 99", "volumes: [/srv/models:/models:ro]"]
    elif backend == "vllm":
        lines += ["backend: vllm", "cmd: --model Qwen/Qwen3-0.6B"]
    else:
        lines += [f"image: {FAKE_UPSTREAM_IMAGE}", "cmd: [--port, '8080']"]
    return "\n".join(lines)


EXPECTED_IMAGE = {
    ("llama.cpp", "cpu"): "ghcr.io/ggml-org/llama.cpp:server",
    ("llama.cpp", "cuda"): "ghcr.io/ggml-org/llama.cpp:server-cuda",
    ("llama.cpp", "rocm"): "ghcr.io/ggml-org/llama.cpp:server-rocm",
    ("llama.cpp", "vulkan"): "ghcr.io/ggml-org/llama.cpp:server-vulkan",
    ("llama.cpp", "intel"): "ghcr.io/ggml-org/llama.cpp:server-intel",
    ("llama.cpp", "musa"): "ghcr.io/ggml-org/llama.cpp:server-musa",
    ("vllm", "cpu"): "vllm/vllm-openai-cpu:latest-x86_64",
    ("vllm", "cuda"): "vllm/vllm-openai:latest",
    ("vllm", "rocm"): "vllm/vllm-openai-rocm:latest",
    ("vllm", "intel"): "vllm/vllm-openai-xpu:latest",
}
EXPECTED_CMD = {
    "llama.cpp": ["-m", "/models/tiny.gguf", "-ngl", "99"],
    "vllm": ["--model", "Qwen/Qwen3-0.6B"],
    "custom": ["--port", "8080"],
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("backend", ["llama.cpp", "vllm", "custom"])
def test_engine_records_each_backend_and_platform_preset(
    backend: str, platform: str, tagged_preset_images: list[str], containers: tuple[Containers, list[str]],
    docker_client: docker.DockerClient, instance_name: str,
) -> None:
    if backend == "vllm" and platform in ("vulkan", "musa"):
        # vLLM publishes no image for these: a config error, before any engine call.
        with pytest.raises(ConfigError, match=f"publishes no image for platform '{platform}'"):
            model_config(model_body(backend, platform))
        return
    model_containers_, created = containers
    spec = ContainerSpec.from_model(f"{backend}-{platform}", model_config(model_body(backend, platform)),
                                    environ={"HF_TOKEN": HF_TOKEN})
    case = PLATFORM_CASES[platform]
    image = EXPECTED_IMAGE.get((backend, platform), FAKE_UPSTREAM_IMAGE)
    port = 8000 if backend == "vllm" else 8080

    if case["runtime"] and case["runtime"] not in docker_client.info().get("Runtimes", {}):
        # The engine checks the runtime name at create ("Unknown runtime specified mthreads")
        # where the Moore Threads toolkit is not installed, as here: check that it says so,
        # and check the create arguments themselves instead of the engine's record.
        with pytest.raises(EngineError, match=case["runtime"]):
            model_containers_.create(spec)
        kwargs = spec.container_kwargs()
        assert kwargs["image"] == image and kwargs["command"] == EXPECTED_CMD[backend]
        assert kwargs["runtime"] == case["runtime"]
        assert case["env"].items() <= kwargs["environment"].items()
        assert "devices" not in kwargs and "device_requests" not in kwargs
        return

    ref = model_containers_.create(spec)
    created.append(ref.id)
    attrs = docker_client.api.inspect_container(ref.id)
    config, host = attrs["Config"], attrs["HostConfig"]

    assert config["Image"] == image
    assert config["Cmd"] == EXPECTED_CMD[backend]
    assert config["Labels"]["io.llamaswap.port"] == str(port)
    assert config["Labels"]["io.llamaswap.managed"] == "true"
    assert config["Labels"]["io.llamaswap.instance"] == instance_name
    assert f"{port}/tcp" in config["ExposedPorts"]
    assert host["PortBindings"][f"{port}/tcp"][0]["HostIp"] == "127.0.0.1"
    assert host["DeviceRequests"] == case["requests"]
    assert (host["Devices"] or []) == case["devices"]
    assert host["GroupAdd"] == case["groups"]
    assert host["Runtime"] == (case["runtime"] or "runc")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert case["env"].items() <= env.items()

    if backend == "llama.cpp":
        assert env["LLAMA_ARG_HOST"] == "0.0.0.0" and env["LLAMA_ARG_PORT"] == "8080"
    if backend == "vllm":
        assert host["IpcMode"] == "host"
        assert env["HF_TOKEN"] == HF_TOKEN
        assert f"{HF_CACHE_VOLUME}:/root/.cache/huggingface" in host["Binds"]
    else:
        assert host["IpcMode"] != "host" and "HF_TOKEN" not in env
        assert host["ShmSize"] == 64 << 20, "the engine's default /dev/shm"
    if (backend, platform) == ("vllm", "rocm"):
        # The engine adds "label=disable" itself for a container sharing the host's IPC.
        assert host["CapAdd"] == ["SYS_PTRACE"] and "seccomp=unconfined" in host["SecurityOpt"]
    if (backend, platform) == ("vllm", "intel"):
        assert host["Privileged"] is True and "/dev/dri/by-path:/dev/dri/by-path" in host["Binds"]
    assert attrs["State"]["Status"] == "created", "created, never started"


def test_vulkan_on_nvidia_is_a_device_request_with_the_graphics_capability(
    containers: tuple[Containers, list[str]], docker_client: docker.DockerClient, images: dict[str, str],
) -> None:
    model_containers_, created = containers
    model = model_config(f"image: {FAKE_UPSTREAM_IMAGE}\nplatform: vulkan\nvulkanDriver: nvidia\ngpus: [0]")
    ref = model_containers_.create(ContainerSpec.from_model("vk", model))
    created.append(ref.id)
    host = docker_client.api.inspect_container(ref.id)["HostConfig"]
    assert host["DeviceRequests"] == [nvidia(0, ["0"], ["gpu", "compute", "utility", "graphics"])]
    assert not host["Devices"] and host["GroupAdd"] is None


def test_user_docker_options_replace_the_platforms_on_the_engine(
    containers: tuple[Containers, list[str]], docker_client: docker.DockerClient, images: dict[str, str],
) -> None:
    model_containers_, created = containers
    model = model_config(f"""\
        image: {FAKE_UPSTREAM_IMAGE}
        platform: rocm
        docker: {{devices: ["/dev/kfd", "/dev/dri/renderD128"], groupAdd: ["44", "992"], shmSize: 2g}}
    """)
    ref = model_containers_.create(ContainerSpec.from_model("rocm-one-node", model))
    created.append(ref.id)
    host = docker_client.api.inspect_container(ref.id)["HostConfig"]
    assert host["Devices"] == [device("/dev/kfd"), device("/dev/dri/renderD128")]
    assert host["GroupAdd"] == ["44", "992"] and host["ShmSize"] == 2 << 30


# ----------------------------------------------------------------------------- swaps


def test_swap_between_a_vllm_and_a_llama_cpp_model_and_back_through_the_openai_sdk(
    start_proxy, tiny_model_dir, docker_client: docker.DockerClient, instance_name: str,
) -> None:
    proxy = start_proxy({
        # The vllm preset with its image overridden by the fake upstream in vLLM mode: port
        # 8000, ipc host and the Hugging Face cache mount come from the preset.
        "qwen-vllm": {"backend": "vllm", "platform": "cpu", "image": FAKE_UPSTREAM_IMAGE,
                      "cmd": ["--mode", "vllm", "--port", "8000", "--model-name", "qwen-vllm"]},
        # The llama.cpp preset with Debian's llama-server: no --host/--port in cmd, the preset's
        # LLAMA_ARG_HOST/LLAMA_ARG_PORT make it listen where the proxy looks.
        "tiny-llama": {"backend": "llama.cpp", "image": LLAMA_SERVER_IMAGE,
                       "cmd": ["-m", "/models/tiny.gguf", "-c", "512"],
                       "volumes": [f"{tiny_model_dir}:/models:ro"]},
    })
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=60)
    served_by: list[str] = []
    for model in ("qwen-vllm", "tiny-llama", "qwen-vllm"):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply.choices[0].message.content is not None and reply.usage is not None
        [running] = model_containers(docker_client, instance_name, all=False)
        assert running.labels["io.llamaswap.model"] == model, "the other model was swapped out"
        if model == "qwen-vllm":
            assert running.attrs["HostConfig"]["IpcMode"] == "host"
            assert running.labels["io.llamaswap.port"] == "8000"
        else:
            assert "--port" not in running.attrs["Config"]["Cmd"]
            assert "LLAMA_ARG_PORT=8080" in running.attrs["Config"]["Env"]
        served_by.append(running.id)
    assert served_by[2] != served_by[0], "swapping back starts a fresh container"
    assert len(model_containers(docker_client, instance_name)) == 1, "swapped-out containers removed"


# ----------------------------------------------------------------------------- pulls


def test_pull_from_an_unreachable_registry_fails_within_seconds_with_the_engines_reason(
    docker_client: docker.DockerClient,
) -> None:
    engine = Engine.from_settings()
    try:
        started = time.monotonic()
        with pytest.raises(ImagePullFailed) as caught:
            ensure_image(engine, UNREACHABLE_IMAGE, "missing")
        elapsed = time.monotonic() - started
    finally:
        engine.close()
    # Not the minutes a retry loop or a hung resolver would take.
    assert elapsed < 60, f"the pull took {elapsed:.1f}s to fail"
    message = str(caught.value)
    assert message.startswith(f"pulling image {UNREACHABLE_IMAGE!r} failed: ")
    assert "registry.llamaswap.invalid" in message.split("failed: ", 1)[1], "the engine's own reason"


def test_a_request_for_a_model_whose_pull_fails_gets_503_with_the_reason_quickly(start_proxy) -> None:
    proxy = start_proxy({"ghost": {"image": UNREACHABLE_IMAGE}}, docker={"pullPolicy": "missing"})
    # Answered within the client's 60 s read timeout, not after a hung pull.
    response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=60, json={
        "model": "ghost", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert UNREACHABLE_IMAGE in message and "registry.llamaswap.invalid" in message
