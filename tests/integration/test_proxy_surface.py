"""The proxy as clients see it, with the real OpenAI and Anthropic SDKs, on the real engine."""

from __future__ import annotations

import json
import socket
import time

import anthropic
import httpx
import openai
import pytest

from tests.conftest import fake_model, llama_model, model_containers


@pytest.fixture
def fake_proxy(start_proxy):
    return start_proxy(
        {
            "fake": fake_model("--model-name", "fake", aliases=["fake-alias"]),
            "renamed": fake_model(useModelName="served-name"),
            "filtered": fake_model(filters={"stripParams": "temperature", "setParams": {"top_k": 7}}),
            "hidden": fake_model(unlisted=True),
        },
        groups={"all": {"swap": False, "exclusive": False, "members": ["fake", "renamed", "filtered", "hidden"]}},
    )


@pytest.fixture
def llama_proxy(start_proxy, tiny_model_dir):
    return start_proxy({"tiny": llama_model(tiny_model_dir)})


#: The tiny random model may emit end-of-sequence at once; llama-server's ignore_eos keeps the
#: token count what max_tokens says (the fake ignores the field).
NO_EOS = {"ignore_eos": True}


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("target", ["fake", "llama"])
def test_openai_sdk_chat_and_completions_stream_and_not(target, fake_proxy_or_llama) -> None:
    url, model = fake_proxy_or_llama(target)
    client = openai_client(url)

    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, extra_body=NO_EOS)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        extra_body=NO_EOS))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1
    assert len(chunks) >= 3

    completion = client.completions.create(model=model, prompt="hello", max_tokens=4, extra_body=NO_EOS)
    assert completion.choices[0].text

    streamed = list(client.completions.create(model=model, prompt="hello", max_tokens=4, stream=True,
        extra_body=NO_EOS))
    assert len(streamed) >= 2


@pytest.fixture
def fake_proxy_or_llama(start_proxy, tiny_model_dir):
    def pick(target: str) -> tuple[str, str]:
        if target == "fake":
            return start_proxy({"fake": fake_model("--model-name", "fake")}).url, "fake"
        return start_proxy({"tiny": llama_model(tiny_model_dir)}).url, "tiny"
    return pick


