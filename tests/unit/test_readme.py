"""The README stays true to the code: its config example loads, its test command is CI's."""

from __future__ import annotations

from pathlib import Path

from llamaswap_docker.config import load_config_text

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_config_example_is_valid() -> None:
    block = README.split("## Configuration in one screen", 1)[1].split("```yaml\n", 1)[1]
    config = load_config_text(block.split("```", 1)[0], source="README.md",
                              environ={"LLAMASWAP_API_KEY": "k"})
    assert "qwen-7b" in config.models and config.resolve("gpt-4o-mini") == "qwen-7b"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = README.split("## Test", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci_lines]
