"""``config import``: llama-swap configs, one per shape, converted into configs that load.

The fixtures under tests/data/llamaswap/ are this project's own small configs: docker run with
every flag, podman, bare and wrapped servers, vLLM, macros, and the shapes a person must take.
For docker run models, the resolved container spec is compared with the docker run line.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from llamaswap_docker.cli import app
from llamaswap_docker.config import Config, load_config, load_config_text
from llamaswap_docker.config.importer import (
    LLAMA_CPP_CACHE_VOLUME,
    ImportResult,
    ModelReport,
    import_config,
)
from llamaswap_docker.config.importer.words import tokenize
from llamaswap_docker.config.schema import split_command
from llamaswap_docker.runtime.spec import ContainerSpec
from tests.config_views import preload_ids

DATA = Path(__file__).resolve().parents[1] / "data" / "llamaswap"
FIXTURES = sorted(path.name for path in DATA.glob("*.yaml"))
#: Variables the fixtures read with ${env.X}.
ENV = {"MY_KEY": "sk-test"}


def convert(name: str, tmp_path: Path, **options: Any) -> ImportResult:
    (tmp_path / "llama.env").write_text("# from the env file\nFROM_FILE=1\n")
    return import_config((DATA / name).read_text(), source=name, base_dir=tmp_path,
                         environ={}, **options)


def output(result: ImportResult, tmp_path: Path) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(result.text)
    return load_config(path, environ=ENV)


def report(result: ImportResult, model_id: str) -> ModelReport:
    return next(model for model in result.models if model.model_id == model_id)


def spec(config: Config, model_id: str) -> ContainerSpec:
    return ContainerSpec.from_model(model_id, config.models[model_id], environ={})


# --------------------------------------------------------------------------- every output loads


@pytest.mark.parametrize("name", FIXTURES)
def test_every_import_output_passes_config_check(name: str, tmp_path: Path) -> None:
    result = convert(name, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(result.text)
    checked = CliRunner().invoke(app, ["config", "check", str(path)], env={"COLUMNS": "200", **ENV})
    assert checked.exit_code == 0, checked.output + result.text
    assert "OK" in checked.stdout
    converted = [m.model_id for m in result.models if m.status != "person"]
    assert sorted(output(result, tmp_path).models) == sorted(converted)


@pytest.mark.parametrize("name", FIXTURES)
def test_exit_code_is_2_exactly_when_a_model_needs_a_person(name: str, tmp_path: Path) -> None:
    result = convert(name, tmp_path)
    assert result.exit_code == (2 if any(m.status == "person" for m in result.models) else 0)


# --------------------------------------------------------------------------- docker run


def test_docker_run_flags_become_keys_and_the_spec_matches_the_line(tmp_path: Path) -> None:
    result = convert("docker_run.yaml", tmp_path)
    assert report(result, "llama-cuda").status == "noted"  # --network host is a note
    model = yaml.safe_load(result.text)["models"]["llama-cuda"]
    assert "proxy" not in model and "cmdStop" not in model
    assert model["docker"]["ulimits"] == {"memlock": -1, "nofile": {"soft": 1024, "hard": 2048}}
    assert model["docker"]["envFile"] == ["./llama.env"]
    assert model["volumes"][0] == "${models}:/models:ro"  # the macro stays
    got = spec(output(result, tmp_path), "llama-cuda")
    assert got.image == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert got.command == ("-m", "/models/qwen.gguf", "-c", "8192", "-ngl", "99")
    assert got.port == 8080
    assert got.volumes == ("/srv/models:/models:ro", "llama-cache:/root/.cache")
    env = dict(got.env)
    assert env["LLAMA_ARG_CTX_SIZE"] == "8192" and env["HF_HUB_OFFLINE"] == "1"
    assert env["FROM_FILE"] == "1"
    assert dict(got.device_requests[0])["Count"] == -1  # --gpus all
    assert got.runtime == "nvidia" and got.ipc_mode == "host"
    assert got.shm_size == 16 << 30
    assert got.ulimits == (("memlock", -1, -1), ("nofile", 1024, 2048))
    assert got.cap_add == ("SYS_PTRACE",) and got.security_opt == ("seccomp=unconfined",)
    assert got.group_add == ("video",) and got.user == "1000:1000"
    assert got.devices == ("/dev/fuse",)
    kwargs = got.container_kwargs()
    assert [dict(limit) for limit in kwargs["ulimits"]] == [
        {"Name": "memlock", "Soft": -1, "Hard": -1}, {"Name": "nofile", "Soft": 1024, "Hard": 2048}]


def test_docker_run_keeps_the_users_layout_and_comment_lines(tmp_path: Path) -> None:
    result = convert("docker_run.yaml", tmp_path)
    block = result.text.split("  llama-cuda:", 1)[1].split("\n  two-gpus:", 1)[0]
    assert "    cmd: |\n      -m /models/qwen.gguf\n      # context and layers" in block
    assert "      -c 8192 -ngl 99\n" in block
    assert block.index("backend" if "backend" in block else "image") < block.index("cmd:")
    assert block.index("cmd:") < block.index("ttl: 300")


def test_docker_run_gpu_forms_count_indices_and_uuids(tmp_path: Path) -> None:
    result = convert("docker_run.yaml", tmp_path)
    config = output(result, tmp_path)
    two = spec(config, "two-gpus")
    assert dict(two.device_requests[0])["Count"] == 2
    assert two.privileged and two.entrypoint == () and two.port == 8000
    assert two.command == ("vllm", "serve", "Qwen/Qwen3-8B")
    assert config.stop_timeout("two-gpus") == 30  # from cmdStop's -t 30
    assert dict(spec(config, "by-index").device_requests[0])["DeviceIDs"] == ("0", "2")
    uuid = spec(config, "by-uuid")
    uuid_id = "GPU-8f6d3b2a-1c4e-4b7a-9d2e-0a1b2c3d4e5f"
    assert dict(uuid.device_requests[0])["DeviceIDs"] == (uuid_id,)
    assert uuid.command == ()
    assert all(report(result, m).status == "converted" for m in ("two-gpus", "by-index", "by-uuid"))


def test_rocm_and_vulkan_devices_become_the_platform(tmp_path: Path) -> None:
    config = output(convert("docker_rocm.yaml", tmp_path), tmp_path)
    rocm = config.models["rocm"]
    assert rocm.platform == "rocm" and "devices" not in rocm.docker.model_fields_set
    assert spec(config, "rocm").devices == ("/dev/kfd", "/dev/dri")
    assert config.models["vulkan"].platform == "vulkan"


def test_podman_cdi_gpus_become_platform_cuda(tmp_path: Path) -> None:
    result = convert("podman_run.yaml", tmp_path)
    assert report(result, "podman-llama").status == "converted"
    model = output(result, tmp_path).models["podman-llama"]
    assert model.platform == "cuda" and model.gpus is None
    assert model.docker.security_opt == ["label=disable"]
    assert model.volumes == ["/srv/models:/models:Z"]


def test_an_unknown_docker_flag_needs_a_person_naming_it(tmp_path: Path) -> None:
    result = convert("docker_unknown_flag.yaml", tmp_path)
    tmpfs = report(result, "tmpfs")
    assert tmpfs.status == "person" and "--tmpfs" in tmpfs.reason and "--tmpfs" in tmpfs.action
    assert "  # tmpfs:\n  #   cmd: docker run --rm --tmpfs /scratch" in result.text
    config = output(result, tmp_path)
    assert config.groups["both"].members == ["fine"]  # the member left out goes too
    assert "# import: tmpfs left out" in result.text


# --------------------------------------------------------------------------- bare servers


def test_bare_llama_server_gets_the_preset_and_its_files_mounted(tmp_path: Path) -> None:
    result = convert("bare_llama_server.yaml", tmp_path)
    model = output(result, tmp_path).models["qwen-7b"]
    assert model.backend == "llama.cpp" and model.platform == "cuda" and model.gpus == ["1"]
    assert model.cmd == ["-m", "/srv/models/qwen/qwen2.5-7b-q4_k_m.gguf",
                         "--mmproj=/srv/models/qwen/mmproj.gguf",
                         "--chat-template-file", "/etc/llama/templates/chatml.jinja", "-ngl", "99"]
    assert model.volumes == ["/srv/models/qwen:/srv/models/qwen:ro",
                             "/etc/llama/templates:/etc/llama/templates:ro"]
    assert model.env["LLAMA_ARG_THREADS"] == "8"
    assert "LD_LIBRARY_PATH" not in model.env and "CUDA_VISIBLE_DEVICES" not in model.env
    assert model.aliases == ["gpt-4o-mini"] and model.ttl == 600
    assert any("LD_LIBRARY_PATH" in note for note in report(result, "qwen-7b").notes)
    assert "    # the server and its files\n" in result.text  # the comment stays


def test_hf_repos_download_into_a_named_cache_volume(tmp_path: Path) -> None:
    model = output(convert("bare_llama_server.yaml", tmp_path), tmp_path).models["from-hf"]
    assert model.volumes == [f"{LLAMA_CPP_CACHE_VOLUME}:/root/.cache"]
    assert model.cmd == ["-hf", "ggml-org/gemma-3-1b-it-GGUF", "--jinja"]


def test_platform_comes_from_the_command_else_the_option_else_cpu_with_a_note(
        tmp_path: Path) -> None:
    result = convert("bare_llama_server.yaml", tmp_path)
    config = output(result, tmp_path)
    assert config.models["vulkan-build"].platform == "vulkan"  # the build's folder name
    assert report(result, "vulkan-build").status == "converted"
    assert config.models["from-hf"].platform == "cpu"
    assert any(note.startswith("platform cpu") for note in report(result, "from-hf").notes)
    chosen = convert("bare_llama_server.yaml", tmp_path, platform="rocm")
    config = output(chosen, tmp_path)
    assert config.models["from-hf"].platform == "rocm"
    assert config.models["vulkan-build"].platform == "vulkan"  # the command still wins
    assert report(chosen, "from-hf").status == "converted"


def test_paths_inside_llama_swaps_image_and_relative_paths_are_noted(tmp_path: Path) -> None:
    result = convert("bare_llama_server.yaml", tmp_path)
    config = output(result, tmp_path)
    inside = config.models["in-llama-swap-image"]
    assert inside.volumes == ["/models:/models:ro"] and inside.cmd == ["-m", "/models/smollm2.gguf"]
    notes = report(result, "in-llama-swap-image").notes
    assert any("llama-swap's container image" in note for note in notes)
    relative = config.models["relative"]
    assert relative.cmd == ["-m", str(tmp_path / "models" / "tiny.gguf")]
    assert any("relative" in note for note in report(result, "relative").notes)


def test_vllm_serve_becomes_backend_vllm(tmp_path: Path) -> None:
    result = convert("vllm_serve.yaml", tmp_path)
    config = output(result, tmp_path)
    qwen = config.models["qwen-vl"]
    assert qwen.backend == "vllm" and qwen.platform == "cuda" and qwen.gpus == ["0", "1"]
    assert qwen.cmd == ["Qwen/Qwen2.5-VL-7B-Instruct", "--tensor-parallel-size", "2",
                        "--chat-template", "/srv/templates/qwen.jinja"]
    assert "/srv/templates:/srv/templates:ro" in qwen.volumes
    local = config.models["local-weights"]
    assert local.cmd == ["--model", "/srv/weights/llama-3-8b"]
    assert "/srv/weights/llama-3-8b:/srv/weights/llama-3-8b:ro" in local.volumes


def test_bash_c_and_env_wrappers_are_unwrapped(tmp_path: Path) -> None:
    result = convert("wrappers.yaml", tmp_path)
    config = output(result, tmp_path)
    wrapped = config.models["wrapped"]
    assert wrapped.cmd == ["-m", "/srv/models/x.gguf", "-ngl", "99"]
    assert wrapped.env["GGML_CUDA_FORCE_MMQ"] == "1" and wrapped.platform == "cuda"
    assert any("cd /srv" in note for note in report(result, "wrapped").notes)
    assert config.models["env-prefix"].env["LLAMA_ARG_N_PARALLEL"] == "2"
    venv = report(result, "activates-venv")
    assert venv.status == "person" and "'source'" in venv.reason


# --------------------------------------------------------------------------- left to a person


@pytest.mark.parametrize(("model_id", "why"), [
    ("windows", "Windows program"),
    ("compose", "docker compose service"),
    ("script", "runs a script ('/home/me/bin/start-model.sh')"),
    ("whisper", "whisper-server, which has no backend preset"),
    ("image-gen", "sd-server, which has no backend preset"),
    ("remote", "only sleeps: the model is served by something else at http://192.168.1.50:8080"),
    ("template", "template placeholders (<MODELS_DIR>)"),
])
def test_shapes_a_person_must_take_are_left_out_with_the_reason_where_they_were(
        model_id: str, why: str, tmp_path: Path) -> None:
    result = convert("needs_person.yaml", tmp_path)
    left = report(result, model_id)
    assert left.status == "person" and why in left.reason and left.action
    lines = result.text.splitlines()
    at = lines.index(f"  # {model_id}:")
    assert lines[at - 2].startswith("  # left out by import: needs a person: ")
    assert lines[at - 1].startswith("  # to do: ")


def test_groups_and_preloads_lose_the_models_left_out(tmp_path: Path) -> None:
    result = convert("needs_person.yaml", tmp_path)
    config = output(result, tmp_path)
    assert list(config.models) == ["kept"]
    assert list(config.groups) == ["pair"] and config.groups["pair"].members == ["kept"]
    assert preload_ids(config) == ["kept"]
    assert "  # gone:\n  #   members: [script, compose]" in result.text
    assert result.exit_code == 2


# --------------------------------------------------------------------------- macros, comments, keys


def test_a_macro_holding_the_server_is_rewritten_where_it_is_defined(tmp_path: Path) -> None:
    result = convert("macros.yaml", tmp_path)
    data = yaml.safe_load(result.text)
    assert data["macros"]["server"] == "-ngl 99\n"
    assert data["macros"]["strip"] == "temperature, top_p"  # used by a filter: untouched
    assert data["models"]["a"]["cmd"] == "${server} -m ${models}/a.gguf -c ${ctx}"
    assert data["models"]["a"]["volumes"] == ["${models}:${models}:ro"]
    assert "  # the server, its port and the GPU layers\n" in result.text
    config = output(result, tmp_path)
    assert config.models["a"].cmd == ["-ngl", "99", "-m", "/srv/models/a.gguf", "-c", "8192"]
    assert config.models["b"].cmd == ["-ngl", "99", "-m", "/srv/models/b.gguf"]
    assert config.models["a"].filters.stripped_params == ["temperature", "top_p"]


def test_a_macro_two_models_change_differently_is_inlined(tmp_path: Path) -> None:
    result = convert("macros_inline.yaml", tmp_path)
    data = yaml.safe_load(result.text)
    assert data["macros"]["args"] == "-ngl 99 --host 0.0.0.0"  # the container's args keep it
    assert data["models"]["server"]["cmd"] == "-ngl 99 -m /srv/models/s.gguf"
    assert data["models"]["in-docker"]["cmd"] == "${args} -m /models/d.gguf"
    docker = output(result, tmp_path).models["in-docker"]
    assert docker.platform == "cuda" and docker.docker.ipc == "host"


def test_comments_key_order_and_kept_keys_stay_as_written(tmp_path: Path) -> None:
    source = (DATA / "other_keys.yaml").read_text()
    result = convert("other_keys.yaml", tmp_path)
    data = yaml.safe_load(result.text)
    original = yaml.safe_load(source)
    assert [k for k in data if k != "readyTimeout"] == [k for k in original if k != "readyTimeout"]
    model, before = data["models"]["chat"], original["models"]["chat"]
    for key, value in before.items():
        if key not in ("cmd", "endpoint"):
            assert model[key] == value, key
    kept_lines = [line for line in source.splitlines()
                  if not line.lstrip().startswith(("cmd:", "readyTimeout", "endpoint"))]
    assert all(line in result.text.splitlines() for line in kept_lines)


def test_keys_llama_swap_never_had_are_commented_out_with_a_note(tmp_path: Path) -> None:
    result = convert("other_keys.yaml", tmp_path)
    assert "# readyTimeout: 300 # not a llama-swap key" in result.text
    assert "    # endpoint: http://nowhere # not a llama-swap key" in result.text
    assert any(note.startswith("readyTimeout") for note in result.notes)
    assert any(note.startswith("endpoint") for note in report(result, "chat").notes)


#: llama-swap keys the import keeps as written for the rest of this project to read.
PENDING_KEYS = {
    "top": ["startPort", "logToStdout", "logTimeFormat", "logRequests", "ui", "performance",
            "unloadTimeout", "host", "port", "peers", "profiles", "selectors", "routing"],
    "model": ["unloadTimeout", "timeouts", "capabilities", "filters"],
}


def test_llama_swap_keys_of_the_rest_of_the_project_are_kept_and_load(tmp_path: Path) -> None:
    result = convert("pending_keys.yaml", tmp_path)
    data = yaml.safe_load(result.text)
    original = yaml.safe_load((DATA / "pending_keys.yaml").read_text())
    for key in PENDING_KEYS["top"]:
        assert data[key] == original[key], key
    for key in PENDING_KEYS["model"]:
        assert data["models"]["chat"][key] == original["models"]["chat"][key], key
    config = output(result, tmp_path)  # loads: every key is this project's
    assert list(config.models) == ["chat"] and not result.notes


def test_an_alias_two_models_claim_leaves_the_later_one_to_a_person(tmp_path: Path) -> None:
    text = ("models:\n"
            "  a:\n    cmd: llama-server --port ${PORT} -hf org/a-GGUF\n    aliases: [fast]\n"
            "  b:\n    cmd: llama-server --port ${PORT} -hf org/b-GGUF\n    aliases: [fast]\n")
    result = import_config(text, base_dir=tmp_path, environ={})
    assert report(result, "a").status == "noted"
    b = report(result, "b")
    assert b.status == "person" and "alias 'fast'" in b.reason
    assert list(output(result, tmp_path).models) == ["a"]


def test_a_converted_model_the_loader_refuses_is_left_out_with_its_message(tmp_path: Path) -> None:
    text = ("models:\n  m:\n"
            "    cmd: docker run --rm --env-file /nonexistent/x.env -p ${PORT}:80 img\n")
    result = import_config(text, base_dir=tmp_path, environ={})
    m = report(result, "m")
    assert m.status == "person" and "cannot read env file /nonexistent/x.env" in m.reason
    assert result.exit_code == 2


def test_a_file_with_no_model_left_says_so(tmp_path: Path) -> None:
    result = import_config("models:\n  w:\n    cmd: C:\\s\\llama-server.exe\n", base_dir=tmp_path,
                           environ={})
    assert not result.broken and result.exit_code == 2
    assert any("no model converted" in note for note in result.notes)
    assert output(result, tmp_path).models == {}  # it loads: a model can be added by hand


# --------------------------------------------------------------------------- command splitting


@pytest.mark.parametrize("cmd", [
    "llama-server -m '/a b/c.gguf' --alias \"x y\" --chat-template-kwargs '{\"a\": 1}'",
    "llama-server \\\n  --port 1 \\\n  -m x # not a comment mid-line\n# a comment line\n-c 5",
    "a\\ b \"q\\\"uote\" 'single'\"double\"",
])
def test_commands_split_as_this_project_and_llama_swap_split_them(cmd: str) -> None:
    assert [value for _, _, value in tokenize(cmd)] == split_command(cmd)
    for start, end, value in tokenize(cmd):
        assert shlex.split(cmd[start:end]) == [value]


def test_the_rest_of_docker_runs_flags(tmp_path: Path) -> None:
    result = convert("docker_run_more.yaml", tmp_path)
    config = output(result, tmp_path)
    got = spec(config, "more")
    assert got.image == "ghcr.io/example/server:1.2" and got.port == 8080
    assert got.command == ("--listen", "0.0.0.0:8080", "--model", "/models/x.gguf")
    assert got.volumes == ("/srv/models:/models:ro", "hf:/root/.cache/huggingface")
    # -e HF_TOKEN passed llama-swap's own variable on; the docker CLI's DOCKER_HOST is not the
    # container's.
    assert dict(got.env) == {"HF_TOKEN": "hf_from_llama_swap", "OMP_NUM_THREADS": "4"}
    assert dict(got.labels) == {"team": "ml"} and dict(got.extra_hosts) == {"db": "10.0.0.5"}
    assert got.mem_limit == 32 << 30 and got.nano_cpus == 8 * 10**9
    assert config.stop_timeout("more") == 45
    notes = " | ".join(report(result, "more").notes)
    for dropped in ("--restart unless-stopped", "--pull always", "-p 9001:9000", "env (the docker",
                    "cmdStop 'docker kill other-container'"):
        assert dropped in notes
    host = config.models["host-network"]
    assert host.port == 9999 and host.cmd == ["--port", "9999"]  # it listened on proxy's port
    assert "--network host dropped" in report(result, "host-network").notes[0]


def test_the_documented_import_example_is_what_the_import_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "llama-swap.md").read_text()
    block = page.split("## `config import`", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    source = block.split("$ cat llama-swap.yaml\n", 1)[1].split("$ llamaswap-docker", 1)[0]
    report_lines = block.split("-o config.yaml\n", 1)[1].split("$ cat config.yaml", 1)[0]
    expected = block.split("# (the two header comment lines left out)\n", 1)[1]
    (tmp_path / "llama-swap.yaml").write_text(source)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["config", "import", "llama-swap.yaml", "-o", "config.yaml"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert result.stdout == report_lines
    written = (tmp_path / "config.yaml").read_text().split("\n", 2)[2]
    assert written == expected


# --------------------------------------------------------------------------- the keys it needed


def test_docker_ulimits_and_env_file_reach_the_container_spec(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.env").write_text("# comment\nA=from-file\nB=two words \nPASSED\n")
    monkeypatch.setenv("PASSED", "from-proxy")  # a bare KEY line copies the proxy's variable
    config = load_config_text("""\
