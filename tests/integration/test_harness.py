"""The harness itself: both local images start, get healthy, serve chat, and stop promptly."""

from __future__ import annotations

import openai

from tests.conftest import ContainerFactory, wait_http_ok


def _chat_round_trip(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True,
        extra_body={"ignore_eos": True},
    ))
    assert len(chunks) >= 2, "a stream of one chunk is not a stream"
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
    client.close()


def _stop_exit_code(container) -> int:
    """Stop as the proxy does (SIGTERM, SIGKILL after 10 s); the exit code tells which ended it:
    137 is the SIGKILL a server that ignores SIGTERM gets."""
    container.stop(timeout=10)
    container.reload()
    return container.attrs["State"]["ExitCode"]


def test_fake_upstream_serves_chat_and_stops_quickly(test_containers: ContainerFactory) -> None:
    container, base_url = test_containers.run(
        "llamaswap/fake-upstream:local", ["--load-delay", "0.5", "--model-name", "fake"]
    )
    wait_http_ok(f"{base_url}/health")
    _chat_round_trip(base_url, "fake")
    assert _stop_exit_code(container) == 0  # SIGTERM handled: a clean exit, not a kill


def test_fake_upstream_in_vllm_mode_listens_on_its_port(test_containers: ContainerFactory) -> None:
    _, base_url = test_containers.run(
        "llamaswap/fake-upstream:local", ["--mode", "vllm", "--port", "8000"], port=8000
    )
    wait_http_ok(f"{base_url}/health")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert [model.id for model in models.data] == ["fake-model"]
    client.close()


def test_llama_server_loads_tiny_model_serves_chat_and_stops_quickly(
    test_containers: ContainerFactory, tiny_model_dir
) -> None:
    container, base_url = test_containers.run(
        "llamaswap/llama-server:local",
        ["-m", "/models/tiny.gguf", "-c", "512"],
        volumes=[f"{tiny_model_dir}:/models:ro"],
    )
    wait_http_ok(f"{base_url}/health")
    _chat_round_trip(base_url, "tiny")
    assert _stop_exit_code(container) != 137, "llama-server ignored SIGTERM and was killed"
