"""Tokens for every stream, on the real engine with the OpenAI SDK: a streamed request that did
not ask for usage is recorded with the server's token counts, and the client's stream has no
usage chunk it did not ask for; a client that asked gets it as the server sent it.

vLLM is played by the fake upstream in ``--mode vllm`` (a usage chunk only when asked, no
llama-server timings); llama-server is the real one on the tiny GGUF.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import fake_model, llama_model

NO_EOS = {"ignore_eos": True}


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def newest_row(url: str, seen: int) -> dict:
    """The activity row of the request just made (waits for the ``seen + 1``-th)."""
    deadline = time.monotonic() + 30
    while True:
        rows = httpx.get(f"{url}/api/metrics/activity", timeout=10).json()["data"]
        if len(rows) > seen or time.monotonic() > deadline:
            assert len(rows) == seen + 1, rows
            return rows[0]
        time.sleep(0.05)


@pytest.fixture
def proxy(start_proxy, tiny_model_dir):
    return start_proxy(
        {"vllm": fake_model("--mode", "vllm", "--tokens", "5"), "tiny": llama_model(tiny_model_dir)},
        groups={"all": {"swap": False, "exclusive": False, "members": ["vllm", "tiny"]}},
    )


@pytest.mark.parametrize("model", ["vllm", "tiny"])
def test_a_stream_that_did_not_ask_is_recorded_with_tokens_and_gets_no_usage_chunk(
        proxy, model: str) -> None:
    client = openai_client(proxy.url)
    chat = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        extra_body=NO_EOS))
    assert chat and all(chunk.choices for chunk in chat), "a usage chunk reached the client"
    assert all(chunk.usage is None for chunk in chat)
    row = newest_row(proxy.url, 0)
    assert row["tokens"]["input_tokens"] > 0 and row["tokens"]["output_tokens"] == 5

    text = list(client.completions.create(model=model, prompt="hello", max_tokens=5, stream=True,
                                          extra_body=NO_EOS))
    assert text and all(chunk.choices for chunk in text)
    row = newest_row(proxy.url, 1)
    assert row["req_path"] == "/v1/completions" and row["tokens"]["output_tokens"] == 5


@pytest.mark.parametrize("model", ["vllm", "tiny"])
def test_a_stream_that_asked_for_usage_gets_the_servers_usage_chunk(proxy, model: str) -> None:
    client = openai_client(proxy.url)
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}, extra_body=NO_EOS))
    usage = [chunk for chunk in chunks if not chunk.choices]
    assert len(usage) == 1 and usage[0].usage.completion_tokens == 5
    row = newest_row(proxy.url, 0)
    assert row["tokens"]["output_tokens"] == 5
    assert row["tokens"]["input_tokens"] == usage[0].usage.prompt_tokens


def test_raw_bytes_of_an_asked_stream_keep_every_event(proxy) -> None:
    body = {"model": "vllm", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=60) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"choices": []' in events[-2] and '"usage"' in events[-2]