models:
  m:
    image: img
    env: {A: from-env}
    docker:
      ulimits: {memlock: -1, nofile: {soft: 1024, hard: 2048}, nproc: "10:20", core: [0, 0]}
      envFile: a.env
""", base_dir=tmp_path)
    got = ContainerSpec.from_model("m", config.models["m"], environ={})
    assert got.ulimits == (("core", 0, 0), ("memlock", -1, -1), ("nofile", 1024, 2048),
                           ("nproc", 10, 20))
    env = dict(got.env)
    assert env["A"] == "from-env"  # `env` wins, as -e wins over --env-file
    assert env["B"] == "two words " and env["PASSED"] == "from-proxy"
    plain = load_config_text("models:\n  m:\n    image: img\n").models["m"]
    assert "ulimits" not in ContainerSpec.from_model("m", plain).container_kwargs()


def test_anchors_survive_the_key_that_defined_them_being_commented_out(tmp_path: Path) -> None:
    result = convert("anchors.yaml", tmp_path)
    assert "# x-defaults:\n#   ttl: 300" in result.text
    config = output(result, tmp_path)
    assert config.models["a"].ttl == 300 and config.models["b"].ttl == 300
    # a's env was the docker command's own (merged from the anchor): overridden with none.
    assert config.models["a"].env == {}
    assert config.models["b"].env["DOCKER_CONFIG"] == "/etc/docker-cli"
