"""The demo's real model (Gemma 3 270M from the ``demo-model`` extra) answers through the proxy
on Debian's real llama-server: a real question, a real answer, llama.cpp's own timings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from llamaswap_docker.config import REAL_MODEL_ID, Settings, load_demo_config
from llamaswap_docker.demomodel import ensure_real_model
from llamaswap_docker.server import load_serving_config
from tests.conftest import LLAMA_SERVER_IMAGE
from tests.config_views import effective_groups


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo-model")
    path = ensure_real_model(directory)
    assert path is not None, "the demo-model extra is part of [test]: pip install -e '.[test]'"
    directory.chmod(0o755)
    return path


def test_serve_without_a_config_offers_the_real_model_next_to_the_small_ones(
    real_model, monkeypatch
) -> None:
    # What `serve` with no config loads: the demo, from its models folder (assembled there once).
    monkeypatch.setenv("LLAMASWAP_DEMO_DIR", str(real_model.parent))
    monkeypatch.delenv("LLAMASWAP_CONFIG", raising=False)
    config, source = load_serving_config(Settings())
    assert source == "built-in demo config with a real model"
    assert set(config.models) == {"tiny-llama", "fake-vllm", REAL_MODEL_ID}
    assert (real_model.parent / "tiny.gguf").exists()
    gemma = config.models[REAL_MODEL_ID]
    assert f"/models/{real_model.name}" in gemma.cmd
    assert gemma.volumes[0].startswith(f"{real_model.parent}:/models")
    assert REAL_MODEL_ID in effective_groups(config)["demo"].members
    # Without the extra, the demo is what it was.
    assert set(load_demo_config(real_model.parent).models) == {"tiny-llama", "fake-vllm"}


def test_real_model_answers_a_real_question_with_timings(start_proxy, real_model) -> None:
    config = load_demo_config(real_model.parent, real_model.name)
    entry = config.models[REAL_MODEL_ID]
    proxy = start_proxy({REAL_MODEL_ID: {
        "image": LLAMA_SERVER_IMAGE, "cmd": entry.cmd, "volumes": entry.volumes, "port": 8080,
        "filters": {"setParams": entry.filters.set_params}}})
    response = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=180, json={
        "model": REAL_MODEL_ID, "max_tokens": 24,  # as the README asks: the demo's own settings
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert response.status_code == 200, response.text
    answer = response.json()
    text = answer["choices"][0]["message"]["content"]
    assert "paris" in text.lower(), answer  # greedy (the demo sets temperature 0): real answer
    timings = answer["timings"]
    assert timings["predicted_n"] > 0 and timings["predicted_per_second"] > 0
    print(f"\n{REAL_MODEL_ID}: {text.strip()!r} "
          f"({timings['predicted_n']} tokens, {timings['predicted_per_second']:.1f} tokens/s)")
