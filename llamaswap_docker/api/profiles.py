"""Profiles, on llama-swap's paths and in its JSON shapes.

    GET /api/profiles          {"active": NAME | null, "profiles": [{"id", "description", "pins"}]}
    PUT /api/profiles/active   {"name": NAME | null} → {"active": NAME | null}

A change is published as a ``profileChanged`` event (``GET /api/events``). Startup and a
config reload select no profile, as in llama-swap.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from loguru import logger
from starlette.responses import JSONResponse, Response

from llamaswap_docker.api.errors import error_response
from llamaswap_docker.api.state import app_state

__all__ = ["router"]

router = APIRouter(tags=["management"])


@router.get("/api/profiles")
async def list_profiles(request: Request) -> JSONResponse:
    """The configured profiles, by id, and the one active (null: none)."""
    routing = app_state(request).router
    config = routing.config
    profiles = [{"id": profile_id, "description": profile.description, "pins": profile.pins}
                for profile_id, profile in sorted(config.profiles.items())]
    return JSONResponse({"active": routing.active_profile, "profiles": profiles})


@router.put("/api/profiles/active", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": ["string", "null"], "description": "a profile id; null: none"}}}}}}})
async def activate_profile(request: Request) -> Response:
    """Make a profile active (``{"name": null}``: none); the answer says which is."""
    routing = app_state(request).router
    try:
        body: Any = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return error_response("openai", 400, 'invalid profile request: send {"name": PROFILE} '
                              "as JSON", "invalid_request")
    if not isinstance(body, dict) or "name" not in body:
        return error_response("openai", 400, 'profile name is required: {"name": PROFILE} '
                              "(null: no profile)", "invalid_request")
    name = body["name"]
    if name is not None and not isinstance(name, str):
        return error_response("openai", 400, "profile name must be a string or null",
                              "invalid_request")
    try:
        routing.activate(name or None)  # "" deactivates too, as in llama-swap
    except KeyError:
        known = ", ".join(sorted(routing.config.profiles)) or "none are configured"
        logger.bind(profile=name).warning("unknown profile requested")
        return error_response("openai", 404, f"profile {name!r} not found (profiles: {known})",
                              "profile_not_found")
    return JSONResponse({"active": routing.active_profile})
