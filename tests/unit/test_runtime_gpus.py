"""Host GPU facts: the nvidia-smi parser on realistic output, and hosts without GPUs.

The fixtures follow ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,
driver_version --format=csv,noheader,nounits`` as NVIDIA documents it (``--help-query-gpu``):
one line per GPU, ", " between fields, "[N/A]" / "[Not Supported]" for what a GPU cannot
report. No GPU machine was lent to the session that wrote them, so they are written in that
documented shape rather than captured from a card.
"""

from __future__ import annotations

import subprocess
from typing import Any

from llamaswap_docker.runtime.gpus import Gpu, GpuReport, list_gpus, parse_nvidia_smi

EIGHT_H100 = """\
0, GPU-5a4e3b1c-2f6d-4e8a-9b0c-1d2e3f4a5b6c, NVIDIA H100 80GB HBM3, 81559, 0, 550.54.15
1, GPU-6b5f4c2d-3a7e-4f9b-8c1d-2e3f4a5b6c7d, NVIDIA H100 80GB HBM3, 81559, 78650, 550.54.15
2, GPU-7c6a5d3e-4b8f-4a0c-9d2e-3f4a5b6c7d8e, NVIDIA H100 80GB HBM3, 81559, 4, 550.54.15
3, GPU-8d7b6e4f-5c9a-4b1d-8e3f-4a5b6c7d8e9f, NVIDIA H100 80GB HBM3, 81559, 4, 550.54.15
4, GPU-9e8c7f5a-6d0b-4c2e-9f4a-5b6c7d8e9f0a, NVIDIA H100 80GB HBM3, 81559, 4, 550.54.15
5, GPU-0f9d8a6b-7e1c-4d3f-8a5b-6c7d8e9f0a1b, NVIDIA H100 80GB HBM3, 81559, 4, 550.54.15
6, GPU-1a0e9b7c-8f2d-4e4a-9b6c-7d8e9f0a1b2c, NVIDIA H100 80GB HBM3, 81559, 4, 550.54.15
7, GPU-2b1f0c8d-9a3e-4f5b-8c7d-8e9f0a1b2c3d, NVIDIA H100 80GB HBM3, 81559, 4, 550.54.15
"""

# A workstation: a consumer card, and a Grace Hopper superchip whose memory nvidia-smi reports
# as [N/A] (unified memory), with the blank trailing line nvidia-smi prints.
MIXED_WITH_NA = """\
0, GPU-3c2a1d9e-0b4f-4a6c-9d8e-9f0a1b2c3d4e, NVIDIA GeForce RTX 4090, 24564, 1234, 560.35.03
1, GPU-4d3b2e0f-1c5a-4b7d-8e9f-0a1b2c3d4e5f, NVIDIA GH200 480GB, [N/A], [N/A], 560.35.03

"""

DRIVER_NOT_LOADED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)


def test_parses_every_gpu_line() -> None:
    gpus, skipped = parse_nvidia_smi(EIGHT_H100)
    assert skipped == [] and [gpu.index for gpu in gpus] == list(range(8))
    first = gpus[0]
    assert first == Gpu(
        index=0,
        uuid="GPU-5a4e3b1c-2f6d-4e8a-9b0c-1d2e3f4a5b6c",
        name="NVIDIA H100 80GB HBM3",
        memory_total_mib=81559,
        memory_used_mib=0,
        driver_version="550.54.15",
    )
    assert gpus[1].memory_free_mib == 81559 - 78650


def test_not_available_fields_become_none() -> None:
    gpus, skipped = parse_nvidia_smi(MIXED_WITH_NA)
    assert skipped == []
    rtx, gh200 = gpus
    assert rtx.memory_total_mib == 24564 and rtx.memory_free_mib == 24564 - 1234
    assert (gh200.name, gh200.memory_total_mib, gh200.memory_used_mib) == ("NVIDIA GH200 480GB", None, None)
    assert gh200.memory_free_mib is None and gh200.driver_version == "560.35.03"
    assert parse_nvidia_smi("0, [N/A], [Not Supported], [N/A], [N/A], [N/A]\n")[0][0].uuid is None


def test_header_units_and_malformed_lines_are_tolerated() -> None:
    text = (
        "index, uuid, name, memory.total [MiB], memory.used [MiB], driver_version\n"
        "0, GPU-abc, Tesla T4, 15360 MiB, 0 MiB, 535.183.01\n"
        "garbage line\n"
    )
    gpus, skipped = parse_nvidia_smi(text)
    assert [(g.name, g.memory_total_mib) for g in gpus] == [("Tesla T4", 15360)]
    assert skipped == ["garbage line"]


def test_report_to_dict_is_json_ready() -> None:
    report = list_gpus(run=_ran(stdout=MIXED_WITH_NA))
    assert report.available and report.reason is None
    data = report.to_dict()
    assert data["available"] is True and data["source"] == "nvidia-smi"
    assert data["gpus"][1] == {
        "id": "1", "index": 1, "uuid": "GPU-4d3b2e0f-1c5a-4b7d-8e9f-0a1b2c3d4e5f", "name": "NVIDIA GH200 480GB",
        "memory_total_mib": None, "memory_used_mib": None, "driver_version": "560.35.03",
        "vendor": "nvidia", "memory_free_mib": None,
    }


