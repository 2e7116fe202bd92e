"""``llamaswap-docker config import``: the report per model, the exit codes, where it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llamaswap_docker.cli import app
from llamaswap_docker.config import load_config

DATA = Path(__file__).resolve().parents[1] / "data" / "llamaswap"


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "llama-swap.yaml"
    path.write_text((DATA / "needs_person.yaml").read_text())
    return path


def test_import_writes_the_output_and_reports_each_model(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    result = run("config", "import", str(source), "-o", str(out))
    assert result.exit_code == 2, result.output  # some models need a person
    lines = result.stdout.splitlines()
    assert any(line.startswith("needs a person") and line.endswith("windows") for line in lines)
    assert any(line.startswith("converted, see note") and line.endswith("kept") for line in lines)
    assert any("why: it runs 'C:\\llama\\llama-server.exe'" in line for line in lines)
    assert any(line.strip().startswith("to do: ") for line in lines)
    assert f"8 models: 1 converted (1 with a note), 7 need a person; wrote {out}" in result.stdout
    assert list(load_config(out).models) == ["kept"]


def test_import_exits_0_when_every_model_converted(tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text((DATA / "podman_run.yaml").read_text())
    result = run("config", "import", str(source), "-o", str(tmp_path / "out.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("converted")
    assert "next: llamaswap-docker config check" in result.stdout


def test_without_output_the_config_goes_to_stdout_and_the_report_to_stderr(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("config", "import", str(source), "--platform", "cuda")
    assert result.stdout.startswith("# Converted from a llama-swap config")
    assert "needs a person       windows" in result.stderr
    assert "needs a person       windows" not in result.stdout
    (tmp_path / "piped.yaml").write_text(result.stdout)
    assert load_config(tmp_path / "piped.yaml").models["kept"].platform == "cuda"


def test_import_refuses_to_overwrite_the_input_or_an_existing_file(source: Path,
                                                                  tmp_path: Path) -> None:
    same = run("config", "import", str(source), "-o", str(source))
    assert same.exit_code == 1 and "is the llama-swap config itself" in same.stderr
    out = tmp_path / "exists.yaml"
    out.write_text("keep me\n")
    refused = run("config", "import", str(source), "-o", str(out))
    assert refused.exit_code == 1 and "pass --force" in refused.stderr
    assert out.read_text() == "keep me\n"
    forced = run("config", "import", str(source), "-o", str(out), "--force")
    assert forced.exit_code == 2 and out.read_text().startswith("# Converted")


def test_import_names_a_missing_file_and_an_unknown_platform(tmp_path: Path) -> None:
    missing = run("config", "import", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1
    assert missing.stderr == f"Error: llama-swap config not found: {tmp_path / 'nope.yaml'}\n"
    bad = run("config", "import", str(DATA / "podman_run.yaml"), "--platform", "tpu")
    assert bad.exit_code == 2 and "use one of cpu, cuda" in bad.stderr