@pytest.mark.parametrize("target", ["fake", "llama"])
def test_openai_sdk_embeddings(target, start_proxy, tiny_model_dir) -> None:
    # llama-server serves embeddings only when started with --embeddings (then only those).
    model = fake_model() if target == "fake" else llama_model(tiny_model_dir, "--embeddings", "--pooling", "mean")
    proxy = start_proxy({"embed": model})
    embedding = openai_client(proxy.url).embeddings.create(model="embed", input=["one", "two"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) > 0


def test_anthropic_sdk_messages_and_stream(fake_proxy) -> None:
    client = anthropic.Anthropic(base_url=fake_proxy.url, api_key="unused", max_retries=0)
    message = client.messages.create(model="fake", max_tokens=5,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text
    assert message.usage.output_tokens > 0

    with client.messages.stream(model="fake", max_tokens=5,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.stop_reason in ("max_tokens", "end_turn")

    count = client.messages.count_tokens(model="fake", messages=[{"role": "user", "content": "a b c"}])
    assert count.input_tokens > 0


def test_anthropic_sdk_messages_against_real_llama_server(llama_proxy) -> None:
    client = anthropic.Anthropic(base_url=llama_proxy.url, api_key="unused", max_retries=0)
    message = client.messages.create(model="tiny", max_tokens=4,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text and message.usage.output_tokens > 0
    with client.messages.stream(model="tiny", max_tokens=4,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
    assert text


def test_real_llama_server_native_completion_endpoint(llama_proxy) -> None:
    response = httpx.post(f"{llama_proxy.url}/completion",
                          json={"model": "tiny", "prompt": "hello", "n_predict": 4}, timeout=60)
    assert response.status_code == 200
    assert response.json()["tokens_predicted"] > 0


def test_alias_resolves_and_use_model_name_rewrites_model(fake_proxy) -> None:
    client = openai_client(fake_proxy.url)
    via_alias = client.chat.completions.with_raw_response.create(
        model="fake-alias", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert via_alias.headers["x-fake-model"] == "fake-alias"

    renamed = client.chat.completions.with_raw_response.create(
        model="renamed", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert renamed.headers["x-fake-model"] == "served-name"
    assert renamed.parse().model == "served-name"


def test_filters_strip_and_set_params(fake_proxy) -> None:
    response = httpx.post(f"{fake_proxy.url}/v1/rerank", timeout=30, json={
        "model": "filtered", "query": "q", "documents": ["a"], "temperature": 0.3})
    assert response.status_code == 200
    forwarded = response.json()["json_keys"]
    assert "temperature" not in forwarded
    assert "top_k" in forwarded and "query" in forwarded


def test_models_list_is_sorted_hides_unlisted_and_shows_aliases_when_asked(start_proxy) -> None:
    proxy = start_proxy(
        {"zeta": fake_model(aliases=["z"]), "alpha": fake_model(metadata={"family": "test"}),
         "secret": fake_model(unlisted=True)},
        includeAliasesInList=True,
    )
    for path in ("/v1/models", "/models"):
        listed = httpx.get(f"{proxy.url}{path}").json()
        assert [m["id"] for m in listed["data"]] == ["alpha", "z", "zeta"]
        assert listed["object"] == "list"
        by_id = {m["id"]: m for m in listed["data"]}
        assert by_id["alpha"]["meta"] == {"family": "test"}
        assert by_id["z"]["meta"] == {"alias_of": "zeta"}


def test_multipart_upload_names_model_in_form_field(fake_proxy) -> None:
    audio = b"RIFF" + bytes(200_000)
    response = httpx.post(
        f"{fake_proxy.url}/v1/audio/transcriptions",
        data={"model": "fake-alias", "language": "en"},
        files={"file": ("a.wav", audio, "audio/wav")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["model"] == "fake-alias"
    assert echoed["content_type"].startswith("multipart/form-data")
    assert echoed["body_bytes"] > len(audio)


def test_upstream_path_loads_the_model_and_passes_through(fake_proxy) -> None:
    response = httpx.get(f"{fake_proxy.url}/upstream/fake/v1/models", timeout=60)
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "fake"
    running = httpx.get(f"{fake_proxy.url}/running").json()["running"]
    assert any(entry["model"] == "fake" and entry["state"] == "ready" for entry in running)


def test_client_disconnect_mid_stream_cancels_the_upstream_request(start_proxy) -> None:
    proxy = start_proxy({"slow": fake_model("--tokens", "200", "--token-rate", "20")})
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True,
            "max_tokens": 200}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        received = [next(lines) for _ in range(4)]
    assert any(line.startswith("data: ") for line in received)

    stats: dict = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = httpx.get(f"{proxy.url}/upstream/slow/debug/stats", timeout=10).json()
        if stats["cancelled_streams"] >= 1:
            break
        time.sleep(0.05)
    assert stats["cancelled_streams"] == 1, stats
    assert stats["in_flight"] <= 1  # only the stats request itself


def test_loading_state_streams_reasoning_deltas_during_cold_start(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model("--load-delay", "2", sendLoadingState=True)})
    client = openai_client(proxy.url)
    reasoning, content = [], []
    for chunk in client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        extra = getattr(delta, "model_extra", None) or {}
        if extra.get("reasoning_content"):
            assert not content, "loading feedback must come before the answer"
            reasoning.append(extra["reasoning_content"])
        if delta.content:
            content.append(delta.content)
    assert len(reasoning) >= 2, reasoning
    assert "fake" in reasoning[0]
    assert content


def test_large_request_body_passes_through(fake_proxy) -> None:
    big = "x" * (50 * 1024 * 1024)
    payload = json.dumps({"model": "fake", "query": big, "documents": ["a"]}).encode()
    response = httpx.post(f"{fake_proxy.url}/v1/rerank", content=payload,
                          headers={"content-type": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["body_bytes"] == len(payload)


# -- errors in the caller's dialect ---------------------------------------------------------------


def test_unknown_model_returns_404_in_openai_shape(fake_proxy) -> None:
    client = openai_client(fake_proxy.url)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    error = caught.value.body
    assert error["code"] == "model_not_found"
    assert "/v1/models" in error["message"]


def test_unknown_model_returns_404_in_anthropic_shape(fake_proxy) -> None:
    client = anthropic.Anthropic(base_url=fake_proxy.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("body", "needle"),
    [(b"{not json", "not valid JSON"), (b'{"messages": []}', "names no model")],
)
def test_malformed_json_and_missing_model_return_400(fake_proxy, body, needle) -> None:
    response = httpx.post(f"{fake_proxy.url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_upstream_refusing_connections_returns_502_with_reason(start_proxy) -> None:
    # Running, but listening on another port than configured: every connect is refused.
    wrong_port = fake_model(checkEndpoint="none")
    wrong_port["cmd"] = ["--port", "8081"]
    proxy = start_proxy({"misconfigured": wrong_port})
    response = httpx.post(f"{proxy.url}/v1/completions",
                          json={"model": "misconfigured", "prompt": "x"}, timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert "model 'misconfigured' did not answer" in error["message"]
    assert error["code"] == "upstream_unavailable"


def test_unknown_route_is_404_in_openai_shape(fake_proxy) -> None:
    response = httpx.get(f"{fake_proxy.url}/v1/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_hop_by_hop_headers_are_dropped_and_host_rewritten(fake_proxy) -> None:
    httpx.post(
        f"{fake_proxy.url}/v1/completions",
        json={"model": "fake", "prompt": "x", "max_tokens": 1},
        headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "TE": "trailers",
                 "X-End-To-End": "kept"},
        timeout=30,
    ).raise_for_status()
    seen = httpx.get(f"{fake_proxy.url}/upstream/fake/debug/stats", timeout=10).json()
    # last_headers is the completion's: /debug/stats is not an inference request.
    headers = seen["last_headers"]
    assert headers["x-end-to-end"] == "kept"
    assert "x-secret-hop" not in headers and "te" not in headers
    assert headers["host"].startswith("127.0.0.1:") and headers["host"] != fake_proxy.url[7:]


def waiting_count(url: str, model: str) -> int:
    running = httpx.get(f"{url}/running?all=true", timeout=10).json()["running"]
    return next(entry["waiting"] for entry in running if entry["model"] == model)


def poll_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_client_leaving_while_model_loads_is_dropped_from_the_queue(start_proxy) -> None:
    # The load outlasts every deadline below: only the client leaving can empty the queue.
    proxy = start_proxy({"slow": fake_model("--load-delay", "120")}, healthCheckTimeout=300)
    body = json.dumps({"model": "slow", "prompt": "x"}).encode()
    host, port = proxy.url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(body), body))
    poll_until(lambda: waiting_count(proxy.url, "slow") == 1, "the request never queued")
    client.close()
    poll_until(lambda: waiting_count(proxy.url, "slow") == 0,
               "the request of a client that left stayed queued")


def test_upstream_post_to_a_cold_model_streams_the_whole_body(start_proxy) -> None:
    proxy = start_proxy({"cold": fake_model("--load-delay", "1")})
    payload = json.dumps({"query": "q" * 5_000_000, "documents": ["a"]}).encode()
    response = httpx.post(f"{proxy.url}/upstream/cold/v1/rerank", content=payload,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["body_bytes"] == len(payload)


def test_abandoned_load_gives_way_to_a_model_someone_waits_for(start_proxy, docker_client,
                                                               instance_name) -> None:
    # slow's load lasts far longer than fast's client waits (60 s): fast answering at all
    # shows the abandoned load was given up, not waited out.
    proxy = start_proxy({
        "slow": fake_model("--load-delay", "300"),
        "fast": fake_model(),
    }, healthCheckTimeout=600)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=1)
    response = httpx.post(f"{proxy.url}/v1/completions", json={"model": "fast", "prompt": "x"},
                          timeout=60)
    assert response.status_code == 200
    assert model_containers(docker_client, instance_name, "slow") == []


def in_flight(url: str, model: str) -> int:
    running = httpx.get(f"{url}/running?all=true", timeout=10).json()["running"]
    return next(entry["in_flight"] for entry in running if entry["model"] == model)


def state_of(url: str, model: str) -> str:
    running = httpx.get(f"{url}/running?all=true", timeout=10).json()["running"]
    return next(entry["state"] for entry in running if entry["model"] == model)


def test_client_leaving_a_non_streaming_request_releases_the_model_at_once(start_proxy) -> None:
    # A 90 s generation: the lease coming back within the 30 s poll can only be the proxy
    # noticing the client left, not the answer ending.
    proxy = start_proxy({"slow": fake_model("--tokens", "900", "--token-rate", "10")})
    assert httpx.post(f"{proxy.url}/v1/completions", json={"model": "slow", "prompt": "x",
                      "max_tokens": 1}, timeout=30).status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=1)
    poll_until(lambda: in_flight(proxy.url, "slow") == 0,
               "the lease was held until the generation ended")


def test_client_leaving_during_loading_feedback_leaks_no_admission(start_proxy) -> None:
    proxy = start_proxy({"fake": fake_model("--load-delay", "1.5", sendLoadingState=True)})
    body = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=30) as stream:
        first = next(stream.iter_lines())
    assert "reasoning_content" in first
    # The model comes up after the client left; an admission leaked to the gone client would
    # keep in_flight at 1 for good.
    poll_until(lambda: state_of(proxy.url, "fake") == "ready", "the model never came up")
    poll_until(lambda: in_flight(proxy.url, "fake") == 0, "the gone client kept its admission")
    assert httpx.post(f"{proxy.url}/api/models/unload/fake", timeout=30).status_code == 200
