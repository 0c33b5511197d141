"""`/docs`: Swagger UI for the admin API, served from the fastapi-swagger package.

FastAPI's default page loads Swagger UI from a CDN, so it is blank on a machine without
internet; these routes serve the same page with its script, stylesheet and icon from the
installed package. The files are public like the page itself (gateway/auth.py).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from cumulo.errors import NotFound

__all__ = ["SWAGGER_ASSETS", "add_docs_routes"]

# The only files the page needs, by the name it asks for: nothing else in the package is
# reachable, so a path can never name a file outside it.
# fastapi-swagger ships Swagger UI 5 (OpenAPI 3.1, which FastAPI writes; 4.x cannot read it).
ASSETS = files("fastapi_swagger") / "resources"
SWAGGER_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def add_docs_routes(app: FastAPI, title: str) -> None:
    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} API",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
        )

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = SWAGGER_ASSETS.get(name)
        if media_type is None:
            raise NotFound(f"/docs/{name} not found", code="not_found")
        return FileResponse(
            str(ASSETS / name),
            media_type=media_type,
            headers={"cache-control": "public, max-age=86400"},
        )
