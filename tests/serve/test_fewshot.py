"""The inspection service in the few-normal-shot mode: ``serve --reference DIR`` scores with the
references, and /v1/model and the page say that references are in use and how many."""

import copy
import io
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from s2swclip.cli import build_parser
from s2swclip.cli.serve import build_serve_app
from s2swclip.data.images import preprocess
from s2swclip.serve.app import create_app

from .serve_helpers import png_bytes


def _write_refs(folder, n):
    folder.mkdir()
    for i in range(n):
        (folder / f"good_{i}.png").write_bytes(png_bytes(80, 64, seed=100 + i))
    return folder


def test_serve_with_references(tmp_path):
    refs = _write_refs(tmp_path / "good", 3)
    args = build_parser().parse_args([
        "serve", "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "112",
        "--reference", str(refs), "--shots", "2", "--few-shot-weight", "1"])
    app = build_serve_app(args)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        m = client.get("/v1/model").json()
        assert m["references"]["count"] == 2 and m["references"]["few_shot_weight"] == 1.0
        assert m["references"]["layers"] == [6, 12, 18, 24] and m["references"]["stream"] == "plain"
        assert m["references"]["bank_bytes"] == 4 * 2 * 8 * 8 * 768 * 4
        assert m["untrained_prompts"] is False  # references only: the prompts play no part
        files = [("files", ("good_0.png", png_bytes(80, 64, seed=100), "image/png")),   # a reference
                 ("files", ("good_2.png", png_bytes(80, 64, seed=102), "image/png")),   # not one
                 ("files", ("other.png", png_bytes(80, 64, seed=7), "image/png"))]
        rows = client.post("/v1/predict", files=files).json()["results"]
        assert rows[0]["score"] < 1e-6
        assert rows[1]["score"] > 0.05 and rows[2]["score"] > 0.05


def test_model_info_without_and_with_references(tiny_detector):
    det = copy.deepcopy(tiny_detector)
    with TestClient(create_app(det), base_url="http://127.0.0.1") as client:
        m = client.get("/v1/model").json()
        assert m["references"] is None and m["untrained_prompts"] is True
    img = Image.open(io.BytesIO(png_bytes(60, 40, seed=3)))
    det.set_references(torch.from_numpy(preprocess(img, 224))[None])
    with TestClient(create_app(det), base_url="http://127.0.0.1") as client:
        m = client.get("/v1/model").json()
        assert m["references"]["count"] == 1 and m["references"]["few_shot_weight"] == 0.5
        assert m["untrained_prompts"] is True  # weight 0.5: the untrained prompts still count
        r = client.post("/v1/predict", files=[("files", ("a.png", png_bytes(60, 40, seed=3), "image/png"))])
        assert r.status_code == 200 and 0 <= r.json()["results"][0]["score"] <= 1


@pytest.mark.browser
def test_page_shows_the_references(tiny_detector):
    from .background import BackgroundServer
    from .test_browser import _require_browser, chromium

    _require_browser()  # before the bank is built

    det = copy.deepcopy(tiny_detector)
    rng = np.random.default_rng(0)
    det.set_references(torch.from_numpy(rng.normal(size=(3, 3, 224, 224)).astype(np.float32)))
    with BackgroundServer(create_app(det)) as url, chromium() as browser:
        page = browser.new_page()
        page.goto(url + "/", wait_until="load")
        page.wait_for_selector("#model-info:has-text('S2SW-Tiny-24L')")
        end = time.monotonic() + 20
        while "few-shot" not in page.inner_text("#model-info"):
            assert time.monotonic() < end
            page.wait_for_timeout(100)
        assert "few-shot: 3 reference images, weight 0.5" in page.inner_text("#model-info")
