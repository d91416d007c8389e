"""The web app's serving (bentos/webui.py) on a stand-in build: its files, the page for every
client-side route, a 404 for a missing asset, the headers, the redirect from ``/`` and the
OpenAPI page on local assets. The real app in a real browser: tests/webui."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from bentos.webui import API_CSP, APP_CSP, SecurityHeaders, UiApp, docs_router

INDEX = '<!doctype html><html lang="en"><script type="module" src="/ui/assets/app-1.js"></script>'


def _app(directory: Path) -> TestClient:
    async def api(_: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def bentoml_index(_: object) -> JSONResponse:  # BentoML's page, with its GTM
        return JSONResponse({"bentoml": "index"})

    app = Starlette(
        routes=[
            Route("/", bentoml_index),
            Route("/v1/models", api),
            Mount("/ui", app=UiApp(directory)),
        ]
    )
    app.add_middleware(SecurityHeaders)
    return TestClient(app, follow_redirects=False)


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX)
    (tmp_path / "assets" / "app-1.js").write_text("console.log(1)")
    return tmp_path


def test_the_app_its_assets_and_every_client_route(built: Path) -> None:
    client = _app(built)
    for path in ("/ui/", "/ui/review", "/ui/images/abc", "/ui/models/digits"):
        page = client.get(path)
        assert page.status_code == 200 and page.text == INDEX, path
        assert page.headers["content-security-policy"] == APP_CSP
        assert page.headers["cache-control"] == "no-cache"
    asset = client.get("/ui/assets/app-1.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    missing = client.get("/ui/assets/app-2.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # Out of the directory: a 404 for a file, the app's page for a page path, never the file.
    assert client.get("/ui/../pyproject.toml").status_code == 404
    escaped = client.get("/ui/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
    assert escaped.text == INDEX
    posted = client.post("/ui/")
    assert posted.status_code == 405 and posted.json()["error"]["code"] == "method_not_allowed"


def test_root_and_ui_go_to_the_app_never_to_bentomls_page(built: Path) -> None:
    client = _app(built)
    for path in ("/", "/ui"):
        moved = client.get(path)
        assert moved.status_code == 307 and moved.headers["location"] == "/ui/", path
        assert moved.headers["x-frame-options"] == "DENY"


def test_every_answer_carries_the_security_headers(built: Path) -> None:
    answer = _app(built).get("/v1/models")
    assert answer.json() == {"ok": True}
    assert answer.headers["content-security-policy"] == API_CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in APP_CSP and "'unsafe-inline'" not in APP_CSP


def test_an_unbuilt_app_says_how_to_build_it(tmp_path: Path) -> None:
    answer = _app(tmp_path / "nothing").get("/ui/")
    assert answer.status_code == 404
    assert "make web" in answer.json()["error"]["message"]


def test_the_openapi_page_loads_nothing_from_another_origin() -> None:
    from fastapi import FastAPI

    api = FastAPI(docs_url=None, redoc_url=None)
    api.include_router(docs_router())
    client = TestClient(api)
    page = client.get("/docs").text
    assert "http://" not in page and "https://" not in page
    assert "<script>" not in page  # no inline script: the start-up is a file
    assert '<script src="/docs/init.js">' not in page and "/v1/docs/init.js" in page
    init = client.get("/docs/init.js")
    assert init.headers["content-type"].startswith("text/javascript")
    assert "/v1/openapi.json" in init.text
