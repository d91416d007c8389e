"""The browser tests' fixtures: the service with the built web app on real PostgreSQL, Redis
and S3 (moto), and headless Chromium from Debian's `chromium` package driven by Playwright
(no browser download). Every page records its console errors, CSP refusals and dialogs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bentos.webui import UI_DIR, is_built
from imageiq.registry import RegisteredModel
from tests.backends import Stack
from tests.conftest import ROOT, Server, running_server

CHROMIUM = Path("/usr/bin/chromium")
# Screenshots of every page at both widths (make test writes them; docs/images/ holds a set).
ARTIFACTS = ROOT / ".artifacts" / "webui"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def ui_stack() -> Iterator[Stack]:
    running = Stack()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def ui_server(
    ui_stack: Stack,
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    if not is_built(UI_DIR):
        pytest.fail(f"the web app is not built in {UI_DIR}: run `make web` (make test does)")
    log = tmp_path_factory.mktemp("webui") / "server.log"
    env = {
        **ui_stack.env(),
        "IMAGEIQ_MODELS": f"{digits_model.tag},{species_model.name}",
        "IMAGEIQ_RELOAD_INTERVAL_S": "1",
    }
    with running_server(digits_model, log, env) as server:
        yield server


def make_key(server: Server, scopes: list[str], name: str) -> str:
    from imageiq.db.engine import make_engine
    from imageiq.keys import create_key

    engine = make_engine(server.env["IMAGEIQ_DATABASE_URL"])
    try:
        pepper = server.env.get("IMAGEIQ_API_KEY_PEPPER", "").encode()
        key, _ = create_key(engine, name=name, scopes=scopes, pepper=pepper)
    finally:
        engine.dispose()
    return key


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's `chromium` package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@dataclass
class Watched:
    """What a page said that a test must see empty: console errors (apart from the
    network log of a refused request, which the app shows itself), CSP refusals, dialogs
    (an injected `alert`) and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def on_console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


def open_page(browser: Any, viewport: dict[str, int]) -> tuple[Any, Any, Watched]:
    context = browser.new_context(viewport=viewport, service_workers="block")
    page = context.new_page()
    watched = Watched()
    page.on("console", watched.on_console)
    page.on("dialog", watched.on_dialog)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    return context, page, watched


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
