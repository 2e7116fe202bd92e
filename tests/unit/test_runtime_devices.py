"""Platform → device options, and how ContainerSpec merges them with the model's own settings.

These check argument mapping only; tests/integration/test_platforms.py checks what the engine
records for the same specs.
"""

from __future__ import annotations

import grp
import textwrap

import pytest
from docker.types import DeviceRequest

from llamaswap_docker.config import ModelConfig, load_config_text
from llamaswap_docker.runtime.devices import cdi_device_names, platform_options
from llamaswap_docker.runtime.spec import ContainerSpec


def host_group(name: str) -> str:
    try:
        return str(grp.getgrnam(name).gr_gid)
    except KeyError:
        return name


DRI_GROUPS = (host_group("video"), host_group("render"))


def model(body: str) -> ModelConfig:
    text = "models:\n  m:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    return load_config_text(text, source="test.yaml", environ={}).models["m"]


def spec(body: str, environ: dict[str, str] | None = None) -> ContainerSpec:
    return ContainerSpec.from_model("m", model(body), environ=environ or {})


def request(count: int = -1, ids: tuple[str, ...] = (), caps: tuple[str, ...] = ("gpu",)) -> tuple:
    return (("Capabilities", (caps,)), ("Count", count), ("DeviceIDs", ids), ("Driver", "nvidia"))


# ----------------------------------------------------------------------------- platform options


