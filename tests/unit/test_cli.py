"""The CLI through Typer's runner: help, version, config check/show, errors, flag mapping."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from llamaswap_docker import __version__
from llamaswap_docker.cli import app
from llamaswap_docker.cli.client import ProxyUnreachable, _error_message
from llamaswap_docker.config.masking import MASK, mask_secrets
from llamaswap_docker.runtime import PullProgress

REPO = Path(__file__).resolve().parents[2]
VERBS = ["serve", "ps", "models", "load", "unload", "logs", "config", "pull", "cleanup", "version"]

GOOD = """\
apiKeys: ["${env.CLI_TEST_KEY}", "plain-key-123"]
models:
  fake:
    image: llamaswap/fake-upstream:local
    cmd: --port 8080 --api-key cmd-secret-1 --model-name fake --hf-token=cmd-secret-2
    env:
      HF_TOKEN: hf-secret-3
      DB_PASSWORD: pw-secret-4
      OTHER: visible-value
"""
BROKEN = """\
models:
  fake:
    image: llamaswap/fake-upstream:local
    ttl: soon
    tll: 3
"""


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def broken_config(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    return path


# -- help and version ---------------------------------------------------------------------------


def test_version_command_and_flag_print_the_package_version() -> None:
    assert run("version").stdout.strip() == f"llamaswap-docker {__version__}"
    assert run("--version").stdout.strip() == f"llamaswap-docker {__version__}"


def test_help_lists_every_verb_with_a_short_help_and_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for verb in VERBS:
        assert f" {verb} " in result.stdout, verb
    assert "Examples" in result.stdout
    assert " status " not in result.stdout, "the alias stays out of the command list"


@pytest.mark.parametrize("command", [
    ["serve"], ["ps"], ["models"], ["load"], ["unload"], ["logs"], ["config"], ["config", "check"],
    ["config", "show"], ["pull"], ["cleanup"], ["version"],
])
def test_every_command_help_has_examples(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples" in result.stdout
    assert f"llamaswap-docker {' '.join(command)}" in result.stdout


def test_status_is_an_alias_of_ps() -> None:
    assert "List models that have a container" in run("status", "--help").stdout


# -- config check / show ------------------------------------------------------------------------


def test_config_check_accepts_a_valid_file(good_config: Path) -> None:
    result = run("config", "check", str(good_config), env={"CLI_TEST_KEY": "k"})
    assert result.exit_code == 0
    assert result.stdout.strip() == f"{good_config}: OK (1 model, 0 groups)"


def test_config_check_prints_each_error_with_line_and_field(broken_config: Path) -> None:
    result = run("config", "check", str(broken_config))

    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{broken_config}: 2 errors"
    assert lines[1].startswith(f"{broken_config}:4: models.fake.ttl: ")
    assert lines[2] == f"{broken_config}:5: models.fake.tll: unknown field 'tll' (did you mean 'ttl'?)"
    assert "Traceback" not in result.output


def test_config_check_warns_what_a_config_gives_the_host_and_still_passes(tmp_path: Path) -> None:
    path = tmp_path / "risky.yaml"
    path.write_text(
        "models:\n"
        "  a:\n"
        "    image: x\n"
        "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"
        "    docker:\n"
        "      privileged: true\n"
        "  rocm:\n"
        "    backend: vllm\n"
        "    platform: rocm\n"
    )
    result = run("config", "check", str(path))
    assert result.exit_code == 0  # valid: said, not refused
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert f"warning: {path}:6: models.a.docker.privileged: the container runs privileged" in \
        "\n".join(warnings)
    assert any(f"{path}:4: models.a.volumes[0]: mounts the socket /var/run/docker.sock" in w
               for w in warnings)
    # Powers a preset adds are named with the preset, on the backend's line.
    preset = [w for w in warnings if "models.rocm.backend" in w]
    assert preset and all(f"{path}:8:" in w and "added by the vllm preset for rocm" in w
                          for w in preset)
    assert any("SYS_PTRACE" in w for w in preset) and any("seccomp=unconfined" in w for w in preset)


def test_config_check_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = run("config", "check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: config file not found: {tmp_path / 'nope.yaml'}\n"


def test_config_check_reads_the_path_from_llamaswap_config(good_config: Path) -> None:
    result = run("config", "check", env={"LLAMASWAP_CONFIG": str(good_config), "CLI_TEST_KEY": "k"})
    assert result.exit_code == 0 and "OK" in result.stdout


def test_config_show_prints_the_resolved_config_with_secrets_masked(good_config: Path) -> None:
    result = run("config", "show", str(good_config), env={"CLI_TEST_KEY": "env-secret-0"})

    assert result.exit_code == 0, result.output
    for secret in ("env-secret-0", "plain-key-123", "cmd-secret-1", "cmd-secret-2", "hf-secret-3",
                   "pw-secret-4"):
        assert secret not in result.stdout, secret
    shown = yaml.safe_load(result.stdout)
    assert shown["apiKeys"] == [MASK, MASK]
    model = shown["models"]["fake"]
    assert model["env"] == {"HF_TOKEN": MASK, "DB_PASSWORD": MASK, "OTHER": "visible-value"}
    assert model["cmd"] == ["--port", "8080", "--api-key", MASK, "--model-name", "fake",
                            f"--hf-token={MASK}"]
    assert model["ttl"] == -1 and shown["docker"]["instance"] == "default"  # defaults filled in


def test_mask_secrets_leaves_other_values_and_the_input_alone() -> None:
    data = {"apiKeys": ["a"], "macros": {"api_key": "s", "port": 8080}, "name": "keyboard",
            "enabled": True, "models": {"m": {"cmd": ["--token", "t", "--verbose", "-v"]}}}
    masked = mask_secrets(data)
    assert masked == {"apiKeys": [MASK], "macros": {"api_key": MASK, "port": 8080},
                      "name": "keyboard", "enabled": True,
                      "models": {"m": {"cmd": ["--token", MASK, "--verbose", "-v"]}}}
    assert data["apiKeys"] == ["a"]


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["ps"], ["load", "m"], ["unload", "--all"], ["logs", "m"],
                                     ["models"]])
def test_no_proxy_at_the_url_is_one_line_and_exit_1(command: list[str]) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    result = run(*command, "--url", url)

    assert result.exit_code == 1
    assert result.stderr == (f"Error: no llamaswap-docker answers at {url}: start one with "
                             "`llamaswap-docker serve`, or pass --url\n")
    assert result.stdout == ""


def test_url_from_the_environment_and_without_scheme() -> None:
    port = unused_port()
    result = run("ps", env={"LLAMASWAP_URL": f"127.0.0.1:{port}"})
    assert f"no llamaswap-docker answers at http://127.0.0.1:{port}" in result.stderr


def test_debug_lets_the_error_through_with_its_traceback() -> None:
    result = run("--debug", "ps", "--url", f"http://127.0.0.1:{unused_port()}")
    assert result.exit_code == 1
    assert isinstance(result.exception, ProxyUnreachable)


def test_debug_from_the_environment_prints_a_traceback_in_a_real_process() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    plain = subprocess.run([sys.executable, "-m", "llamaswap_docker", "ps", "--url", url],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    debug = subprocess.run([sys.executable, "-m", "llamaswap_docker", "--debug", "ps", "--url", url],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.count("\n") == 1
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ProxyUnreachable" in debug.stderr


def test_unload_needs_a_model_or_all_but_not_both() -> None:
    assert run("unload").exit_code == 2
    assert run("unload", "m", "--all").exit_code == 2


@pytest.mark.parametrize("payload, message", [
    ({"error": {"message": "model 'x' is not configured", "type": "invalid_request_error"}},
     "model 'x' is not configured"),
    ({"type": "error", "error": {"type": "authentication_error", "message": "missing API key"}},
     "missing API key"),
])
def test_server_errors_show_the_servers_own_message(payload: dict, message: str) -> None:
    response = httpx.Response(404, json=payload)
    assert _error_message(response) == message


def test_server_errors_without_json_show_status_and_text() -> None:
    response = httpx.Response(502, text="Bad Gateway from nginx")
    assert _error_message(response) == "502 Bad Gateway: Bad Gateway from nginx"


# -- flags onto settings and runtime calls -------------------------------------------------------


def test_serve_maps_flags_onto_settings(monkeypatch: pytest.MonkeyPatch, good_config: Path) -> None:
    import llamaswap_docker.server

    seen = []
    monkeypatch.setattr(llamaswap_docker.server, "run_server", lambda settings: seen.append(settings) or 0)

    result = run("serve", "-c", str(good_config), "-l", "0.0.0.0:9999", "--watch-config",
                 "--log-level", "debug")

    assert result.exit_code == 0, result.output
    [settings] = seen
    assert settings.config == good_config and settings.watch_config is True
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9999, "debug")
    run("serve")
    assert seen[-1].watch_config is False and seen[-1].config is None


def test_serve_with_an_invalid_listen_flag_is_one_line() -> None:
    result = run("serve", "-l", "nowhere")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: invalid settings: listen (flag):")


class _FakeEngine:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_pull_pulls_each_image_once_whatever_the_pull_policy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import llamaswap_docker.cli.pull as pull_module

    config = tmp_path / "c.yaml"
    config.write_text("models:\n  a: {image: 'repo/x:1', aliases: [alias-a]}\n"
                      "  b: {image: 'repo/x:1'}\n  c: {image: 'repo/y:2'}\n")
    engine = _FakeEngine()
    calls: list[tuple[str, str]] = []

    def fake_ensure_image(engine_arg, image, policy, on_progress=None):
        assert engine_arg is engine
        calls.append((image, policy))
        if on_progress is not None:  # the bar is drawn on terminals only
            on_progress(PullProgress(image, "l1", "Downloading", 50, 100))
            on_progress(PullProgress(image, "l1", "Pull complete"))

    monkeypatch.setattr(pull_module, "ensure_image", fake_ensure_image)
    monkeypatch.setattr(pull_module.Engine, "from_settings", classmethod(lambda cls, host=None: engine))

    result = run("pull", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert calls == [("repo/x:1", "always"), ("repo/y:2", "always")]
    assert "repo/x:1: pulled" in result.stdout and engine.closed

    calls.clear()
    assert run("pull", "alias-a", "-c", str(config)).exit_code == 0
    assert calls == [("repo/x:1", "always")]

    result = run("pull", "nope", "-c", str(config))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: model 'nope' is not in the config")


def test_json_output_is_plain_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import llamaswap_docker.cli.remote as remote

    class FakeClient:
        def __init__(self, url: str, api_key: str | None, timeout: float = 30) -> None:
            assert (url, api_key) == ("http://h:1", "k")

        def __enter__(self) -> "FakeClient":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def json(self, method: str, path: str, **kwargs: Any) -> Any:
            assert (method, path, kwargs) == ("GET", "/running", {"params": {"all": "true"}})
            return {"running": [{"model": "m", "state": "ready"}]}

    monkeypatch.setattr(remote, "ProxyClient", FakeClient)
    result = run("ps", "-a", "--json", "--url", "http://h:1", "--api-key", "k")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"running": [{"model": "m", "state": "ready"}]}
