"""A placement reaches the container: exactly its GPUs on each platform, ``LLAMASWAP_DEVICES``
everywhere, labels for adoption, and nothing of it in the spec hash."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llamaswap_docker.config import load_config_text
from llamaswap_docker.runtime import ContainerSpec
from llamaswap_docker.runtime.labels import DEVICES, VRAM, ownership_labels


def spec(**entry: Any) -> ContainerSpec:
    config = load_config_text(yaml.safe_dump({"models": {"m": {"image": "x", **entry}}}))
    return ContainerSpec.from_model("m", config.models["m"], environ={})


def requests(kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["Driver"], r["Count"], r["DeviceIDs"], r["Capabilities"])
            for r in kwargs.get("device_requests", [])]


def test_cuda_gets_a_device_request_for_exactly_its_gpus() -> None:
    kwargs = spec(platform="cuda").with_gpus(("1",), 8 << 30).container_kwargs()
    assert requests(kwargs) == [("nvidia", 0, ["1"], [["gpu"]])]
    env = kwargs["environment"]
    # The request shows the container GPU 1 alone, as its GPU 0.
    assert (env["CUDA_VISIBLE_DEVICES"], env["LLAMASWAP_DEVICES"]) == ("0", "1")
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_a_count_becomes_the_gpus_placement_chose() -> None:
    kwargs = spec(platform="cuda", gpus=2).with_gpus(("0", "2")).container_kwargs()
    assert requests(kwargs) == [("nvidia", 0, ["0", "2"], [["gpu"]])]
    assert kwargs["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.parametrize(("entry", "variable", "value"), [
    ({"platform": "rocm"}, "ROCR_VISIBLE_DEVICES", "1"),
    ({"platform": "vulkan"}, "GGML_VK_VISIBLE_DEVICES", "1"),
    ({"platform": "intel"}, "ONEAPI_DEVICE_SELECTOR", "level_zero:1"),
    ({"platform": "musa"}, "MTHREADS_VISIBLE_DEVICES", "1"),
])
def test_other_platforms_select_the_gpus_with_their_variable(entry: dict[str, Any],
                                                             variable: str, value: str) -> None:
    kwargs = spec(**entry).with_gpus(("1",)).container_kwargs()
    assert kwargs["environment"][variable] == value
    assert kwargs["environment"]["LLAMASWAP_DEVICES"] == "1"


def test_vulkan_through_nvidia_gets_the_graphics_request_for_its_gpus() -> None:
    kwargs = spec(platform="vulkan", vulkanDriver="nvidia").with_gpus(("1",)).container_kwargs()
    assert requests(kwargs) == [("nvidia", 0, ["1"], [["gpu", "compute", "utility", "graphics"]])]


def test_a_cpu_model_placed_on_gpus_only_gets_their_ids() -> None:
    kwargs = spec().with_gpus(("0", "1")).container_kwargs()
    assert "device_requests" not in kwargs
    assert {k: v for k, v in kwargs["environment"].items()} == {"LLAMASWAP_DEVICES": "0,1"}


def test_podman_gets_cdi_names_of_the_placed_gpus() -> None:
    kwargs = spec(platform="cuda").with_gpus(("1",)).container_kwargs(cdi=True)
    assert kwargs["devices"] == ["nvidia.com/gpu=1"] and "device_requests" not in kwargs


def test_unplaced_specs_are_unchanged() -> None:
    kwargs = spec(platform="cuda").container_kwargs()
    assert requests(kwargs) == [("nvidia", -1, [], [["gpu"]])]
    assert "LLAMASWAP_DEVICES" not in kwargs["environment"]


def test_the_placement_is_not_in_the_spec_hash() -> None:
    plain = spec(platform="cuda", gpus=1)
    assert plain.with_gpus(("0",), 1).spec_hash == plain.with_gpus(("1",), 2).spec_hash \
        == plain.spec_hash


def test_labels_record_the_gpus_and_the_memory_held() -> None:
    labels = ownership_labels("i", "m", "h", 8080, None, ("0", "1"), 12 << 30)
    assert (labels[DEVICES], labels[VRAM]) == ("0,1", str(12 << 30))
    assert DEVICES not in ownership_labels("i", "m", "h", 8080)
