"""Backend presets, platforms and ``gpus`` in the config: what is filled in, what the user keeps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from llamaswap_docker.config import Config, ConfigIssue, load_config, load_config_text
from llamaswap_docker.config.backends import BACKENDS, PLATFORMS, backend_preset
from llamaswap_docker.errors import ConfigError
from llamaswap_docker.runtime import ContainerSpec

REPO = Path(__file__).resolve().parents[2]

LLAMA_CPP_TAGS = {
    "cpu": "server",
    "cuda": "server-cuda",
    "rocm": "server-rocm",
    "vulkan": "server-vulkan",
    "intel": "server-intel",
    "musa": "server-musa",
}
VLLM_IMAGES = {
    "cpu": "vllm/vllm-openai-cpu:latest-x86_64",
    "cuda": "vllm/vllm-openai:latest",
    "rocm": "vllm/vllm-openai-rocm:latest",
    "intel": "vllm/vllm-openai-xpu:latest",
}


def load(text: str, **kwargs: object) -> Config:
    return load_config_text(textwrap.dedent(text), source="test.yaml", environ={}, **kwargs)


def model_yaml(body: str) -> str:
    """A config with one model ``m`` whose keys are ``body``."""
    return "models:\n  m:\n" + textwrap.indent(textwrap.dedent(body), "    ")


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value.errors  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("platform", PLATFORMS)
def test_llama_cpp_preset_fills_the_official_server_image_port_and_env(platform: str) -> None:
    model = load(model_yaml(f"backend: llama.cpp\nplatform: {platform}\ncmd: -m /models/x.gguf")).models["m"]
    assert model.image == f"ghcr.io/ggml-org/llama.cpp:{LLAMA_CPP_TAGS[platform]}"
    assert model.port == 8080 and model.health_path == "/health"
    assert model.cmd == ["-m", "/models/x.gguf"], "cmd stays llama-server's arguments"
    assert model.env == {"LLAMA_ARG_HOST": "0.0.0.0", "LLAMA_ARG_PORT": "8080"}
    assert model.volumes == [] and model.docker.ipc is None
    assert model.pass_env == ()


@pytest.mark.parametrize("platform", sorted(VLLM_IMAGES))
def test_vllm_preset_fills_image_port_ipc_hf_cache_and_hf_token(platform: str) -> None:
    model = load(model_yaml(f"backend: vllm\nplatform: {platform}\ncmd: --model Qwen/Qwen3-0.6B")).models["m"]
    assert model.image == VLLM_IMAGES[platform]
    assert model.port == 8000 and model.health_path == "/health"
    assert model.docker.ipc == "host"
    hf_cache = "llamaswap-hf-cache:/root/.cache/huggingface"  # named: the same for every HOME
    assert model.volumes[0] == hf_cache
    assert model.pass_env == ("HF_TOKEN",)
    assert model.env == {}, "nothing secret is written into the config"


def test_vllm_rocm_and_intel_get_the_options_their_docs_pass() -> None:
    rocm = load(model_yaml("backend: vllm\nplatform: rocm")).models["m"].docker
    assert rocm.cap_add == ["SYS_PTRACE"] and rocm.security_opt == ["seccomp=unconfined"]
    intel = load(model_yaml("backend: vllm\nplatform: intel")).models["m"]
    assert intel.docker.privileged is True
    assert "/dev/dri/by-path:/dev/dri/by-path" in intel.volumes


@pytest.mark.parametrize("platform", ["vulkan", "musa"])
def test_vllm_on_a_platform_without_an_image_is_an_error_naming_the_fix(platform: str) -> None:
    (issue,) = issues_of(model_yaml(f"backend: vllm\nplatform: {platform}"))
    assert issue.line == 2 and issue.field == "models.m"
    assert f"publishes no image for platform '{platform}'" in issue.message
    assert "set `image`" in issue.message
    # With an image of their own it is fine, and the rest of the preset still applies.
    model = load(model_yaml(f"backend: vllm\nplatform: {platform}\nimage: mine/vllm:1")).models["m"]
    assert (model.image, model.port, model.docker.ipc) == ("mine/vllm:1", 8000, "host")


def test_custom_backend_fills_nothing() -> None:
    model = load(model_yaml("image: img\nplatform: cuda")).models["m"]
    assert (model.backend, model.port, model.env, model.volumes) == ("custom", 8080, {}, [])
    assert model.docker.ipc is None and model.preset is None and model.pass_env == ()
    assert backend_preset("custom", "cuda") is None


def test_what_the_user_sets_wins_over_the_preset() -> None:
    model = load(model_yaml("""\
        backend: vllm
        platform: cuda
        image: vllm/vllm-openai:v0.11.0
        port: 9000
        checkEndpoint: /v1/models
        env: {HF_TOKEN: from-config, VLLM_LOGGING_LEVEL: DEBUG}
        volumes: [/srv/hf:/root/.cache/huggingface, /srv/models:/models:ro]
        docker: {ipc: private, capAdd: [SYS_NICE]}
    """)).models["m"]
    assert (model.image, model.port, model.check_endpoint) == ("vllm/vllm-openai:v0.11.0", 9000, "/v1/models")
    assert model.env == {"HF_TOKEN": "from-config", "VLLM_LOGGING_LEVEL": "DEBUG"}
    assert model.pass_env == (), "an HF_TOKEN written in env is not replaced from the environment"
    assert model.volumes == ["/srv/hf:/root/.cache/huggingface", "/srv/models:/models:ro"]
    assert model.docker.ipc == "private" and model.docker.cap_add == ["SYS_NICE"]
    # model_fields_set still says what the user wrote, not what the preset filled.
    assert {"port", "image", "env", "volumes"} <= model.model_fields_set
    assert "backend" in model.model_fields_set
    assert load(model_yaml("backend: vllm")).models["m"].model_fields_set == {"backend"}


def test_preset_env_and_volumes_merge_with_the_users() -> None:
    model = load(model_yaml("""\
        backend: llama.cpp
        env: [LLAMA_ARG_N_PARALLEL=2, LLAMA_ARG_HOST=127.0.0.1]
        volumes: [/srv/models:/models:ro]
    """)).models["m"]
    assert model.env == {"LLAMA_ARG_HOST": "127.0.0.1", "LLAMA_ARG_PORT": "8080", "LLAMA_ARG_N_PARALLEL": "2"}
    vllm = load(model_yaml("backend: vllm\nvolumes: [/srv/models:/models:ro]")).models["m"]
    assert [v.split(":")[1] for v in vllm.volumes] == ["/root/.cache/huggingface", "/models"]


def test_llama_cpp_port_variable_follows_the_models_port() -> None:
    model = load(model_yaml("backend: llama.cpp\nport: 8091")).models["m"]
    assert model.env["LLAMA_ARG_PORT"] == "8091"


def test_a_shm_size_is_vllms_documented_alternative_to_ipc_host() -> None:
    model = load(model_yaml("backend: vllm\ndocker: {shmSize: 16g}")).models["m"]
    assert model.docker.ipc is None and model.docker.shm_size == 16 << 30


def test_port_macro_is_the_backends_default_port() -> None:
    model = load(model_yaml("backend: vllm\ncmd: --model x --port ${PORT}")).models["m"]
    assert model.cmd[-1] == "8000" and model.port == 8000


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_name_is_accepted(backend: str) -> None:
    assert load(model_yaml(f"backend: {backend}\nimage: img")).models["m"].backend == backend


def test_an_unknown_backend_or_platform_is_reported_with_the_choices() -> None:
    issues = issues_of(model_yaml("backend: llamacpp\nplatform: metal"))
    assert [(i.field, i.line) for i in issues] == [("models.m.backend", 3), ("models.m.platform", 4)]
    assert "'llama.cpp'" in issues[0].message and "'cuda'" in issues[1].message


# ----------------------------------------------------------------------------- gpus


@pytest.mark.parametrize(
    ("written", "normalized"),
    [
        ("all", "all"),
        ("ALL", "all"),
        ("2", 2),
        ("'2'", 2),
        ("[0, 1]", ["0", "1"]),
        ("0,1", ["0", "1"]),
        ("[GPU-5a4e3b1c-2f6d-4e8a-9b0c-1d2e3f4a5b6c]", ["GPU-5a4e3b1c-2f6d-4e8a-9b0c-1d2e3f4a5b6c"]),
        ("[MIG-2c1b3a4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d]", ["MIG-2c1b3a4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"]),
    ],
)
def test_gpus_forms(written: str, normalized: object) -> None:
    model = load(model_yaml(f"image: img\nplatform: cuda\ngpus: {written}")).models["m"]
    assert model.gpus == normalized


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("0", "at least 1"),
        ("-1", "at least 1"),
        ("true", "expected 'all', a count"),
        ("[]", "empty"),
        ("[0, 0]", "listed twice: 0"),
        ("[-1]", "must be an index"),
        ("['GPU 1']", "must be an index"),
        ("{a: 1}", "expected 'all', a count"),
    ],
)
def test_invalid_gpus_are_reported_at_their_line(written: str, message: str) -> None:
    (issue,) = issues_of(model_yaml(f"image: img\nplatform: cuda\ngpus: {written}"))
    assert (issue.field, issue.line) == ("models.m.gpus", 5)
    assert message in issue.message


def test_gpus_need_a_gpu_platform() -> None:
    (issue,) = issues_of(model_yaml("image: img\ngpus: all"))
    assert issue.field == "models.m.gpus" and "platform 'cpu' has no GPUs" in issue.message


@pytest.mark.parametrize("platform", ["intel", "vulkan"])
def test_index_only_platforms_reject_uuids(platform: str) -> None:
    (issue,) = issues_of(model_yaml(f"image: img\nplatform: {platform}\ngpus: [0, GPU-abc]"))
    assert "by index only" in issue.message and "'GPU-abc'" in issue.message


def test_vulkan_on_nvidia_takes_uuids_and_needs_platform_vulkan() -> None:
    model = load(model_yaml("image: img\nplatform: vulkan\nvulkanDriver: nvidia\ngpus: [GPU-abc]")).models["m"]
    assert (model.vulkan_driver, model.gpus) == ("nvidia", ["GPU-abc"])
    (issue,) = issues_of(model_yaml("image: img\nplatform: cuda\nvulkanDriver: nvidia"))
    assert issue.field == "models.m.vulkanDriver" and "platform 'vulkan' only" in issue.message


# ----------------------------------------------------------------------------- the example


def test_example_config_shows_every_backend_on_every_platform_it_has_an_image_for() -> None:
    config = load_config(REPO / "config.example.yaml")
    shown = {(m.backend, m.platform) for m in config.models.values()}
    for backend in ("llama.cpp", "vllm"):
        for platform in PLATFORMS:
            if backend_preset(backend, platform).image is not None:  # type: ignore[union-attr]
                assert (backend, platform) in shown, (backend, platform)
    assert ("custom", "cuda") in shown
    assert config.models["llama-vulkan-nvidia"].vulkan_driver == "nvidia"


def test_example_config_pairs_vllm_and_llama_cpp_on_one_gpu_in_one_exclusive_group() -> None:
    config = load_config(REPO / "config.example.yaml")
    llama, vllm = config.models["qwen2.5-7b"], config.models["qwen2.5-vl-7b"]
    assert (llama.backend, vllm.backend) == ("llama.cpp", "vllm")
    assert llama.platform == vllm.platform == "cuda" and llama.gpus == vllm.gpus == ["0"]
    group_id, group = config.group_of("qwen2.5-7b")
    assert config.group_of("qwen2.5-vl-7b")[0] == group_id
    assert group.swap and group.exclusive


def test_presets_never_leak_into_other_models_defaults() -> None:
    config = load("""\
        models:
          a: {backend: vllm, platform: rocm}
          b: {image: img}
          c: {backend: llama.cpp}
    """)
    assert config.models["a"].docker.ipc == "host" and config.models["a"].docker.cap_add == ["SYS_PTRACE"]
    for plain in (config.models["b"], config.models["c"]):
        assert plain.docker.ipc is None and plain.docker.cap_add == [] and plain.docker.security_opt == []
    assert config.models["b"].env == {} and config.models["b"].volumes == []


@pytest.mark.parametrize(("entry", "expected"), [
    ({"backend": "llama.cpp"}, "LLAMA_API_KEY"),
    ({"backend": "vllm", "cmd": "--model m"}, "VLLM_API_KEY"),
    ({"image": "x"}, None),  # custom: opt in
    ({"image": "x", "upstreamKeyEnv": "MY_KEY"}, "MY_KEY"),
    ({"backend": "llama.cpp", "upstreamKeyEnv": ""}, None),  # turned off
    # A key the user manages stays theirs: no generated key overrides or contradicts it.
    ({"backend": "llama.cpp", "env": {"LLAMA_API_KEY": "mine"}}, None),
    ({"backend": "llama.cpp", "cmd": "-m /m.gguf --api-key mine"}, None),
])
def test_which_variable_gets_the_per_start_key(entry, expected) -> None:
    config = load_config_text(yaml.safe_dump({"models": {"m": entry}}), source="t.yaml")
    model = config.models["m"]
    assert model.key_env == expected
    spec = ContainerSpec.from_model("m", model)
    fresh = spec.with_new_key()
    assert spec.spec_hash == fresh.spec_hash  # a new key is never a new spec
    env = fresh.container_kwargs()["environment"]
    if expected:
        assert len(env[expected]) >= 32 and env[expected] != spec.with_new_key().upstream_key
        assert fresh.upstream_key not in repr(fresh)
    else:
        assert fresh.upstream_key is None
