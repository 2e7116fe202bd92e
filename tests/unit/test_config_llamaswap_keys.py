"""llama-swap's vocabulary in this project's config: keys ignored with one warning each, the
"looks like a llama-swap config" line, `cmd` checks, suggestions, unloadTimeout,
healthCheckTimeout, timeouts, capabilities, empty hooks, and --config-dir merging."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from typer.testing import CliRunner

from llamaswap_docker.api.inference import capability_fields
from llamaswap_docker.cli import app
from llamaswap_docker.config import ConfigIssue, load_config_sources, load_config_text
from llamaswap_docker.config.compat import HINT_ERRORS_SHOWN
from llamaswap_docker.config.schema import Capabilities
from llamaswap_docker.errors import ConfigError
from tests.config_views import preload_ids


def load(text: str, source: str = "c.yaml"):
    return load_config_text(dedent(text), source=source, environ={})


def errors_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value


def issues_of(text: str) -> list[ConfigIssue]:
    return errors_of(text).errors  # type: ignore[attr-defined]


def notices(config) -> list[ConfigIssue]:
    return [warning for warning in config.warnings if warning.kind == "notice"]


# -------------------------------------------------------------------- keys ignored with a warning

TOP_KEYS = {
    "startPort: 10001": ("startPort", "container `port`"),
    "logToStdout: both": ("logToStdout", "llamaswap-docker logs MODEL"),
    "logTimeFormat: rfc3339": ("logTimeFormat", "one fixed time format"),
    "logRequests: true": ("logRequests", "GET /api/metrics/activity"),
    "ui: {activity: {session_id: [X-Session-ID]}}": ("ui", "no settings"),
    "performance: {disabled: false, every: 15s}": ("performance", "GET /api/performance"),
    "host: 0.0.0.0": ("host", "serve --listen HOST:PORT"),
    "port: 8080": ("port", "serve --listen HOST:PORT"),
    "listen: ':8080'": ("listen", "serve --listen HOST:PORT"),
    "maxRunningModels: 2": ("maxRunningModels", "`groups`"),
}


@pytest.mark.parametrize("line", list(TOP_KEYS))
def test_top_level_llama_swap_key_loads_with_one_warning_saying_what_replaces_it(line: str) -> None:
    field, replacement = TOP_KEYS[line]
    config = load(f"{line}\nmodels:\n  m: {{image: img}}\n")
    (warning,) = notices(config)
    assert (warning.file, warning.line, warning.field) == ("c.yaml", 1, field)
    assert warning.message.startswith("ignored: ") and replacement in warning.message
    assert str(warning).startswith(f"c.yaml:1: {field}: ignored: ")


MODEL_KEYS = {
    "proxy: http://127.0.0.1:${PORT}": ("proxy", "set `port`"),
    "cmdStop: docker stop ${MODEL_ID}": ("cmdStop", "SIGKILL after `unloadTimeout`"),
    "tags: [coding, fast]": ("tags", "`metadata`"),
}


@pytest.mark.parametrize("line", list(MODEL_KEYS))
def test_model_llama_swap_key_loads_with_one_warning(line: str) -> None:
    field, replacement = MODEL_KEYS[line]
    config = load(f"models:\n  m:\n    image: img\n    {line}\n")
    (warning,) = notices(config)
    assert (warning.line, warning.field) == (4, f"models.m.{field}")
    assert replacement in warning.message


@pytest.mark.parametrize("key", ["keepalive", "tlsHandshake", "idleConn", "expectContinue"])
def test_model_timeouts_transport_keys_load_with_one_warning(key: str) -> None:
    config = load(f"models:\n  m:\n    image: img\n    timeouts:\n      {key}: 30\n")
    (warning,) = notices(config)
    assert (warning.line, warning.field) == (5, f"models.m.timeouts.{key}")
    assert warning.message.startswith("ignored: ")


def test_every_ignored_key_is_said_once_and_nothing_else_is() -> None:
    config = load("""\
        startPort: 10001
        logRequests: true
        models:
          a:
            image: img
            proxy: http://localhost:9000
            cmdStop: docker stop a
            metadata: {proxy: kept, tags: kept}   # free-form: not the model's keys
          b:
            image: img
            tags: [x]
        """)
    assert [w.field for w in notices(config)] == [
        "startPort", "logRequests", "models.a.proxy", "models.a.cmdStop", "models.b.tags"]
    assert config.models["a"].metadata == {"proxy": "kept", "tags": "kept"}


def test_ignored_keys_are_absent_from_the_resolved_config() -> None:
    config = load("startPort: 1\nmodels:\n  m: {image: img, proxy: 'http://x', cmdStop: y}\n")
    dumped = config.model_dump(by_alias=True)
    assert "startPort" not in dumped and "proxy" not in dumped["models"]["m"]


# -------------------------------------------------------------------- a llama-swap file, as such

LLAMA_SWAP_FILE = """\
healthCheckTimeout: 60
models:
  llama-8B:
    cmd: llama-server --port ${PORT} -m /models/llama-8B.gguf
  qwen:
    cmd: /opt/llama.cpp/llama-server --port ${PORT} -m /models/qwen.gguf
  docker-llama:
    cmd: docker run --rm -p ${PORT}:8080 ghcr.io/ggml-org/llama.cpp:server -m /m.gguf
    cmdStop: docker stop docker-llama
  a: {cmd: server-a}
  b: {cmd: server-b}
  c: {cmd: server-c}
