"""Loading feedback: a streaming chat request that has to wait for a model start gets an SSE
stream at once, with progress as ``reasoning_content`` deltas, then the model's own stream.

Chat UIs show reasoning text while they wait, so a swap that takes a minute is not silence.
Enabled by ``sendLoadingState`` (globally or per model).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from llamaswap_docker.api.errors import sse_error_event
from llamaswap_docker.api.state import AppState
from llamaswap_docker.errors import LlamaswapError
from llamaswap_docker.lifecycle import Lease, ModelState
from llamaswap_docker.proxy import RelayResponse

__all__ = ["LoadingStateResponse", "wants_loading_state", "PROGRESS_INTERVAL_S"]

#: Seconds between progress deltas while the model starts.
PROGRESS_INTERVAL_S = 1.0

Forward = Callable[[AppState, Lease, Request, str, Any], Awaitable[Response]]


def wants_loading_state(
    state: AppState, model_id: str, path: str, payload: dict[str, Any] | None
) -> bool:
    """A streaming chat request for a model that is not ready, with the feature on."""
    return (
        path == "/v1/chat/completions"
        and payload is not None
        and payload.get("stream") is True
        and state.config.send_loading_state(model_id)
        and state.manager.models[model_id].state is not ModelState.READY
    )


class LoadingStateResponse(Response):
    """ASGI response: progress deltas while the model starts, then the upstream stream."""

    def __init__(self, state: AppState, request: Request, model_id: str, content: bytes,
                 forward: Forward) -> None:
        self.status_code = 200
        self.background = None
        self.state = state
        self.request = request
        self.model_id = model_id
        self.content = content
        self.forward = forward
        self.chunk_id = f"chatcmpl-loading-{uuid.uuid4().hex[:12]}"

    def _delta(self, text: str) -> bytes:
        chunk = {
            "id": self.chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]})

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        started = time.monotonic()
        await body(self._delta(f"Loading model {self.model_id}…\n"))
        lease = await self._wait_for_model(receive, body, started)
        if lease is None:
            return
        await body(self._delta(f"Model {self.model_id} ready in {time.monotonic() - started:.1f}s.\n\n"))
        try:
            relay = await self.forward(self.state, lease, self.request, self.request.url.path,
                                       self.content)
        except LlamaswapError as exc:  # forward released the lease
            await body(sse_error_event("openai", exc.status_code, exc.message, exc.code))
            await body(b"", more=False)
            return
        if not isinstance(relay, RelayResponse):
            return  # the client left while the request was sent (forward released the lease)

        if relay.upstream.status_code != 200:
            # Headers (200, event stream) are long sent: report the failure in-band.
            try:
                detail = (await relay.upstream.aread()).decode("utf-8", "replace")[:500]
            finally:
                await relay.upstream.aclose()
                await relay.on_close()
            message = f"model {self.model_id!r} answered {relay.upstream.status_code}: {detail}"
            await body(sse_error_event("openai", 502, message, "upstream_error"))
            await body(b"data: [DONE]\n\n", more=False)
            return

        async def send_body_only(message: Message) -> None:
            if message["type"] != "http.response.start":
                await send(message)

        await relay(scope, receive, send_body_only)

    async def _wait_for_model(
        self, receive: Receive, body: Callable[..., Awaitable[None]], started: float
    ) -> Lease | None:
        """Stream progress until the model admits the request; None if the client left or the
        start failed (then the error event is already sent). Never leaks an admission."""
        acquire = asyncio.ensure_future(self.state.manager.acquire(self.model_id))
        disconnect = asyncio.ensure_future(_disconnected(receive))
        lease: Lease | None = None
        try:
            while not acquire.done():
                await asyncio.wait({acquire, disconnect}, timeout=PROGRESS_INTERVAL_S,
                                   return_when=asyncio.FIRST_COMPLETED)
                if disconnect.done():
                    return None
                if not acquire.done():
                    elapsed = time.monotonic() - started
                    progress = self.state.manager.describe_progress(self.model_id)
                    await body(self._delta(f"{progress} ({elapsed:.0f}s)\n"))
            try:
                lease = acquire.result()
            except LlamaswapError as exc:
                await body(sse_error_event("openai", exc.status_code, exc.message, exc.code))
                await body(b"data: [DONE]\n\n", more=False)
                return None
            return lease
        finally:
            disconnect.cancel()
            if not acquire.done():
                acquire.cancel()
            elif lease is None and not acquire.cancelled() and acquire.exception() is None:
                acquire.result().release()  # admitted as the client left


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
