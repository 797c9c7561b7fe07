"""The playground: one static page (HTML + plain JS + CSS, shipped as package data) at /playground.

No build step and no CDN, so it works offline; it talks only to this proxy (`/v1/guard`, and
`/v1/chat/completions` with streaming when there is an upstream). The page itself is public: it holds no
data, and the API calls it makes carry the key the user typed (kept in the browser session only).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

from .deps import ApiError

PAGE = "playground.html"
#: The files the page loads, with their content types; nothing else is served from the folder.
ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}
#: The page runs only its own script and style and talks only to this proxy; images are the user's own (data URLs).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    """A file of the page, from the package's `static/` folder."""
    return files(__package__).joinpath("static", name).read_bytes()


def install_playground(app: FastAPI) -> None:
    """GET /playground (the page) and GET /playground/<asset> (its script and style)."""

    @app.get("/playground", include_in_schema=False)
    async def page() -> Response:
        return Response(_read(PAGE), media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ApiError(404, f"unknown playground file {name}; the page is at /playground", code="not_found")
        return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)