"""


def test_a_llama_swap_config_is_named_as_such_first_with_the_import_command() -> None:
    error = errors_of(LLAMA_SWAP_FILE)
    lines = error.message.splitlines()
    assert lines[0] == ("c.yaml looks like a llama-swap config: run "
                        "'llamaswap-docker config import c.yaml'")
    issues = error.errors  # type: ignore[attr-defined]
    assert len(issues) == 7  # six missing images and the docker run
    assert len(lines) == 1 + HINT_ERRORS_SHOWN + 1
    assert lines[1].startswith("  c.yaml:3: models.llama-8B.image: missing required field 'image'")
    assert lines[-1] == f"  … and {len(issues) - HINT_ERRORS_SHOWN} more errors"
    assert error.hint == lines[0]  # type: ignore[attr-defined]


def test_a_config_with_an_image_somewhere_gets_no_llama_swap_line() -> None:
    error = errors_of("models:\n  a: {image: img}\n  b: {cmd: llama-server}\n")
    assert error.message.startswith("invalid config c.yaml: 1 error")
    assert error.hint is None  # type: ignore[attr-defined]


def test_missing_image_names_the_backend_presets_and_what_cmd_and_volumes_become() -> None:
    (issue,) = issues_of("models:\n  m:\n    cmd: -m /models/x.gguf\n    image: img\n  n: {}\n")
    assert issue.field == "models.n.image"
    for words in ("`backend: llama.cpp`", "`backend: vllm`", "`platform: cpu, cuda",
                  "the image's arguments", "mounted", "`volumes`"):
        assert words in issue.message


def test_config_check_prints_the_llama_swap_line_then_a_few_errors(tmp_path: Path) -> None:
    path = tmp_path / "llama-swap.yaml"
    path.write_text(LLAMA_SWAP_FILE)
    result = CliRunner().invoke(app, ["config", "check", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (f"{path} looks like a llama-swap config: run "
                        f"'llamaswap-docker config import {path}'")
    assert len(lines) == 1 + HINT_ERRORS_SHOWN + 1 and lines[-1] == "… and 2 more errors"


# -------------------------------------------------------------------- cmd


@pytest.mark.parametrize("cmd", ["docker run --rm -p 8080:8080 img", "podman run img",
                                 "/usr/bin/docker run img", "docker compose up", "docker-compose up"])
def test_cmd_that_runs_a_container_cli_is_refused(cmd: str) -> None:
    (issue,) = issues_of(f"models:\n  m:\n    image: img\n    cmd: {cmd}\n")
    assert (issue.field, issue.line) == ("models.m.cmd", 4)
    assert "already is a container" in issue.message and "config import" in issue.message


@pytest.mark.parametrize(("model", "why"), [
    ("image: img\n    cmd: /home/me/llama.cpp/build/bin/llama-server -m /m.gguf", "a host path"),
    ("image: img\n    cmd: /opt/llama/llama-server --port 8080", "a host path"),
    ("image: img\n    cmd: 'C:\\llama\\llama-server.exe -m m.gguf'", "a Windows program"),
    ("backend: llama.cpp\n    cmd: /app/llama-server -m /models/m.gguf", "only its arguments"),
])
def test_cmd_starting_with_a_host_program_warns(model: str, why: str) -> None:
    config = load(f"models:\n  m:\n    {model}\n")
    (warning,) = notices(config)
    assert (warning.field, warning.line) == ("models.m.cmd", 4)
    assert why in warning.message and "inside" in warning.message


@pytest.mark.parametrize("model", [
    "image: img\n    cmd: python3 server.py",  # the image's own program, on its PATH
    "image: img\n    cmd: /app/server --port 8080",  # a path the image may well hold
    "image: img\n    cmd: /opt/llama/llama-server -m /opt/llama/m.gguf\n"
    "    volumes: ['/srv/llama:/opt/llama:ro']",  # mounted: the user put it there
    "backend: llama.cpp\n    cmd: -m /models/m.gguf",
])
def test_cmd_the_image_can_run_does_not_warn(model: str) -> None:
    assert notices(load(f"models:\n  m:\n    {model}\n")) == []


# -------------------------------------------------------------------- suggestions


@pytest.mark.parametrize(("key", "suggestion"), [
    ("unloadTimout", "unloadTimeout"),  # a typo of llama-swap's key, known here now
    ("healthCheckTimout", "healthCheckTimeout"),
    ("tll", "ttl"),
    ("checkEndPoint", "checkEndpoint"),
    ("setParamsById", None),  # under filters, see below; at the model level no such key
])
def test_model_key_typos_suggest_the_key_they_are_a_typo_of(key: str, suggestion: str | None) -> None:
    (issue,) = issues_of(f"models:\n  m:\n    image: img\n    {key}: 1\n")
    expected = f"unknown field {key!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else "")
    assert issue.message == expected


@pytest.mark.parametrize("key", ["readyTimeout", "timeout", "loadTimeout", "gpuLayers"])
def test_words_that_merely_share_a_part_get_no_suggestion(key: str) -> None:
    # Before: readyTimeout → "did you mean 'stallTimeout'?", which is another setting.
    (issue,) = issues_of(f"{key}: 3600\nmodels:\n  m: {{image: img}}\n")
    assert issue.message == f"unknown field {key!r}"


def test_filter_key_with_wrong_case_suggests_the_right_one() -> None:
    (issue,) = issues_of("models:\n  m:\n    image: img\n    filters: {setParamsById: {}}\n")
    assert issue.message == "unknown field 'setParamsById' (did you mean 'setParamsByID'?)"


def test_a_llama_swap_key_with_no_equivalent_says_so() -> None:
    (issue,) = issues_of("models:\n  m:\n    image: img\n    compat: {ignoreWebsockets: true}\n")
    assert issue.message == "unsupported field 'compat': llama-swap's 'compat' has no equivalent here"


def test_a_typo_of_an_ignored_key_suggests_it() -> None:
    (issue,) = issues_of("startport: 5800\nmodels:\n  m: {image: img}\n")
    assert issue.message == "unknown field 'startport' (did you mean 'startPort'?)"


# -------------------------------------------------------------------- unloadTimeout & co.


def test_unload_timeout_is_the_stop_grace_global_and_per_model() -> None:
    config = load("""\
        unloadTimeout: 25
        docker: {stopTimeout: 3}
        models:
          global: {image: img}
          own: {image: img, unloadTimeout: 45}
          zero: {image: img, unloadTimeout: 0}      # llama-swap: 0 is the global value
          stop: {image: img, stopTimeout: 7}
        """)
    assert [config.stop_timeout(m) for m in ("global", "own", "zero", "stop")] == [25, 45, 25, 7]


def test_without_unload_timeout_docker_stop_timeout_is_the_grace() -> None:
    config = load("unloadTimeout: 0\ndocker: {stopTimeout: 3}\nmodels:\n  m: {image: img}\n")
    assert config.unload_timeout is None and config.stop_timeout("m") == 3


def test_a_model_with_both_graces_different_is_an_error() -> None:
    (issue,) = issues_of("models:\n  m:\n    image: img\n    stopTimeout: 5\n    unloadTimeout: 9\n")
    assert (issue.field, issue.line) == ("models.m.unloadTimeout", 5)
    assert "same setting" in issue.message
    assert load("models:\n  m: {image: img, stopTimeout: 5, unloadTimeout: 5}\n").stop_timeout("m") == 5


def test_negative_unload_timeout_is_an_error() -> None:
    (issue,) = issues_of("unloadTimeout: -1\nmodels:\n  m: {image: img}\n")
    assert issue.field == "unloadTimeout"


def test_health_check_timeout_per_model_overrides_the_global_one() -> None:
    config = load("healthCheckTimeout: 90\nmodels:\n  a: {image: img}\n"
                  "  b: {image: img, healthCheckTimeout: 600}\n")
    assert (config.health_timeout("a"), config.health_timeout("b")) == (90, 600)
    (issue,) = issues_of("models:\n  m: {image: img, healthCheckTimeout: 0}\n")
    assert issue.field == "models.m.healthCheckTimeout"


@pytest.mark.parametrize("hooks", ["hooks:\n", "hooks:\n  on_startup:\n",
                                   "hooks:\n  on_startup:\n    preload:\n"])
def test_empty_hooks_are_accepted(hooks: str) -> None:
    assert preload_ids(load(f"{hooks}models:\n  m: {{image: img}}\n")) == []


def test_model_ids_with_spaces_and_slashes_load() -> None:
    config = load("models:\n  GPT-OSS 20B Vulkan: {image: img}\n  org/model: {image: img}\n"
                  "hooks: {on_startup: {preload: [GPT-OSS 20B Vulkan]}}\n")
    assert preload_ids(config) == ["GPT-OSS 20B Vulkan"]
    assert config.resolve("org/model") == "org/model"


# -------------------------------------------------------------------- timeouts & capabilities


def test_model_timeouts_take_llama_swaps_names() -> None:
    model = load("models:\n  m:\n    image: img\n    timeouts: {connect: 5, responseHeader: 60}\n"
                 ).models["m"]
    assert (model.timeouts.connect, model.timeouts.response_header) == (5, 60)
    (issue,) = issues_of("models:\n  m: {image: img, timeouts: {responseHeader: -1}}\n")
    assert issue.field == "models.m.timeouts.responseHeader"


def test_capabilities_take_llama_swaps_shape_and_modalities() -> None:
    caps = load("models:\n  m:\n    image: img\n    capabilities:\n"
                "      in: [text, image]\n      out: [text]\n      tools: true\n"
                "      context: 32000\n").models["m"].capabilities
    assert (caps.in_, caps.out, caps.tools, caps.reranker, caps.context) == (
        ["text", "image"], ["text"], True, False, 32000)
    (issue,) = issues_of("models:\n  m: {image: img, capabilities: {in: [video]}}\n")
    assert issue.field == "models.m.capabilities.in[0]"


def test_capabilities_render_as_llama_swap_renders_them() -> None:
    # Expected values from llama-swap's internal/server/api.go renderCapabilities.
    full = Capabilities.model_validate({"in": ["text", "audio", "image"], "out": ["text", "image"],
                                        "tools": True, "reranker": True, "context": 8192})
    assert capability_fields(full) == {
        "architecture": {"input_modalities": ["text", "audio", "image"],
                         "output_modalities": ["text", "image"],
                         "modality": "text+audio+image->text+image"},
        "capabilities": {"vision": True, "audio_transcriptions": True, "image_generation": True,
                         "image_to_image": True, "function_calling": True, "reranker": True},
        "supported_parameters": ["tools", "tool_choice"],
        "context_length": 8192,
    }
    speech = Capabilities.model_validate({"in": ["text"], "out": ["audio"]})
    assert capability_fields(speech) == {
        "architecture": {"input_modalities": ["text"], "output_modalities": ["audio"],
                         "modality": "text->audio"},
        "capabilities": {"audio_speech": True}}
    # Only inputs: no modality string; text alone raises no flag, so no capabilities map.
    assert capability_fields(Capabilities.model_validate({"in": ["text"]})) == {
        "architecture": {"input_modalities": ["text"]}}
    assert capability_fields(Capabilities.model_validate({"context": 4096})) == {
        "context_length": 4096}
    assert capability_fields(Capabilities()) == {}


# -------------------------------------------------------------------- --config-dir


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(dedent(text))
    return path


def test_config_dir_adds_models_from_each_file_in_name_order(tmp_path: Path) -> None:
    main = write(tmp_path, "config.yaml", "globalTTL: 60\napiKeys: [key-a]\nmodels:\n  m: {image: img}\n")
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "20-b.yaml", "apiKeys: [key-b]\nmodels:\n  b: {image: img}\n")
    write(conf, "10-a.yml", "macros: {ctx: 4096}\nmodels:\n  a:\n    image: img\n"
                            "    cmd: -c ${ctx}\n")
    write(conf, "notes.txt", "not: yaml config")
    write(conf, "30-empty.yaml", "# nothing yet\n")
    config = load_config_sources(main, conf, environ={})
    assert list(config.models) == ["m", "a", "b"]
    assert config.api_keys == ["key-a", "key-b"]  # lists concatenate
    assert config.models["a"].cmd == ["-c", "4096"] and config.global_ttl == 60


def test_config_dir_alone_is_enough(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "models:\n  a: {image: img}\n")
    assert list(load_config_sources(None, tmp_path, environ={}).models) == ["a"]


def test_a_model_defined_in_two_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "models:\n  m: {image: img}\n")
    second = write(tmp_path, "b.yaml", "healthCheckTimeout: 30\nmodels:\n  m: {image: other}\n")
    with pytest.raises(ConfigError) as caught:
        load_config_sources(None, tmp_path, environ={})
    (issue,) = caught.value.errors  # type: ignore[attr-defined]
    assert (issue.file, issue.line, issue.field) == (str(second), 3, "models.m")
    assert issue.message == f"model 'm' is defined twice: here and in {first}"


def test_a_setting_given_two_values_is_a_conflict_the_same_value_is_not(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "globalTTL: 100\nmodels:\n  a: {image: img}\n")
    write(tmp_path, "b.yaml", "globalTTL: 100\nmodels:\n  b: {image: img}\n")
    assert load_config_sources(None, tmp_path, environ={}).global_ttl == 100
    write(tmp_path, "c.yaml", "globalTTL: 200\n")
    with pytest.raises(ConfigError) as caught:
        load_config_sources(None, tmp_path, environ={})
    (issue,) = caught.value.errors  # type: ignore[attr-defined]
    assert (Path(issue.file).name, issue.line, issue.field) == ("c.yaml", 1, "globalTTL")
    assert "set to 200 here and to 100 in" in issue.message


def test_a_null_yields_and_a_mapping_against_a_list_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "hooks:\nmodels:\n  a: {image: img}\n")
    write(tmp_path, "b.yaml", "hooks: {on_startup: {preload: [a]}}\n")
    assert preload_ids(load_config_sources(None, tmp_path, environ={})) == ["a"]
    write(tmp_path, "c.yaml", "apiKeys: {a: b}\n")
    write(tmp_path, "0.yaml", "apiKeys: [k]\n")
    with pytest.raises(ConfigError, match="a mapping here, but .* has a list at apiKeys"):
        load_config_sources(None, tmp_path, environ={})


def test_errors_after_a_merge_name_the_file_and_line_they_were_written_on(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "models:\n  a: {image: img}\n")
    second = write(tmp_path, "b.yaml", "models:\n  b:\n    image: img\n    ttl: soon\n")
    with pytest.raises(ConfigError) as caught:
        load_config_sources(None, tmp_path, environ={})
    (issue,) = caught.value.errors  # type: ignore[attr-defined]
    assert (issue.file, issue.line, issue.field) == (str(second), 4, "models.b.ttl")


def test_warnings_after_a_merge_name_their_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "models:\n  a: {image: img}\n")
    second = write(tmp_path, "b.yaml", "startPort: 5800\n")
    (warning,) = notices(load_config_sources(None, tmp_path, environ={}))
    assert (warning.file, warning.line, warning.field) == (str(second), 1, "startPort")


def test_relative_volumes_resolve_against_the_file_that_defines_the_model(tmp_path: Path) -> None:
    main = write(tmp_path, "config.yaml", "models:\n  a: {image: img, volumes: ['./m:/models']}\n")
    conf = tmp_path / "sub"
    conf.mkdir()
    write(conf, "b.yaml", "models:\n  b: {image: img, volumes: ['./m:/models']}\n")
    config = load_config_sources(main, conf, environ={})
    assert config.models["a"].volumes == [f"{tmp_path}/m:/models"]
    assert config.models["b"].volumes == [f"{conf}/m:/models"]


@pytest.mark.parametrize("case", ["config in dir", "empty dir", "every file empty", "no dir"])
def test_config_dir_problems_are_one_clear_error(tmp_path: Path, case: str) -> None:
    main = write(tmp_path, "config.yaml", "models:\n  a: {image: img}\n")
    if case == "config in dir":
        args, match = (main, tmp_path), "is also in the config folder"
    elif case == "empty dir":
        (tmp_path / "empty").mkdir()
        args, match = (None, tmp_path / "empty"), "no \\*.yaml or \\*.yml files"
    elif case == "every file empty":
        (tmp_path / "blank").mkdir()
        write(tmp_path / "blank", "a.yaml", "# later\n")
        args, match = (None, tmp_path / "blank"), "the config is empty"
    else:
        args, match = (None, tmp_path / "missing"), "cannot list config folder"
    with pytest.raises(ConfigError, match=match):
        load_config_sources(*args, environ={})


def test_config_check_and_show_take_a_config_dir(tmp_path: Path) -> None:
    main = write(tmp_path, "config.yaml", "models:\n  a: {image: img}\n")
    conf = tmp_path / "conf.d"
    conf.mkdir()
    write(conf, "b.yaml", "models:\n  b: {image: img}\n")
    runner = CliRunner()
    checked = runner.invoke(app, ["config", "check", str(main), "--config-dir", str(conf)])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.strip() == f"{main} + {conf}/: OK (2 models, 0 groups)"
    shown = runner.invoke(app, ["config", "show", "--config-dir", str(conf)])
    assert shown.exit_code == 0 and "  b:\n" in shown.stdout and "  a:\n" not in shown.stdout


def test_serve_reads_a_config_dir_and_watches_its_files(tmp_path: Path, monkeypatch) -> None:
    from llamaswap_docker.config import load_settings
    from llamaswap_docker.server import _mtimes, load_serving_config

    write(tmp_path, "a.yaml", "models:\n  a: {image: img}\n")
    monkeypatch.setenv("LLAMASWAP_CONFIG_DIR", str(tmp_path))
    settings = load_settings()
    config, source = load_serving_config(settings)
    assert list(config.models) == ["a"] and source == f"{tmp_path}/"
    before = _mtimes(settings.config, settings.config_dir)
    write(tmp_path, "b.yaml", "models:\n  b: {image: img}\n")  # a file added: a reload is due
    assert _mtimes(settings.config, settings.config_dir) != before


def test_serve_on_a_llama_swap_config_says_so_first(tmp_path: Path) -> None:
    path = tmp_path / "llama-swap.yaml"
    path.write_text(LLAMA_SWAP_FILE)
    # The config is read before any engine is touched: this fails without one.
    result = CliRunner().invoke(app, ["serve", "-c", str(path), "-l", "127.0.0.1:1"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path} looks like a llama-swap config: run "
                                    f"'llamaswap-docker config import {path}'\n")
