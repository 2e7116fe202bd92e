"""Config loading: one ConfigError naming file, line and field for every problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from llamaswap_docker.config import (
    DEMO_CONFIG_PATH,
    ConfigIssue,
    load_config,
    load_config_text,
    load_demo_config,
)
from llamaswap_docker.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def failure(text: str, source: str = "config.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config_text(textwrap.dedent(text), source=source, environ={})
    return caught.value


def test_type_error_reports_line_and_dotted_path() -> None:
    error = failure(
        """\
        globalTTL: 60
        models:
          llama-8b:
            image: ghcr.io/ggml-org/llama.cpp:server
            ttl: soon
        """
    )
    assert str(error) == (
        "invalid config config.yaml: 1 error\n"
        "  config.yaml:5: models.llama-8b.ttl: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
    assert error.errors == [  # type: ignore[attr-defined]
        ConfigIssue(
            file="config.yaml",
            line=5,
            field="models.llama-8b.ttl",
            message="Input should be a valid integer, unable to parse string as an integer",
        )
    ]


def test_unknown_key_reports_line_and_suggestion() -> None:
    error = failure("models:\n  m:\n    image: img\n    tll: 5\n")
    assert "config.yaml:4: models.m.tll: unknown field 'tll' (did you mean 'ttl'?)" in str(error)


def test_unknown_key_suggestion_ignores_case() -> None:
    error = failure("healthchecktimeout: 5\nmodels:\n  m: {image: img}\n")
    assert "unknown field 'healthchecktimeout' (did you mean 'healthCheckTimeout'?)" in str(error)


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    (issue,) = failure("models:\n  m: {image: img, zzzz: 1}\n").errors  # type: ignore[attr-defined]
    assert issue.message == "unknown field 'zzzz'"


def test_unknown_key_in_nested_block_suggests_from_that_block() -> None:
    (issue,) = failure("models:\n  m:\n    image: img\n    docker: {shmsize: 1g}\n").errors  # type: ignore[attr-defined]
    assert (issue.field, issue.line) == ("models.m.docker.shmsize", 4)
    assert issue.message == "unknown field 'shmsize' (did you mean 'shmSize'?)"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("proxy: http://127.0.0.1:9000", "set `port` to the port the server listens on"),
        ("cmdStop: docker stop x", "stopped through the Docker API"),
    ],
)
def test_llama_swap_only_keys_load_with_a_warning(key: str, hint: str) -> None:
    config = load_config_text(f"models:\n  m:\n    image: img\n    {key}\n", source="c.yaml")
    (warning,) = config.warnings
    assert (warning.line, warning.kind) == (4, "notice")
    assert warning.message.startswith("ignored: ") and hint in warning.message


def test_missing_required_field_points_at_its_parent() -> None:
    (issue,) = failure("models:\n  m:\n    port: 80\n").errors  # type: ignore[attr-defined]
    assert (issue.field, issue.line) == ("models.m.image", 2)
    assert issue.message.startswith("missing required field 'image': ")


def test_all_errors_are_reported_in_line_order() -> None:
    error = failure(
        """\
        logLevel: loud
        models:
          a:
            image: img
            port: zero
          b:
            image: img
            ttl: -5
        groups:
          g: {members: [a], swapp: true}
        """
    )
    lines = str(error).splitlines()
    assert lines[0] == "invalid config config.yaml: 4 errors"
    assert [issue.line for issue in error.errors] == [1, 5, 8, 10]  # type: ignore[attr-defined]
    assert lines[1].startswith("  config.yaml:1: logLevel: Input should be 'debug', 'info', 'warn' or 'error'")


def test_union_field_errors_are_merged_into_one_line() -> None:
    (issue,) = failure("models:\n  m: {image: img, gpus: {a: 1}}\n").errors  # type: ignore[attr-defined]
    assert issue.field == "models.m.gpus"


def test_yaml_syntax_error_reports_its_line() -> None:
    error = failure("models:\n  m:\n    image: img\n   bad: [1, 2\n")
    (issue,) = error.errors  # type: ignore[attr-defined]
    assert issue.line is not None and issue.line >= 4
    assert issue.message.startswith("YAML syntax error:")
    assert str(error).startswith("invalid config config.yaml: 1 error\n  config.yaml:")


def test_yaml_syntax_error_on_a_specific_line() -> None:
    (issue,) = failure("healthCheckTimeout: 5\nmodels: : x\n").errors  # type: ignore[attr-defined]
    assert issue.line == 2


def test_duplicate_keys_are_errors() -> None:
    (issue,) = failure("models:\n  m: {image: img}\n  m: {image: other}\n").errors  # type: ignore[attr-defined]
    assert (issue.field, issue.line, issue.message) == ("models.m", 3, "duplicate key 'm'")


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = "models:\n  a: &base\n    image: img\n    port: 9000\n  b:\n    <<: *base\n    port: 9001\n"
    config = load_config_text(text, environ={})
    assert (config.models["a"].port, config.models["b"].port) == (9000, 9001)
    assert config.models["b"].image == "img"


def test_empty_config_is_an_error() -> None:
    error = failure("# only a comment\n")
    assert str(error) == "invalid config config.yaml: 1 error\n  config.yaml: the config is empty"


def test_non_mapping_config_is_an_error() -> None:
    assert "must be a mapping" in str(failure("- a\n- b\n"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"^config file not found: {missing}$"):
        load_config(missing)


def test_load_config_names_the_file_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  m:\n    image: img\n    port: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"  {path}:4: models.m.port: " in str(caught.value)


def test_relative_volumes_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  m:\n    image: img\n    volumes: [./models:/models]\n")
    assert load_config(path).models["m"].volumes == [f"{tmp_path}/models:/models"]


def test_demo_config_loads_with_the_models_dir(tmp_path: Path) -> None:
    config = load_demo_config(tmp_path)
    assert DEMO_CONFIG_PATH.is_file()
    assert list(config.models) == ["tiny-llama", "fake-vllm"]
    assert (config.health_check_timeout, config.global_ttl) == (60, 300)
    tiny, fake = config.models["tiny-llama"], config.models["fake-vllm"]
    assert tiny.image == "llamaswap/llama-server:local" and tiny.port == 8080
    assert tiny.cmd == ["--host", "0.0.0.0", "--port", "8080", "-m", "/models/tiny.gguf", "-c", "512"]
    (mount,) = tiny.volume_mounts
    assert (mount.source, mount.target, mount.read_only) == (str(tmp_path.resolve()), "/models", True)
    assert fake.image == "llamaswap/fake-upstream:local" and fake.port == 8000
    assert fake.cmd[:2] == ["--mode", "vllm"] and fake.health_path == "/health"
    name, group = config.group_of("tiny-llama")
    assert config.group_of("fake-vllm")[0] == name
    assert group.swap and group.exclusive and group.members == ["tiny-llama", "fake-vllm"]


def test_example_config_loads() -> None:
    config = load_config(REPO / "config.example.yaml")
    assert len(config.models) >= 2
    llama = config.models["qwen2.5-7b"]
    assert llama.cmd[:4] == ["--host", "0.0.0.0", "--port", "8080"]
    assert llama.volume_mounts[0].read_only
    assert config.resolve("gpt-4o-mini") == "qwen2.5-7b"
    assert config.group_of("nomic-embed")[1].persistent


def test_llama_swap_only_keys_get_a_warning_and_metadata_is_kept() -> None:
    text = "startPort: 10001\nmodels:\n  m:\n    image: x\n    metadata: {family: qwen, size: 7}\n"
    config = load_config_text(text, source="c.yaml")
    (warning,) = config.warnings
    assert str(warning).startswith("c.yaml:1: startPort: ignored: no ports are handed out")
    assert config.models["m"].metadata == {"family": "qwen", "size": 7}


@pytest.mark.parametrize("network", ["bridge", "host", "none"])
def test_engine_builtin_networks_are_rejected_for_model_containers(network: str) -> None:
    text = f"docker:\n  network: {network}\nmodels:\n  m:\n    image: x\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, source="c.yaml")
    assert "c.yaml:2: docker.network" in caught.value.message
    assert "user-defined bridge" in caught.value.message
