"""Config schema: defaults, value forms (cmd, env, volumes...), groups and lookups."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from llamaswap_docker.config import (
    DEFAULT_GROUP_ID,
    Config,
    ConfigIssue,
    GroupConfig,
    ModelConfig,
    VolumeMount,
    load_config_text,
    split_command,
)
from llamaswap_docker.errors import ConfigError
from tests.config_views import effective_groups, model_named, preload_ids


def load(text: str, **kwargs: object) -> Config:
    return load_config_text(textwrap.dedent(text), source="test.yaml", environ={}, **kwargs)


def errors_of(text: str, **kwargs: object) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load(text, **kwargs)
    return caught.value.errors  # type: ignore[attr-defined]


def one_model(body: str) -> str:
    """A config with one model ``m`` whose keys are ``body`` (indented 4)."""
    return "models:\n  m:\n    image: img\n" + textwrap.indent(textwrap.dedent(body), "    ")


# ----------------------------------------------------------------------------- defaults


def test_minimal_config_gets_llama_swap_defaults() -> None:
    config = load(one_model(""))
    assert config.health_check_timeout == 120
    assert config.global_ttl == 0
    assert config.log_level == "info"
    assert config.include_aliases_in_list is False
    assert config.send_loading_state_default is False
    assert config.api_keys == [] and config.macros == {} and config.groups == {}
    assert config.hooks.on_startup.preload == []
    docker = config.docker
    assert (docker.host, docker.network, docker.instance) == (None, "llamaswap", "default")
    assert docker.stop_timeout == 10 and docker.pull_policy == "missing"
    assert docker.routing == "auto" and docker.on_shutdown == "stop"


def test_model_defaults() -> None:
    model = load(one_model("")).models["m"]
    assert model.cmd == [] and model.port == 8080 and model.env == {} and model.volumes == []
    assert model.ttl == -1 and model.check_endpoint == "/health" and model.health_path == "/health"
    assert model.aliases == [] and model.name == "" and model.description == ""
    assert model.concurrency_limit == 0 and model.unlisted is False and model.use_model_name == ""
    assert model.send_loading_state is None and model.stop_timeout is None
    assert model.filters.stripped_params == [] and model.filters.set_params == {}
    assert model.docker.entrypoint is None and model.docker.privileged is False
    assert (model.backend, model.platform, model.gpus) == ("custom", "cpu", None)


@pytest.mark.parametrize("text", ["globalTTL: 5\n", "models: {}\n", "models:\n  # x: {}\n"])
def test_a_config_without_models_loads_and_says_it_serves_nothing(text: str) -> None:
    # As in llama-swap: a proxy of peers only, or an import that left every model to a person.
    config = load(text)
    assert config.models == {}
    [warning] = [w for w in config.warnings if w.field == "models"]
    assert warning.message == "no models: this proxy serves nothing until some are added"


def test_config_models_are_immutable() -> None:
    config = load(one_model(""))
    with pytest.raises(ValidationError):
        config.global_ttl = 5  # type: ignore[misc]


def test_python_construction_accepts_snake_case_names() -> None:
    config = Config(models={"m": ModelConfig(image="img", check_endpoint="none")}, global_ttl=30)
    assert config.models["m"].health_path is None
    assert config.effective_ttl("m") == 30


# ----------------------------------------------------------------------------- cmd


def test_cmd_list_is_kept_and_scalars_become_strings() -> None:
    model = load(one_model('cmd: ["--port", 8080, "--flash", true, "--temp", 0.5]')).models["m"]
    assert model.cmd == ["--port", "8080", "--flash", "true", "--temp", "0.5"]


def test_cmd_string_is_split_like_a_shell() -> None:
    model = load(one_model("cmd: --host 0.0.0.0 -m '/models/a b.gguf'")).models["m"]
    assert model.cmd == ["--host", "0.0.0.0", "-m", "/models/a b.gguf"]


def test_multiline_cmd_drops_comment_lines_and_joins_continuations() -> None:
    model = load(
        one_model(
            """\
            cmd: |
              --host 0.0.0.0 \\
                # a comment line, with a 'quote
              --port 8080 \\
              -m /models/x.gguf
                #   --ctx 99
              -c 512
            """
        )
    ).models["m"]
    assert model.cmd == ["--host", "0.0.0.0", "--port", "8080", "-m", "/models/x.gguf", "-c", "512"]


def test_split_command_reports_unbalanced_quotes() -> None:
    with pytest.raises(ValueError, match="cannot split command"):
        split_command("--name 'oops")


def test_unbalanced_quote_in_cmd_is_a_config_error() -> None:
    (issue,) = errors_of(one_model("cmd: --name 'oops"))
    assert issue.field == "models.m.cmd" and "No closing quotation" in issue.message


# ----------------------------------------------------------------------------- env


def test_env_list_form_is_parsed_into_a_mapping() -> None:
    model = load(one_model('env: ["A=1", "B=x=y", "EMPTY="]')).models["m"]
    assert model.env == {"A": "1", "B": "x=y", "EMPTY": ""}


def test_env_mapping_form_stringifies_scalars() -> None:
    model = load(one_model("env: {A: 1, B: true, C: 0.5, D: text, E: null}")).models["m"]
    assert model.env == {"A": "1", "B": "true", "C": "0.5", "D": "text", "E": ""}


def test_env_list_item_without_equals_is_an_error() -> None:
    (issue,) = errors_of(one_model('env: ["A=1", "JUSTKEY"]'))
    assert issue.field == "models.m.env" and issue.line == 4
    assert "'JUSTKEY'" in issue.message and "KEY=VALUE" in issue.message


# ----------------------------------------------------------------------------- volumes


def test_volumes_parse_into_mounts() -> None:
    model = load(
        one_model('volumes: ["/srv/models:/models:ro,z", "hf-cache:/root/.cache", "/a:/b:rw"]')
    ).models["m"]
    assert model.volume_mounts == [
        VolumeMount("/srv/models", "/models", read_only=True, options=("ro", "z")),
        VolumeMount("hf-cache", "/root/.cache"),
        VolumeMount("/a", "/b", read_only=False, options=("rw",)),
    ]
    assert [m.is_bind for m in model.volume_mounts] == [True, False, True]


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("/models", "must be 'host:container'"),
        (":/models", "empty"),
        ("/srv:models", "must be absolute"),
        ("/srv:/m:ro:extra", "must be 'host:container'"),
        ("/srv:/m:bogus", "unknown option"),
        ("/srv:/m:ro,rw", "exclude each other"),
        ("bad name:/m", "neither an absolute host path nor a volume name"),
    ],
)
def test_invalid_volumes_are_rejected(spec: str, complaint: str) -> None:
    (issue,) = errors_of(one_model(f'volumes: ["/ok:/ok", "{spec}"]'))
    assert issue.field == "models.m.volumes[1]"
    assert complaint in issue.message


def test_relative_volume_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    model = load(one_model('volumes: ["./models:/models:ro", "../x:/x"]'), base_dir=tmp_path).models["m"]
    assert model.volumes == [f"{tmp_path}/models:/models:ro", f"{tmp_path.parent}/x:/x"]


# ----------------------------------------------------------------------------- other model fields


def test_check_endpoint_none_disables_health_checks() -> None:
    assert load(one_model("checkEndpoint: none")).models["m"].health_path is None
    assert load(one_model("checkEndpoint: /v1/models")).models["m"].health_path == "/v1/models"


def test_check_endpoint_must_be_a_path() -> None:
    (issue,) = errors_of(one_model("checkEndpoint: health"))
    assert issue.field == "models.m.checkEndpoint" and "must start with '/'" in issue.message


def test_port_must_be_a_valid_tcp_port() -> None:
    (issue,) = errors_of(one_model("port: 70000"))
    assert issue.field == "models.m.port"


def test_ttl_below_minus_one_is_invalid() -> None:
    (issue,) = errors_of(one_model("ttl: -2"))
    assert issue.field == "models.m.ttl"


def test_strip_params_are_parsed_and_never_include_model() -> None:
    filters = load(
        one_model('filters: {stripParams: "top_p, temperature,,model, top_p", setParams: {model: x, seed: 1}}')
    ).models["m"].filters
    assert filters.stripped_params == ["temperature", "top_p"]
    assert filters.effective_set_params == {"seed": 1}


def test_legacy_strip_params_spelling_is_accepted() -> None:
    filters = load(one_model('filters: {strip_params: "top_k"}')).models["m"].filters
    assert filters.stripped_params == ["top_k"]


def test_container_options_parse_sizes_and_entrypoint() -> None:
    options = load(
        one_model(
            """\
            docker:
              shmSize: 16g
              memory: 512m
              cpus: 2.5
              entrypoint: python3 -m server
              groupAdd: [44, video]
              labels: {tier: 1}
              devices: ["/dev/dri", "/dev/kfd:/dev/kfd:rw", "nvidia.com/gpu=all"]
              extraHosts: {host.docker.internal: host-gateway}
            """
        )
    ).models["m"].docker
    assert options.shm_size == 16 * 1024**3 and options.memory == 512 * 1024**2
    assert options.cpus == 2.5
    assert options.entrypoint == ["python3", "-m", "server"]
    assert options.group_add == ["44", "video"] and options.labels == {"tier": "1"}


def test_reserved_container_label_prefix_is_rejected() -> None:
    (issue,) = errors_of(one_model("docker: {labels: {io.llamaswap.instance: x}}"))
    assert issue.field == "models.m.docker.labels" and "reserved prefix" in issue.message


def test_invalid_device_is_rejected() -> None:
    (issue,) = errors_of(one_model('docker: {devices: ["dev/dri"]}'))
    assert issue.field == "models.m.docker.devices[0]"


def test_backend_platform_gpus_keys_are_validated() -> None:
    model = load(one_model("backend: vllm\nplatform: cuda\ngpus: [0, 1]")).models["m"]
    assert (model.backend, model.platform, model.gpus) == ("vllm", "cuda", ["0", "1"])
    (issue,) = errors_of(one_model("platform: linux/amd64"))
    assert issue.field == "models.m.platform" and "'cuda'" in issue.message


def test_model_ids_may_contain_slashes_and_spaces_but_not_edge_whitespace() -> None:
    assert "org/name" in load("models:\n  org/name: {image: img}\n").models
    assert "GPT-OSS 20B" in load("models:\n  GPT-OSS 20B: {image: img}\n").models  # llama-swap's
    (issue,) = errors_of("models:\n  'a b ': {image: img}\n")
    assert issue.field == "models.a b " and issue.line == 2
    (issue,) = errors_of('models:\n  "a\\tb": {image: img}\n')
    assert "control characters" in issue.message


def test_invalid_docker_instance_is_rejected() -> None:
    (issue,) = errors_of(one_model("") + "docker: {instance: -bad}\n")
    assert issue.field == "docker.instance"


# ----------------------------------------------------------------------------- ttl & per-model defaults


def test_ttl_inherits_global_ttl_unless_set() -> None:
    config = load(
        """\
        globalTTL: 300
        models:
          inherit: {image: img}
          never: {image: img, ttl: 0}
          own: {image: img, ttl: 60}
        """
    )
    assert config.effective_ttl("inherit") == 300
    assert config.effective_ttl("never") == 0
    assert config.effective_ttl("own") == 60


def test_send_loading_state_and_stop_timeout_fall_back_to_globals() -> None:
    config = load(
        """\
        sendLoadingState: true
        docker: {stopTimeout: 7}
        models:
          a: {image: img}
          b: {image: img, sendLoadingState: false, stopTimeout: 0}
        """
    )
    assert config.send_loading_state("a") is True and config.send_loading_state("b") is False
    assert config.stop_timeout("a") == 7 and config.stop_timeout("b") == 0


# ----------------------------------------------------------------------------- aliases


def test_aliases_resolve_to_their_model() -> None:
    config = load("models:\n  m: {image: img, aliases: [gpt-4, fast]}\n")
    assert config.resolve("m") == "m" and config.resolve("gpt-4") == "m"
    assert config.resolve("nope") is None
    assert model_named(config, "fast") is config.models["m"]
    assert config.aliases == {"gpt-4": "m", "fast": "m"}


def test_alias_used_by_two_models_is_an_error() -> None:
    (issue,) = errors_of(
        """\
        models:
          a: {image: img, aliases: [shared]}
          b:
            image: img
            aliases: [own, shared]
        """
    )
    assert issue.field == "models.b.aliases[1]" and issue.line == 5
    assert "already used by model 'a'" in issue.message


def test_alias_equal_to_a_model_id_is_an_error() -> None:
    (issue,) = errors_of("models:\n  a: {image: img}\n  b: {image: img, aliases: [a]}\n")
    assert issue.field == "models.b.aliases[0]" and "also a model id" in issue.message


# ----------------------------------------------------------------------------- groups


GROUPED = """\
models:
  a: {image: img}
  b: {image: img}
  c: {image: img}
  d: {image: img}