def test_cpu_adds_nothing() -> None:
    options = platform_options("cpu")
    assert (options.device_requests, options.devices, options.group_add, options.runtime, options.env) == (
        (), (), (), None, ())


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(None, request()), ("all", request()), (2, request(count=2)), (["0", "GPU-abc"], request(0, ("0", "GPU-abc")))],
)
def test_cuda_is_an_nvidia_device_request_in_pci_bus_order(gpus: object, expected: tuple) -> None:
    options = platform_options("cuda", gpus)  # type: ignore[arg-type]
    assert options.device_requests == (expected,)
    assert options.env == (("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),)
    assert options.devices == () and options.runtime is None


@pytest.mark.parametrize(
    ("gpus", "visible"), [(None, None), ("all", None), (2, "0,1"), (["1", "GPU-4b2c1a9f"], "1,GPU-4b2c1a9f")]
)
def test_rocm_passes_kfd_and_dri_with_groups_and_selects_with_rocr_visible_devices(
    gpus: object, visible: str | None
) -> None:
    options = platform_options("rocm", gpus)  # type: ignore[arg-type]
    assert options.devices == ("/dev/kfd", "/dev/dri")
    assert options.group_add == DRI_GROUPS
    assert dict(options.env) == ({"ROCR_VISIBLE_DEVICES": visible} if visible else {})
    assert options.device_requests == ()


def test_vulkan_uses_dri_or_the_nvidia_graphics_capability() -> None:
    mesa = platform_options("vulkan", ["1"])
    assert mesa.devices == ("/dev/dri",) and mesa.group_add == DRI_GROUPS
    assert dict(mesa.env) == {"GGML_VK_VISIBLE_DEVICES": "1"}
    nvidia = platform_options("vulkan", ["0"], vulkan_driver="nvidia")
    assert nvidia.devices == () and nvidia.group_add == ()
    assert nvidia.device_requests == (request(0, ("0",), ("gpu", "compute", "utility", "graphics")),)


def test_intel_selects_level_zero_devices() -> None:
    options = platform_options("intel", ["0", "2"])
    assert options.devices == ("/dev/dri",) and options.group_add == DRI_GROUPS
    assert dict(options.env) == {"ONEAPI_DEVICE_SELECTOR": "level_zero:0;level_zero:2"}
    assert platform_options("intel").env == ()


def test_musa_uses_the_mthreads_runtime_and_its_visible_devices_variable() -> None:
    assert platform_options("musa").runtime == "mthreads"
    assert dict(platform_options("musa").env) == {"MTHREADS_VISIBLE_DEVICES": "all"}
    assert dict(platform_options("musa", 2).env) == {"MTHREADS_VISIBLE_DEVICES": "0,1"}


def test_an_unknown_platform_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown platform 'metal'"):
        platform_options("metal")


@pytest.mark.parametrize(
    ("req", "names"),
    [
        (dict(request()), ["nvidia.com/gpu=all"]),
        (dict(request(count=2)), ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]),
        (dict(request(0, ("1", "GPU-abc"))), ["nvidia.com/gpu=1", "nvidia.com/gpu=GPU-abc"]),
        ({"Driver": "other", "Capabilities": (("tpu",),)}, None),
    ],
)
def test_cdi_names_for_device_requests(req: dict, names: list[str] | None) -> None:
    assert cdi_device_names(req) == names


# ----------------------------------------------------------------------------- the spec


def test_spec_takes_the_platforms_options_under_the_models_own() -> None:
    result = spec("image: img\nplatform: rocm\ngpus: [1]\nenv: {ROCR_VISIBLE_DEVICES: '0'}")
    assert result.devices == ("/dev/kfd", "/dev/dri") and result.group_add == DRI_GROUPS
    assert dict(result.env) == {"ROCR_VISIBLE_DEVICES": "0"}, "the model's env wins"


def test_devices_groups_and_runtime_written_by_the_user_replace_the_platforms() -> None:
    result = spec("""\
        image: img
        platform: rocm
        docker: {devices: [/dev/kfd, /dev/dri/renderD128], groupAdd: ['44', '992'], runtime: runc}
    """)
    assert result.devices == ("/dev/kfd", "/dev/dri/renderD128")
    assert result.group_add == ("44", "992") and result.runtime == "runc"


def test_cuda_spec_becomes_docker_py_device_requests() -> None:
    kwargs = spec("backend: llama.cpp\nplatform: cuda\ngpus: [0, 1]").container_kwargs()
    [device_request] = kwargs["device_requests"]
    assert isinstance(device_request, DeviceRequest)
    assert dict(device_request) == {
        "Driver": "nvidia", "Count": 0, "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]], "Options": {}}
    assert kwargs["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "devices" not in kwargs


def test_cdi_mode_names_gpus_as_devices_instead_of_device_requests() -> None:
    result = spec("image: img\nplatform: cuda\ndocker: {devices: [/dev/fuse]}")
    kwargs = result.container_kwargs(cdi=True)
    assert "device_requests" not in kwargs
    assert kwargs["devices"] == ["/dev/fuse", "nvidia.com/gpu=all"]
    assert result.container_kwargs(cdi=True)["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert spec("image: img\nplatform: rocm").container_kwargs(cdi=True)["devices"] == ["/dev/kfd", "/dev/dri"]


def test_hf_token_is_passed_from_the_environment_but_kept_out_of_hash_and_repr() -> None:
    body = "backend: vllm\nplatform: cuda"
    with_token = spec(body, environ={"HF_TOKEN": "hf_secret123", "OTHER": "x"})
    without = spec(body, environ={})
    assert with_token.container_kwargs()["environment"]["HF_TOKEN"] == "hf_secret123"
    assert "HF_TOKEN" not in without.container_kwargs()["environment"]
    assert "OTHER" not in with_token.container_kwargs()["environment"]
    assert with_token.spec_hash == without.spec_hash
    assert with_token == without
    assert "hf_secret123" not in repr(with_token)


def test_hf_token_written_in_the_config_is_not_replaced() -> None:
    result = spec("backend: vllm\nenv: {HF_TOKEN: from-config}", environ={"HF_TOKEN": "from-env"})
    assert result.container_kwargs()["environment"]["HF_TOKEN"] == "from-config"
    assert result.passed_env == ()


def test_vllm_options_reach_the_create_kwargs() -> None:
    rocm = spec("backend: vllm\nplatform: rocm").container_kwargs()
    assert rocm["ipc_mode"] == "host" and rocm["cap_add"] == ["SYS_PTRACE"]
    assert rocm["security_opt"] == ["seccomp=unconfined"]
    assert rocm["devices"] == ["/dev/kfd", "/dev/dri"] and rocm["group_add"] == list(DRI_GROUPS)
    intel = spec("backend: vllm\nplatform: intel").container_kwargs()
    assert intel["privileged"] is True and "/dev/dri/by-path:/dev/dri/by-path" in intel["volumes"]


def test_spec_hash_changes_with_the_platform_and_gpus() -> None:
    hashes = {
        spec("image: img").spec_hash,
        spec("image: img\nplatform: cuda").spec_hash,
        spec("image: img\nplatform: cuda\ngpus: [0]").spec_hash,
        spec("image: img\nplatform: rocm").spec_hash,
    }
    assert len(hashes) == 4