def test_list_gpus_asks_nvidia_smi_the_documented_query() -> None:
    calls: list[Any] = []
    list_gpus(run=_ran(stdout=EIGHT_H100, calls=calls))
    [(command, kwargs)] = calls
    assert command == [
        "nvidia-smi",
        "--query-gpu=index,uuid,name,memory.total,memory.used,driver_version",
        "--format=csv,noheader,nounits",
    ]
    assert kwargs["timeout"] > 0 and kwargs["capture_output"] is True


def test_host_without_nvidia_smi_reports_none_and_why() -> None:
    report = list_gpus(nvidia_smi="/nonexistent/nvidia-smi")  # a real failed exec
    assert report == GpuReport(reason="/nonexistent/nvidia-smi not found: no NVIDIA driver on this host")
    assert report.to_dict()["available"] is False and report.to_dict()["gpus"] == []


def test_nvidia_smi_failing_is_reported_with_its_message() -> None:
    report = list_gpus(run=_ran(returncode=9, stdout=DRIVER_NOT_LOADED))
    assert not report.available
    assert report.reason == f"nvidia-smi exited with code 9: {DRIVER_NOT_LOADED.strip()}"
    # A real process that exits non-zero without output.
    assert list_gpus(nvidia_smi="false").reason == "false exited with code 1: no output"


def test_nvidia_smi_hanging_is_reported() -> None:
    def hang(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    assert list_gpus(run=hang, timeout=2).reason == "nvidia-smi did not answer within 2s"


def test_no_gpus_listed_is_not_an_error() -> None:
    report = list_gpus(run=_ran(stdout="\n"))
    assert report.gpus == () and report.reason == "nvidia-smi lists no GPUs"


def _ran(stdout: str = "", returncode: int = 0, calls: list[Any] | None = None) -> Any:
    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, returncode, stdout=stdout, stderr="")

    return run


# -- what placement reads: the probe's query, rocm-smi, declared GPUs ----------------------------

# nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used --format=csv,noheader,nounits,
# the probe container's query (the issue's, without driver_version), on two RTX 3090s.
PROBE_TWO_3090 = """\
0, GPU-1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b, NVIDIA GeForce RTX 3090, 24576, 18021
1, GPU-2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d, NVIDIA GeForce RTX 3090, 24576, 5
"""

# rocm-smi --showmeminfo vram --json, as ROCm documents it: one object per card, byte counts as
# strings (two MI210s, one with a model loaded); newer versions may add a "system" object.
ROCM_TWO_MI210 = """\
{"card0": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10993664"},
 "card1": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "21485322240",
           "Card Series": "AMD Instinct MI210", "Unique ID": "0x8a3b2c1d4e5f6a7b"},
 "system": {"Driver version": "6.8.5"}}
"""


def test_the_probe_query_without_driver_version_parses() -> None:
    from llamaswap_docker.runtime.gpus import PROBE_COMMANDS, _PROBE_FIELDS

    assert PROBE_COMMANDS["cuda"] == (
        "nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.used",
        "--format=csv,noheader,nounits")
    gpus, skipped = parse_nvidia_smi(PROBE_TWO_3090, _PROBE_FIELDS)
    assert skipped == [] and [(g.id, g.memory_total_mib, g.memory_used_mib) for g in gpus] == [
        ("0", 24576, 18021), ("1", 24576, 5)]
    assert gpus[0].driver_version is None and gpus[0].name == "NVIDIA GeForce RTX 3090"


def test_rocm_smi_json_parses_into_gpus() -> None:
    from llamaswap_docker.runtime.gpus import PROBE_COMMANDS, parse_rocm_smi

    assert PROBE_COMMANDS["rocm"] == ("rocm-smi", "--showmeminfo", "vram", "--json")
    gpus, skipped = parse_rocm_smi(ROCM_TWO_MI210)
    assert skipped == []
    assert [(g.id, g.memory_total_mib, g.memory_used_mib, g.vendor) for g in gpus] == [
        ("0", 65520, 10, "amd"), ("1", 65520, 20490, "amd")]
    assert gpus[1].name == "AMD Instinct MI210" and gpus[1].uuid == "0x8a3b2c1d4e5f6a7b"


def test_rocm_smi_output_that_is_not_json_is_kept_for_the_report() -> None:
    from llamaswap_docker.runtime.gpus import parse_rocm_smi

    assert parse_rocm_smi("ERROR: GPU[0] : Unable to get memory\n") == (
        [], ["ERROR: GPU[0] : Unable to get memory"])
    assert parse_rocm_smi('{"card0": {"GPU use (%)": "3"}}') == ([], ["card0"])


def test_declared_gpus_keep_their_ids_and_memory() -> None:
    from llamaswap_docker.config import load_config_text
    from llamaswap_docker.runtime.gpus import declared_gpus

    config = load_config_text("""
models: {m: {image: x}}
docker:
  gpus:
    - {id: 0, memory: 24GiB}
    - {id: GPU-8f6d2c1a, memory: 80g, name: H100}
""")
    report = declared_gpus(config.docker.gpus)
    assert report.source == "declared" and report.available
    assert [(g.id, g.memory_total_mib, g.memory_used_mib, g.name) for g in report.gpus] == [
        ("0", 24576, 0, None), ("GPU-8f6d2c1a", 81920, 0, "H100")]


def test_nvml_without_its_package_or_driver_reports_why() -> None:
    from llamaswap_docker.runtime.gpus import nvml_gpus

    report = nvml_gpus()  # this machine: no nvidia-ml-py, or no NVIDIA driver
    assert not report.available and report.source == "nvml"
    assert report.reason and ("not installed" in report.reason or "NVML" in report.reason)
