"""The pages: ``GET /`` (the clinician's page), ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), all offline.

- ``/`` is ``static/index.html``; its script (``static/page.js``) builds the form from ``GET /model``, calls
  ``POST /explain`` and ``POST /explain/plot`` and reads ``GET /groups``. Nothing is inline, so the page runs under
  :data:`service.api.security.PAGE_CSP`.
- ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from ``/static/vendor/``: the files shipped by the
  ``fastapi-offline`` package (Swagger UI 5.32.6 and ReDoc 2.5.3, with its MIT licence), and are started by
  ``static/docs/*.js`` rather than an inline script. No CDN, no Google Fonts: the pages work without internet.
- The page's files are package data of ``service.api`` (``static/``), so an installed wheel serves them too.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["COMPRESSED_PATHS", "STATIC_DIR", "VENDOR_DIR", "PageCompressionMiddleware", "compressed", "install_pages"]

STATIC_DIR = Path(str(files("service.api") / "static"))
VENDOR_DIR = Path(fastapi_offline.__file__).parent / "static"

router = APIRouter(include_in_schema=False)

# What a browser fetches to open the page, and the two large documents: gzip when the client asks for it.
COMPRESSED_PATHS = frozenset({"/", "/docs", "/redoc", "/openapi.json", "/model", "/groups"})


class PageCompressionMiddleware:
    """gzip (for clients that send ``Accept-Encoding: gzip``) on the page, its static files, the docs and the
    large ``GET /model`` and ``GET /groups`` documents; the small per-patient answers are left as they are
    (compressing 2 kB of JSON costs the server more than it saves on a local network)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=1024, compresslevel=6)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if compressed(scope):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def compressed(scope: Scope) -> bool:
    """Whether the request's answer is gzipped (when the client accepts it): a GET of the page, its files, the docs
    or the large documents."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    path: str = scope.get("path", "")
    return path in COMPRESSED_PATHS or path.startswith("/static/")


_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="/static/vendor/favicon.png">
{head}
</head>
<body>
<noscript>This page needs JavaScript; the OpenAPI document is <a href="{openapi}">{openapi}</a>.</noscript>
{body}
</body>
</html>
"""


@cache
def _page(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@router.get("/")
async def index() -> HTMLResponse:
    """The clinician's page."""
    return HTMLResponse(_page("index.html"))


def install_pages(app: FastAPI, title: str, openapi_url: str = "/openapi.json") -> None:
    """Add ``/``, ``/docs``, ``/redoc`` and the ``/static`` files to ``app`` (created with docs_url=None)."""
    swagger = _DOCS_PAGE.format(
        title=f"{title} - Swagger UI",
        openapi=openapi_url,
        head='<link rel="stylesheet" href="/static/vendor/swagger-ui.css">\n'
        '<link rel="stylesheet" href="/static/docs/docs.css">\n'
        '<script src="/static/vendor/swagger-ui-bundle.js" defer></script>\n'
        '<script src="/static/docs/swagger-init.js" defer></script>',
        body=f'<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>',
    )
    redoc = _DOCS_PAGE.format(
        title=f"{title} - ReDoc",
        openapi=openapi_url,
        head='<link rel="stylesheet" href="/static/docs/docs.css">\n'
        '<script src="/static/vendor/redoc.standalone.js" defer></script>\n'
        '<script src="/static/docs/redoc-init.js" defer></script>',
        body=f'<div id="redoc" data-openapi-url="{openapi_url}"></div>',
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger)

    oauth2_redirect = _DOCS_PAGE.format(
        title="Swagger UI: OAuth2 Redirect",
        openapi=openapi_url,
        head='<script src="/static/docs/oauth2-redirect.js" defer></script>',
        body="",
    )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return HTMLResponse(oauth2_redirect)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        return HTMLResponse(redoc)

    app.include_router(router)
    # the more specific mount first: /static/vendor/* are fastapi-offline's files, the rest ours
    app.mount("/static/vendor", StaticFiles(directory=VENDOR_DIR), name="vendor")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