groups:
  pair:
    swap: false
    members: [a, b]
  solo:
    persistent: true
    members: [c]
"""


def test_group_defaults_follow_llama_swap() -> None:
    group = GroupConfig(members=["x"])
    assert (group.swap, group.exclusive, group.persistent) == (True, True, False)


def test_group_of_returns_the_models_group() -> None:
    config = load(GROUPED)
    name, group = config.group_of("a")
    assert name == "pair" and group.swap is False and group.exclusive is True
    assert config.group_of("c")[1].persistent is True


def test_ungrouped_models_share_the_implicit_default_group() -> None:
    config = load(GROUPED)
    name, group = config.group_of("d")
    assert name == DEFAULT_GROUP_ID == "(default)"
    assert (group.swap, group.exclusive, group.persistent, group.members) == (True, True, False, ["d"])
    assert list(effective_groups(config)) == ["pair", "solo", "(default)"]


def test_without_groups_every_model_is_in_the_default_group() -> None:
    config = load("models:\n  a: {image: img, aliases: [x]}\n  b: {image: img}\n")
    assert config.group_of("x") == config.group_of("b")
    assert config.group_of("a")[1].members == ["a", "b"]
    with pytest.raises(KeyError):
        config.group_of("nope")


def test_group_member_must_be_a_model_id() -> None:
    issues = errors_of(
        """\
        models:
          llama: {image: img, aliases: [ll]}
        groups:
          g:
            members: [llama, lama, ll]
        """
    )
    assert [(i.field, i.line) for i in issues] == [("groups.g.members[1]", 5), ("groups.g.members[2]", 5)]
    assert "unknown model 'lama' (did you mean 'llama'?)" == issues[0].message
    assert "alias of model 'llama'" in issues[1].message


def test_model_in_two_groups_is_an_error() -> None:
    (issue,) = errors_of(
        """\
        models:
          a: {image: img}
        groups:
          g1: {members: [a]}
          g2: {members: [a]}
        """
    )
    assert issue.field == "groups.g2.members[0]" and "already a member of group 'g1'" in issue.message


def test_group_needs_members_without_duplicates() -> None:
    issues = errors_of("models:\n  a: {image: img}\ngroups:\n  g: {members: []}\n  h: {members: [a, a]}\n")
    assert [i.field for i in issues] == ["groups.g.members", "groups.h.members"]
    assert "duplicate member" in issues[1].message


def test_default_group_name_is_reserved() -> None:
    (issue,) = errors_of("models:\n  a: {image: img}\ngroups:\n  (default): {members: [a]}\n")
    assert issue.field == "groups" and "reserved" in issue.message


# ----------------------------------------------------------------------------- hooks


def test_preload_accepts_ids_and_aliases() -> None:
    config = load(
        "models:\n  a: {image: img, aliases: [x]}\n  b: {image: img}\n"
        "hooks:\n  on_startup:\n    preload: [x, b, a]\n"
    )
    assert preload_ids(config) == ["a", "b"]


def test_preload_of_unknown_model_is_an_error() -> None:
    (issue,) = errors_of("models:\n  a: {image: img}\nhooks:\n  on_startup:\n    preload: [b]\n")
    assert issue.field == "hooks.on_startup.preload[0]" and issue.line == 5


def test_python_construction_checks_references_too() -> None:
    with pytest.raises(ValueError, match="groups.g.members\\[0\\]: unknown model 'zz'"):
        Config(models={"a": ModelConfig(image="img")}, groups={"g": GroupConfig(members=["zz"])})
