"""The web app in a real browser (headless Chromium from Debian's package, driven by
Playwright) against the running service with real storage: sign in, classify several files
(a non-image and a hostile file name among them), the explanation overlay, a correction,
the review queue by keyboard, images and a delete, a model activated and rolled back, the
stats, sign out; hostile strings render as text and run nothing. Screenshots of every page
at desktop and phone width go to .artifacts/webui/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from imageiq.registry import RegisteredModel
from tests.backends import wait_for
from tests.conftest import Server
from tests.webui.conftest import DESKTOP, PHONE, Watched, make_key, open_page, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HOSTILE = "<img src=x onerror=alert(document.domain)>"
LONG_NAME = HOSTILE + "-" + "very-long-" * 40 + ".png"
WAIT_MS = 60_000


# Every control a screen reader can reach has an accessible name: its text, aria-label,
# aria-labelledby, a <label>, or (images) alt.
UNNAMED_CONTROLS = """() => [...document.querySelectorAll(
  'button, a[href], input:not([type=hidden]), select, textarea, [role=button], [role=switch]'
)].filter(el => !(
  el.getAttribute('aria-label')?.trim() || el.getAttribute('aria-labelledby') ||
  (el.labels && el.labels.length) || el.textContent.trim() || el.getAttribute('title')
)).map(el => el.outerHTML.slice(0, 120))"""


def digit(digits_dir: Path, label: int, i: int = 0) -> bytes:
    return sorted((digits_dir / str(label)).iterdir())[i].read_bytes()


def sign_in(page: Any, server: Server, key: str) -> None:
    page.goto(f"{server.url}/ui/")
    page.wait_for_url(re.compile(r"/ui/signin"))
    page.get_by_test_id("signin-key").fill(key)
    page.get_by_test_id("signin-submit").click()
    page.get_by_test_id("signout").wait_for(state="attached", timeout=WAIT_MS)


def go(page: Any, testid: str) -> None:
    """A nav link; on a phone the menu opens first."""
    toggle = page.get_by_test_id("nav-toggle")
    if toggle.is_visible() and toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    page.get_by_test_id(testid).click()


def assert_clean(watched: Watched, page: Any) -> None:
    assert watched.dialogs == [], watched.dialogs  # an injected alert() would land here
    assert watched.errors == [], watched.errors  # CSP refusals, uncaught errors
    assert page.locator('img[src="x"]').count() == 0  # no hostile markup became an element


def test_root_goes_to_the_app_with_a_strict_policy(ui_server: Server) -> None:
    page = ui_server.get("/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url).endswith("/ui/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    # No page of ours loads anything from another origin, nor runs inline script.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    assert "<script>" not in page.text and "<style" not in page.text
    docs = ui_server.get("/v1/docs").text
    assert not re.search(r"(src|href)=\"(https?:)?//", docs)


def test_sign_in_classify_explain_correct_and_sign_out(
    browser: Any, ui_server: Server, digits_dir: Path
) -> None:
    context, page, watched = open_page(browser, DESKTOP)
    try:
        page.goto(f"{ui_server.url}/ui/")
        page.wait_for_url(re.compile(r"/ui/signin"))
        screenshot(page, "signin-desktop")
        page.get_by_test_id("signin-key").fill("iiq_not-a-key")
        page.get_by_test_id("signin-submit").click()
        page.get_by_test_id("signin-notice").wait_for(timeout=WAIT_MS)
        sign_in(page, ui_server, ui_server.key)
        assert page.evaluate("Object.keys(localStorage).length") == 0
        assert ui_server.key not in page.url and not page.context.cookies()

        page.get_by_test_id("classify-store").check()
        page.get_by_test_id("classify-files").set_input_files(
            [
                {"name": "seven.png", "mimeType": "image/png", "buffer": digit(digits_dir, 7)},
                {"name": LONG_NAME, "mimeType": "image/png", "buffer": digit(digits_dir, 3)},
                {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"},
            ]
        )
        cards = page.get_by_test_id("result-card")
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=result-card]')]"
            ".filter(c => ['done', 'failed'].includes(c.dataset.status)).length === 3",
            timeout=WAIT_MS,
        )
        statuses = {
            cards.nth(i).get_attribute("data-filename"): cards.nth(i).get_attribute("data-status")
            for i in range(3)
        }
        assert statuses == {"seven.png": "done", LONG_NAME: "done", "notes.png": "failed"}
        failed = cards.filter(has=page.get_by_test_id("result-error"))
        assert failed.get_attribute("data-filename") == "notes.png"
        assert failed.get_by_test_id("result-error").inner_text().strip()
        # the hostile name is shown as text
        assert page.get_by_text(HOSTILE, exact=False).count() >= 1

        seven = page.locator('[data-testid=result-card][data-filename="seven.png"]')
        assert seven.get_by_test_id("result-top-label").inner_text() == "7"
        seven.get_by_test_id("explain-toggle").click()
        overlay = seven.get_by_test_id("explain-overlay")
        overlay.wait_for(timeout=WAIT_MS)
        assert (overlay.get_attribute("src") or "").startswith("data:image/png;base64,")
        assert "7" in seven.get_by_test_id("explain-target").inner_text()
        screenshot(page, "classify-desktop")

        # a correction with a hostile new label, through the feedback endpoint
        seven.get_by_test_id("feedback-new-label").check()
        seven.get_by_test_id("feedback-new-label-text").fill(HOSTILE)
        seven.get_by_test_id("feedback-submit").click()
        status = seven.get_by_test_id("feedback-status")
        page.wait_for_function(
            "el => el.dataset.state === 'saved'", arg=status.element_handle(), timeout=WAIT_MS
        )
        images = ui_server.get("/v1/images", params={"label": HOSTILE}).json()["items"]
        assert len(images) == 1
        assert_clean(watched, page)

        page.get_by_test_id("signout").click()
        page.wait_for_url(re.compile(r"/ui/signin"))
        assert page.evaluate("sessionStorage.length") == 0
        page.goto(f"{ui_server.url}/ui/models")
        page.wait_for_url(re.compile(r"/ui/signin"))  # signed out means signed out
    finally:
        context.close()


def test_review_queue_by_keyboard(browser: Any, ui_server: Server, digits_dir: Path) -> None:
    stored = []
    for i in range(4):
        answer = ui_server.post(
            "/v1/classify",
            files={"image": (f"r{i}.png", digit(digits_dir, 5, i + 10))},
            data={"store": "true"},
        )
        assert answer.status_code == 200, answer.text
        stored.append(answer.json()["image"]["id"])
    labeller = make_key(ui_server, ["label"], "labeller")
    context, page, watched = open_page(browser, DESKTOP)
    try:
        sign_in(page, ui_server, labeller)
        assert page.get_by_test_id("nav-models").count() in (0, 1)  # label scope: no admin
        go(page, "nav-review")
        item = page.get_by_test_id("review-item")
        item.wait_for(timeout=WAIT_MS)
        first = item.get_attribute("data-id")
        screenshot(page, "review-desktop")
        # Keys act on the page, not on a focused link or button (Enter there is its click).
        page.evaluate("document.activeElement?.blur()")
        page.keyboard.press("1")  # the top prediction's label
        progress = page.get_by_test_id("review-progress")
        page.wait_for_function(
            "el => /^1 labelled/.test(el.textContent)",
            arg=progress.element_handle(),
            timeout=WAIT_MS,
        )
        detail = ui_server.get(f"/v1/images/{first}").json()
        assert [label["source"] for label in detail["labels"]] == ["user"]
        page.wait_for_function(
            f"() => document.querySelector('[data-testid=review-item]')?.dataset.id !== '{first}'",
            timeout=WAIT_MS,
        )
        page.keyboard.press("Enter")  # confirms the next one's top prediction
        page.wait_for_function(
            "el => /^2 labelled/.test(el.textContent)",
            arg=progress.element_handle(),
            timeout=WAIT_MS,
        )
        assert_clean(watched, page)
    finally:
        context.close()


def test_images_render_hostile_labels_as_text_and_delete(
    browser: Any, ui_server: Server, digits_dir: Path
) -> None:
    answer = ui_server.post(
        "/v1/classify",
        files={"image": ("victim.png", digit(digits_dir, 9, 3))},
        data={"store": "true"},
    )
    image = answer.json()["image"]["id"]
    posted = ui_server.post(
        f"/v1/images/{image}/labels", json={"label": HOSTILE + "x" * 200, "new_label": True}
    )
    assert posted.status_code == 201, posted.text
    context, page, watched = open_page(browser, DESKTOP)
    try:
        sign_in(page, ui_server, ui_server.key)
        go(page, "nav-images")
        row = page.locator(f'[data-testid=image-row][data-id="{image}"]')
        row.wait_for(timeout=WAIT_MS)
        assert HOSTILE in row.inner_text()
        screenshot(page, "images-desktop")
        row.locator("a").first.click()
        page.get_by_test_id("image-detail").wait_for(timeout=WAIT_MS)
        assert HOSTILE in page.get_by_test_id("label-history").inner_text()
        screenshot(page, "image-detail-desktop")
        page.get_by_test_id("image-delete").click()
        page.get_by_test_id("confirm-dialog").wait_for()
        page.get_by_test_id("confirm-yes").click()
        page.get_by_test_id("images-notice").wait_for(timeout=WAIT_MS)
        assert ui_server.get(f"/v1/images/{image}").status_code == 404
        assert_clean(watched, page)
    finally:
        context.close()


def test_models_activate_a_version_and_roll_it_back(
    browser: Any,
    ui_server: Server,
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
) -> None:
    context, page, watched = open_page(browser, DESKTOP)
    try:
        sign_in(page, ui_server, ui_server.key)
        go(page, "nav-models")
        row = page.locator(f'[data-testid=version-row][data-version="{newer_model.version}"]')
        row.wait_for(timeout=WAIT_MS)
        row.get_by_test_id("version-details-toggle").click()
        screenshot(page, "models-desktop")
        row.get_by_test_id("activate-button").click()
        page.get_by_test_id("confirm-yes").click()
        notice = page.get_by_test_id("model-notice")
        notice.wait_for(timeout=WAIT_MS)
        assert newer_model.version in notice.inner_text()
        assert ui_server.get("/v1/models").json()["active"] == newer_model.tag
        notice.get_by_test_id("rollback-button").click()
        page.get_by_test_id("confirm-yes").click()
        wait_for(
            lambda: ui_server.get("/v1/models").json()["active"] == digits_model.tag,
            timeout=WAIT_MS / 1000,
            what="the previous version active again",
        )
        page.wait_for_function(  # and the app says so
            "v => document.querySelector('[data-testid=model-notice]')?.textContent"
            ".includes('Rolled back: ' + v)",
            arg=f"{digits_model.name} serves {digits_model.version} again",
            timeout=WAIT_MS,
        )
        assert_clean(watched, page)
    finally:
        context.close()


def test_stats_charts(browser: Any, ui_server: Server) -> None:
    context, page, watched = open_page(browser, DESKTOP)
    try:
        sign_in(page, ui_server, ui_server.key)
        go(page, "nav-stats")
        for chart in ("chart-per-day", "chart-labels", "chart-confidence", "chart-agreement"):
            page.get_by_test_id(chart).wait_for(timeout=WAIT_MS)
        assert page.locator("[data-testid=chart-per-day] svg").count() >= 1
        screenshot(page, "stats-desktop")
        assert_clean(watched, page)
    finally:
        context.close()


def test_a_classify_key_sees_only_what_it_may_use(browser: Any, ui_server: Server) -> None:
    client = make_key(ui_server, ["classify"], "client")
    context, page, watched = open_page(browser, DESKTOP)
    try:
        sign_in(page, ui_server, client)
        assert page.get_by_test_id("nav-classify").count() == 1
        for hidden in ("nav-review", "nav-images", "nav-stats"):
            assert page.get_by_test_id(hidden).count() == 0, hidden
        page.goto(f"{ui_server.url}/ui/review")
        page.get_by_test_id("scope-missing").wait_for(timeout=WAIT_MS)
        assert_clean(watched, page)
    finally:
        context.close()


@pytest.mark.parametrize(
    "path", ["signin", "", "review", "images", "models", "stats"], ids=lambda p: p or "classify"
)
def test_every_page_fits_a_phone(browser: Any, ui_server: Server, path: str) -> None:
    """390 px wide: nothing wider than the screen (tables scroll inside their box)."""
    context, page, watched = open_page(browser, PHONE)
    try:
        if path != "signin":
            sign_in(page, ui_server, ui_server.key)
        page.goto(f"{ui_server.url}/ui/{path}")
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"/ui/{path} is {width} px wide"
        assert page.evaluate(UNNAMED_CONTROLS) == [], f"/ui/{path}: controls without a name"
        screenshot(page, f"{path or 'classify'}-phone")
        assert_clean(watched, page)
    finally:
        context.close()
