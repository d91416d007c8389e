"""The web app's files and the browser-facing headers: ``/ui`` (the React app that
``web/`` builds into ``bentos/webui``), ``/`` sent there, ``/v1/docs`` on local assets, and
the security headers on every answer.

No page of ours loads anything from another origin: the app is built with its assets, the
OpenAPI page uses the Swagger UI files BentoML ships (``/static_content``) instead of a CDN,
and BentoML's own index page (which loads Google Tag Manager) is never shown.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentos.http import error_response
from imageiq import errors

UI_PATH = "/ui"
# Where `npm run build` (web/vite.config.ts) writes the app; the bento includes it.
UI_DIR = Path(__file__).resolve().parent / "webui"

# The app's pages: scripts, styles and fonts from this origin only, images also from the
# blob: URLs of previews and stored images (fetched with the key) and the data: URLs of the
# explanation heat maps; no inline script, no framing, no plug-ins, no <base>.
APP_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)
# Everything else (JSON, image bytes): nothing may run or be embedded.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
_HTML_PATHS = (UI_PATH, "/v1/docs")


def is_built(directory: Path = UI_DIR) -> bool:
    return (directory / "index.html").is_file()


class SecurityHeaders:
    """Service-level ASGI middleware: ``GET /`` and ``/ui`` answer a redirect to ``/ui/``
    (BentoML's index page is never shown); every answer
    gets ``nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and a
    Content-Security-Policy (the app's on its pages, "nothing" on the rest)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in ("/", UI_PATH) and scope.get("method") in ("GET", "HEAD"):
            redirect = RedirectResponse(f"{UI_PATH}/", status_code=307)
            await redirect(scope, receive, self._wrap(send, path))
            return
        await self.app(scope, receive, self._wrap(send, path))

    @staticmethod
    def _wrap(send: Send, path: str) -> Send:
        html = any(path == p or path.startswith(p + "/") for p in _HTML_PATHS)
        wanted = {**_HEADERS, "content-security-policy": APP_CSP if html else API_CSP}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in wanted.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        return with_headers


class AppFiles(StaticFiles):
    """The built app: its files, and ``index.html`` for every other page path (the app
    routes on the client, so ``/ui/images/abc`` loads the same page). Hashed assets are
    cached for a year, the page itself revalidated each time."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path in ("", "."):
            path = "index.html"
        try:
            response = await super().get_response(path, scope)
        except StarletteHTTPException as e:
            last = path.rsplit("/", 1)[-1]
            if e.status_code != 404 or "." in last:  # a missing asset stays a 404
                raise
            response = FileResponse(Path(str(self.directory)) / "index.html")
        immutable = path.startswith("assets/") and response.status_code == 200
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if immutable else "no-cache"
        )
        return response


class UiApp:
    """``/ui/...``: the built app, or a 404 that says how to build it."""

    def __init__(self, directory: Path = UI_DIR) -> None:
        self.directory = directory
        self._files: AppFiles | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not is_built(self.directory):
            error: errors.ImageIQError = errors.NotFound(
                "The web app is not built into this server: run `make web` (npm) before "
                "serving, or use the bento or its container, which include it."
            )
            await error_response(error)(scope, receive, send)
            return
        if self._files is None:
            self._files = AppFiles(directory=self.directory, check_dir=False)
        try:
            await self._files(scope, receive, send)
        except StarletteHTTPException as e:
            path = scope.get("path", "")
            if e.status_code == 405:
                error = errors.MethodNotAllowed(
                    f"{scope.get('method')} is not allowed on {path!r}.",
                    details={"allowed_methods": ["GET", "HEAD"]},
                )
            else:
                error = errors.NotFound(f"No file {path!r} in the web app.")
            await error_response(error)(scope, receive, send)


# The OpenAPI page on BentoML's own copy of Swagger UI (no CDN, no inline script).
_DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ImageIQ API</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script src="/v1/docs/init.js"></script>
</body>
</html>
"""
_DOCS_INIT = """SwaggerUIBundle({
  url: "/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
});
"""


def docs_router() -> APIRouter:
    """``GET /v1/docs`` (and its script), replacing FastAPI's page, which loads Swagger UI
    from a CDN and starts it with an inline script."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_HTML)

    @router.get("/docs/init.js")
    async def docs_init() -> PlainTextResponse:
        return PlainTextResponse(_DOCS_INIT, media_type="text/javascript")

    return router
