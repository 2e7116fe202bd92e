"""``ProxyApp`` (api/asgi.py) and the one error renderer (``error_answer``): what the hop raises
becomes an answer in the caller's dialect, logged once; anything unexpected is a 500 that
tells nothing of the internals. And the OpenAPI document promises the statuses the code
answers with (a failed start is 502, as ``ModelStartFailed`` says)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from llamaswap_docker.api.asgi import ProxyApp
from llamaswap_docker.api.errors import INTERNAL_ERROR, error_answer
from llamaswap_docker.api.inference import HOP_ERRORS, INFERENCE_PATHS, document
from llamaswap_docker.errors import (
    ConcurrencyLimitExceeded,
    ImagePullFailed,
    ModelStartFailed,
    UpstreamTimeout,
)
from tests.unit.hop_fakes import Hop, Upstream, json_reply, run


async def answer(request, reader, writer) -> bool:
    writer.write(json_reply())
    return True


def proxy_app(hop: Hop) -> ProxyApp:
    app = ProxyApp(FastAPI(), hop.config)
    app.running.llamaswap = SimpleNamespace(  # type: ignore[assignment]
        manager=hop.manager, upstream=hop.upstream, inflight=hop.inflight,
        recorder=hop.recorder, router=hop.router, config=hop.config)
    return app


def test_errors_the_hop_raises_are_answered_in_the_callers_dialect() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url)
            transport = httpx.ASGITransport(app=proxy_app(hop))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                ok = await c.post("/v1/chat/completions", json={"model": "m"})
                assert ok.status_code == 200 and ok.json() == {"ok": True}
                missing = await c.post("/v1/chat/completions", json={"model": "nope"})
                assert missing.status_code == 404
                assert missing.json()["error"]["code"] == "model_not_found"
                anthropic = await c.post("/v1/messages", json={"model": "nope"})
                assert anthropic.json()["type"] == "error"
                assert anthropic.json()["error"]["type"] == "not_found_error"
            await hop.close()
    run(scenario)


def test_an_unexpected_error_is_a_500_that_says_nothing_of_the_internals() -> None:
    async def scenario() -> None:
        async with Upstream(answer) as url:
            hop = Hop(url)

            def broken(model_id: str) -> None:
                raise KeyError("internal detail")
            hop.manager.try_acquire = broken  # type: ignore[method-assign]
            transport = httpx.ASGITransport(app=proxy_app(hop))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                reply = await c.post("/v1/chat/completions", json={"model": "m"})
            assert reply.status_code == 500
            assert reply.json()["error"] == {"message": INTERNAL_ERROR, "type": "server_error",
                                             "code": "internal_error"}
            assert "internal detail" not in reply.text
            hop.assert_all_given_back()
            await hop.close()
    run(scenario)


def test_error_answer_carries_retry_after_for_a_concurrency_limit() -> None:
    reply = error_answer(ConcurrencyLimitExceeded("too many", retry_after=3), "/v1/messages")
    assert reply.status_code == 429 and reply.headers["retry-after"] == "3"
    assert json.loads(reply.body)["error"]["type"] == "rate_limit_error"


def test_the_openapi_document_says_the_status_each_error_is_answered_with() -> None:
    app = FastAPI()
    document(app)
    schema = app.openapi()
    for path in INFERENCE_PATHS:
        responses = schema["paths"][path]["post"]["responses"]
        for error in HOP_ERRORS:
            assert f"`{error.code}`" in responses[str(error.status_code)]["description"], error
    responses = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert ModelStartFailed.status_code == 502
    assert "never passed its health check" in responses["502"]["description"]
    assert "health check" not in responses["503"]["description"]
    assert "`image_pull_failed`" in responses[str(ImagePullFailed.status_code)]["description"]
    assert "`upstream_timeout`" in responses[str(UpstreamTimeout.status_code)]["description"]
