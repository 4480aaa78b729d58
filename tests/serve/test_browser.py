"""The inspection page in a real browser: Debian's chromium driven by playwright, headless.

Needs /usr/bin/chromium and the ``playwright`` package (``scripts/install_browser_deps.sh VENV``;
no ``playwright install`` download). Skips with the reason when either is missing.
Set ``S2SW_SERVE_SCREENSHOT=PATH`` to keep the screenshot somewhere else than the test's tmp dir.
"""

import contextlib
import csv
import io
import os
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: run scripts/install_browser_deps.sh .venv (installs Debian's chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("python package 'playwright' not installed: run scripts/install_browser_deps.sh .venv")


@contextlib.contextmanager
def chromium():
    """Headless chromium (skips the test when it or playwright is missing); closed on exit."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                     chromium_sandbox=False)
        try:
            yield browser
        finally:
            browser.close()


def part_image(seed, defect):
    """A synthetic 'machined part' (textured disc on a gradient), optionally with a scratch."""
    rng = np.random.default_rng(seed)
    w, h = 320, 240
    y, x = np.mgrid[0:h, 0:w]
    base = 70 + 60 * x / w + rng.normal(0, 6, (h, w))
    img = Image.fromarray(np.clip(np.stack([base, base * 0.95, base * 0.9], -1), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((70, 30, 250, 210), fill=(176, 172, 160), outline=(90, 88, 84), width=4)
    d.ellipse((135, 95, 185, 145), fill=(60, 60, 64))
    if defect:
        d.line((95, 70, 170, 120), fill=(40, 25, 20), width=5)
        d.ellipse((200, 150, 222, 170), fill=(150, 60, 30))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server_url(tiny_detector):
    from s2swclip.serve.app import create_app

    from .background import BackgroundServer

    app = create_app(tiny_detector, batch_wait_ms=20)
    with BackgroundServer(app) as url:
        yield url


def test_page_scores_two_images_and_follows_the_slider(server_url, tmp_path):
    shot = os.environ.get("S2SW_SERVE_SCREENSHOT") or str(tmp_path / "serve.png")
    with chromium() as browser:
        # the page's strict CSP stays on: checks are polled from Python, since playwright's
        # wait_for_function would need the page to allow eval
        page = browser.new_page(viewport={"width": 1200, "height": 820}, accept_downloads=True)

        def wait_until(check, timeout_s=20.0):
            end = time.monotonic() + timeout_s
            while not check():
                assert time.monotonic() < end, "timed out waiting for the page"
                page.wait_for_timeout(100)

        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                and not m.text.startswith("Failed to load resource") else None)  # 422 is expected
        page.goto(server_url + "/", wait_until="load")
        page.wait_for_selector("#model-info:has-text('S2SW-Tiny-24L')")

        page.set_input_files("#file-input", files=[
            {"name": "bracket_ok.png", "mimeType": "image/png", "buffer": part_image(1, False)},
            {"name": "bracket_scratch.png", "mimeType": "image/png", "buffer": part_image(2, True)},
        ])
        wait_until(lambda: page.eval_on_selector_all(
            "img.overlay", "o => o.length === 2 && o.every(i => i.complete && i.naturalWidth > 0)"))
        sizes = page.eval_on_selector_all("img.overlay", "els => els.map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[224, 168], [224, 168]]  # the 320x240 originals' aspect ratio
        # each heatmap's colour bar: centred on the slider's threshold (0.5) sent with the upload
        bars = page.eval_on_selector_all(".card .cbar", "els => els.map(e => [e.hidden, "
                                         "e.querySelector('.cbar-lo').textContent, e.querySelector('.cbar-t')"
                                         ".textContent, e.querySelector('.cbar-hi').textContent])")
        assert bars == [[False, "0.000", "T 0.500", "1.000"]] * 2
        originals = page.eval_on_selector_all("img.original", "els => els.map(i => i.naturalWidth)")
        assert originals == [320, 320]
        scores = [float(s) for s in page.locator(".card .score").all_inner_texts()]
        assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)

        verdicts = lambda: [v.strip().lower() for v in page.locator(".card .verdict").all_inner_texts()]
        slider = page.locator("#threshold")
        slider.focus()
        page.keyboard.press("Home")  # threshold 0: every score is above it
        assert page.input_value("#threshold-value") == "0.000"
        assert verdicts() == ["anomalous", "anomalous"]
        page.keyboard.press("End")  # threshold 1: none is above it
        assert page.input_value("#threshold-value") == "1.000"
        assert verdicts() == ["normal", "normal"]
        mid = (scores[0] + scores[1]) / 2  # between the two: one of each
        page.fill("#threshold-value", f"{mid:.6f}")
        expected = ["anomalous" if s > mid else "normal" for s in scores]
        assert verdicts() == expected
        if abs(scores[0] - scores[1]) > 2e-3:
            assert sorted(expected) == ["anomalous", "normal"]
        assert "2 images" in page.inner_text("#summary")

        with page.expect_download() as dl:
            page.click("#csv-button")
        text = open(dl.value.path(), encoding="utf-8").read()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["file"] for r in rows] == ["bracket_ok.png", "bracket_scratch.png"]
        assert [r["verdict"] for r in rows] == expected
        assert [round(float(r["score"]), 4) for r in rows] == scores

        # a file dropped on the drop zone is uploaded too; a non-image gets an error card
        dt = page.evaluate_handle(
            "() => { const d = new DataTransfer();"
            " d.items.add(new File(['these are notes'], 'notes.txt', {type: 'text/plain'})); return d; }")
        page.dispatch_event("#dropzone", "drop", {"dataTransfer": dt})
        page.wait_for_selector(".card.failed .detail:has-text('not an image')", timeout=10000)
        assert verdicts() == expected + ["error"]
        assert "1 failed" in page.inner_text("#summary")

        page.mouse.move(0, 0)
        os.makedirs(os.path.dirname(os.path.abspath(shot)), exist_ok=True)
        page.screenshot(path=shot, full_page=True)
        assert not errors, errors
    assert os.path.getsize(shot) > 10_000


def test_page_asks_for_the_token_and_then_scores(tiny_detector):
    """A server started with a token: the page shows the token field instead of the model, and
    once the token is entered it loads the model information and scores an upload."""
    _require_browser()  # before the server is built

    from s2swclip.serve.app import create_app
    from s2swclip.serve.security import SecuritySettings

    from .background import BackgroundServer

    app = create_app(tiny_detector, batch_wait_ms=5, security=SecuritySettings(token="s3cret-token"))
    with BackgroundServer(app) as url, chromium() as browser:
        page = browser.new_page()
        page.goto(url + "/", wait_until="load")
        page.wait_for_selector("#token-form:not([hidden])")
        assert "needs an access token" in page.inner_text("#model-info")
        page.fill("#token-input", "s3cret-token")
        page.click("#token-form button")
        page.wait_for_selector("#model-info:has-text('S2SW-Tiny-24L')")
        assert page.is_hidden("#token-form")
        page.set_input_files("#file-input", files=[
            {"name": "part.png", "mimeType": "image/png", "buffer": part_image(3, True)}])
        page.wait_for_selector(".card .score:not(:has-text('–'))", timeout=20000)
        assert 0.0 < float(page.locator(".card .score").inner_text()) < 1.0
