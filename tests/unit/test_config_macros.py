"""Macro expansion: ${name}, ${env.NAME}, ${PORT}, ${MODEL_ID}, nesting and errors."""

from __future__ import annotations

import textwrap

import pytest

from llamaswap_docker.config import Config, ConfigIssue, load_config_text
from llamaswap_docker.errors import ConfigError


def load(text: str, environ: dict[str, str] | None = None, **kwargs: object) -> Config:
    return load_config_text(textwrap.dedent(text), source="m.yaml", environ=environ or {}, **kwargs)


def issues(text: str, environ: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load(text, environ)
    return caught.value.errors  # type: ignore[attr-defined]


def test_global_and_model_macros_expand_with_model_ones_winning() -> None:
    config = load(
        """\
        macros:
          image: ghcr.io/ggml-org/llama.cpp:server
          ctx: 4096
          flash: true
        models:
          a:
            image: ${image}
            cmd: -c ${ctx} --flash ${flash}
          b:
            image: ${image}
            cmd: -c ${ctx}
            macros: {ctx: 8192}
        """
    )
    assert config.models["a"].image == "ghcr.io/ggml-org/llama.cpp:server"
    assert config.models["a"].cmd == ["-c", "4096", "--flash", "true"]
    assert config.models["b"].cmd == ["-c", "8192"]


def test_builtin_port_and_model_id() -> None:
    model = load(
        """\
        models:
          qwen:
            image: img
            port: 9000
            cmd: [--port, "${PORT}", --alias, "${MODEL_ID}"]
            name: ${MODEL_ID} on ${PORT}
        """
    ).models["qwen"]
    assert model.cmd == ["--port", "9000", "--alias", "qwen"]
    assert model.name == "qwen on 9000"


def test_port_defaults_to_8080_for_the_port_macro() -> None:
    assert load("models:\n  m: {image: img, cmd: '--port ${PORT}'}\n").models["m"].cmd == ["--port", "8080"]


def test_macros_may_reference_macros_and_builtins() -> None:
    model = load(
        """\
        macros:
          server: --host 0.0.0.0 --port ${PORT} ${model_flag}
          model_flag: -m /models/${file}
          file: x.gguf
        models:
          m: {image: img, port: 8081, cmd: "${server} -c 1"}
        """
    ).models["m"]
    assert model.cmd == ["--host", "0.0.0.0", "--port", "8081", "-m", "/models/x.gguf", "-c", "1"]


def test_env_macros_read_the_environment() -> None:
    config = load(
        """\
        apiKeys: ["${env.API_KEY}"]
        models:
          m:
            image: img
            env: ["HF_TOKEN=${env.HF_TOKEN}"]
            volumes: ["${env.MODELS}:/models:ro"]
        """,
        environ={"API_KEY": "sk-1", "HF_TOKEN": "hf_x", "MODELS": "/srv/models"},
    )
    assert config.api_keys == ["sk-1"]
    assert config.models["m"].env == {"HF_TOKEN": "hf_x"}
    assert config.models["m"].volumes == ["/srv/models:/models:ro"]


def test_missing_env_variable_names_the_field() -> None:
    (issue,) = issues("models:\n  m:\n    image: img\n    env: {TOKEN: '${env.NOT_SET_X}'}\n")
    assert (issue.field, issue.line) == ("models.m.env.TOKEN", 4)
    assert "environment variable 'NOT_SET_X' is not set" in issue.message


def test_env_values_are_not_expanded_again() -> None:
    model = load("models:\n  m: {image: img, name: '${env.X}'}\n", environ={"X": "${nope}"}).models["m"]
    assert model.name == "${nope}"


def test_unknown_macro_names_field_and_macro() -> None:
    (issue,) = issues("macros: {ctx: 1}\nmodels:\n  m:\n    image: img\n    cmd: -c ${ctxx}\n")
    assert (issue.field, issue.line) == ("models.m.cmd", 5)
    assert issue.message == "unknown macro '${ctxx}' (did you mean '${ctx}'?)"


def test_every_bad_reference_in_a_string_is_reported() -> None:
    found = issues("models:\n  m: {image: img, cmd: '${a} ${env.NOPE_Y}'}\n")
    assert [i.message.split(" (")[0] for i in found] == [
        "unknown macro '${a}'",
        "environment variable 'NOPE_Y' is not set",
    ]


def test_macro_cycle_is_an_error() -> None:
    (issue,) = issues(
        """\
        macros:
          a: x ${b}
          b: y ${a}
        models:
          m: {image: img, description: "${a}"}
        """
    )
    assert issue.field == "models.m.description"
    assert issue.message == "macro cycle: ${a} -> ${b} -> ${a}"


def test_self_referencing_macro_is_a_cycle() -> None:
    (issue,) = issues("models:\n  m: {image: img, name: '${a}', macros: {a: '${a}!'}}\n")
    assert issue.message == "macro cycle: ${a} -> ${a}"


def test_reserved_and_invalid_macro_names_are_rejected() -> None:
    found = issues("macros:\n  PORT: 1\n  'bad.name': 2\nmodels:\n  m: {image: img}\n")
    assert [(i.field, i.line) for i in found] == [("macros.PORT", 2), ("macros.bad.name", 3)]
    assert "reserved" in found[0].message


def test_dollar_dollar_escapes_a_literal_reference() -> None:
    model = load("models:\n  m: {image: img, cmd: 'sh -c \"echo $${HOME}\"'}\n").models["m"]
    assert model.cmd == ["sh", "-c", "echo ${HOME}"]


def test_set_params_keep_the_macro_type() -> None:
    model = load(
        """\
        macros: {temp: 0.2, label: x}
        models:
          m:
            image: img
            filters:
              setParams: {temperature: "${temp}", tag: "run-${label}", port: "${PORT}"}
        """
    ).models["m"]
    assert model.filters.set_params == {"temperature": 0.2, "tag": "run-x", "port": 8080}


def test_docker_block_and_port_may_use_macros() -> None:
    config = load(
        "macros: {net: ai, p: 9001}\ndocker: {network: '${net}'}\n"
        "models:\n  m: {image: img, port: '${p}', cmd: '--port ${PORT}'}\n"
    )
    assert config.docker.network == "ai"
    assert config.models["m"].port == 9001 and config.models["m"].cmd == ["--port", "9001"]


def test_macro_overrides_replace_file_macros() -> None:
    config = load(
        "macros: {dir: /placeholder}\nmodels:\n  m: {image: img, volumes: ['${dir}:/m']}\n",
        macros={"dir": "/real"},
    )
    assert config.models["m"].volumes == ["/real:/m"]
