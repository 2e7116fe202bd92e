"""The web UI at ``/ui`` and the API docs at ``/docs``, both served from package files.

Nothing is fetched from the internet: the UI is plain HTML, CSS and JavaScript in
``ui/static``, and Swagger UI's assets come from the ``fastapi-swagger`` package. The pages
hold no data (they read it from the API with the user's key), so they are served without one.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_swagger.resources
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

__all__ = ["OPEN_PATHS", "OPEN_PREFIXES", "mount_ui"]

STATIC = Path(__file__).parent / "static"
#: Swagger UI 5 (it renders the OpenAPI 3.1 FastAPI writes), as the fastapi-swagger package ships it.
SWAGGER_ASSETS = Path(fastapi_swagger.resources.__file__).parent
#: Served without an API key: pages and assets, never data.
OPEN_PATHS = frozenset({"/", "/ui", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/ui/", "/docs/static/")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    """Browsers asking for the proxy itself get the UI."""
    return RedirectResponse("/ui/", status_code=302)


@router.get("/ui")
async def ui() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=302)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="llamaswap-docker API",
        swagger_js_url="/docs/static/swagger-ui-bundle.js",
        swagger_css_url="/docs/static/swagger-ui.css",
        swagger_favicon_url="/docs/static/favicon-32x32.png",
    )


def mount_ui(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/", StaticFiles(directory=STATIC, html=True), name="ui")
    app.mount("/docs/static", StaticFiles(directory=SWAGGER_ASSETS), name="swagger-ui")
