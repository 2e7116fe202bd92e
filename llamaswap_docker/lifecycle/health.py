"""Wait until a freshly started container answers its health check, or fail fast.

Polls often (every ``POLL_INTERVAL_S``) so a model is routed to the moment it is ready, and
checks the container's process on every miss so a container that exits while starting fails
the start at once — with its exit code and log tail — instead of waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from llamaswap_docker.runtime import ContainerState

__all__ = ["POLL_INTERVAL_S", "HealthOutcome", "wait_until_healthy"]

#: Time between health checks while a model starts.
POLL_INTERVAL_S = 0.05


class HealthOutcome:
    """Why waiting for health ended (when not with success)."""

    EXITED = "exited"
    TIMEOUT = "timeout"
    ABANDONED = "abandoned"


async def wait_until_healthy(
    http: httpx.AsyncClient,
    url: str | None,
    timeout_s: float,
    container_state: Callable[[], Awaitable[ContainerState | None]],
    abandon: Callable[[], bool] = lambda: False,
    headers: dict[str, str] | None = None,
) -> tuple[str | None, ContainerState | None]:
    """Poll ``url`` until it answers 200.

    Args:
        url: the health URL, or None to treat a running container as healthy.
        headers: sent with every poll (the container's API key, for a guarded health path).
        container_state: reads the container's process state (None when it is gone).
        abandon: polled between tries; True gives up (nobody waits for this model any more).

    Returns:
        ``(None, None)`` when healthy, else ``(HealthOutcome.*, last container state)``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if url is not None:
            try:
                response = await http.get(url, timeout=httpx.Timeout(2.0, connect=1.0),
                                          headers=headers)
                if response.status_code == 200:
                    return None, None
            except httpx.HTTPError:
                pass
        state = await container_state()
        if state is None or not state.running:
            return HealthOutcome.EXITED, state
        if url is None:
            return None, None
        if abandon():
            return HealthOutcome.ABANDONED, state
        if time.monotonic() >= deadline:
            return HealthOutcome.TIMEOUT, state
        await asyncio.sleep(POLL_INTERVAL_S)
