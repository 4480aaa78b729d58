"""The service colours overlays on the request's threshold and says so (the page's colour bar)."""

import pytest
from fastapi.testclient import TestClient

from .serve_helpers import FakeDetector, png_bytes
from s2swclip.errors import S2SWError
from s2swclip.serve.app import create_app


def _heatmaps(app, *queries):
    """The ``heatmap`` of one uploaded image for each query string (one client: the app's
    batcher closes when its client does)."""
    with TestClient(app, base_url="http://127.0.0.1") as client:
        files = [("files", ("a.png", png_bytes(seed=1), "image/png"))]
        return [client.post("/v1/predict" + q, files=files).json()["results"][0]["heatmap"] for q in queries]


def test_overlays_are_centred_on_the_server_or_request_threshold():
    server, request = _heatmaps(create_app(FakeDetector(), threshold=0.7), "", "?threshold=0.25")
    assert server == {"source": "threshold", "lo": pytest.approx(0.4), "hi": 1.0, "threshold": 0.7,
                      "map_scale": 1.0, "unit": "map value"}
    assert (request["lo"], request["hi"], request["threshold"]) == (0.0, 0.5, 0.25)


def test_without_a_threshold_the_whole_range_and_per_image_on_request():
    (h,) = _heatmaps(create_app(FakeDetector()), "")
    assert (h["source"], h["lo"], h["hi"], h["threshold"]) == ("full", 0.0, 1.0, None)
    (h,) = _heatmaps(create_app(FakeDetector(), threshold=0.7, heatmap_scale="image"), "")
    assert (h["source"], h["lo"], h["hi"], h["threshold"]) == ("image", 0.0, 1.0, 0.7)  # the fake map spans 0..1
    (h,) = _heatmaps(create_app(FakeDetector()), "?overlay=false")
    assert h is None
    with TestClient(create_app(FakeDetector(), heatmap_scale="image"), base_url="http://127.0.0.1") as c:
        assert c.get("/v1/model").json()["heatmap_scale"] == "image"
    with pytest.raises(S2SWError, match="^heatmap_scale must be one of fixed, image, got 'per-image'$"):
        create_app(FakeDetector(), heatmap_scale="per-image")
