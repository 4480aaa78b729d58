"""Each result of ``POST /v1/predict`` carries the fields of a ``predict`` row with the same values
(the service and the batch engine run the same pipeline), without and with references."""

import copy

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from s2swclip.data.images import decode_for_model
from s2swclip.inference.local import RESULT_FIELDS, predict_files
from s2swclip.inference.scorers import as_scorer
from s2swclip.serve.app import create_app

from .serve_helpers import png_bytes

FLOATS = ("score", "map_max", "map_mean", "map_frac_above")


@pytest.mark.parametrize("references", [False, True])
def test_service_rows_equal_predict_rows(tiny_detector, tmp_path, references):
    det = copy.deepcopy(tiny_detector)
    images = tmp_path / "images"
    images.mkdir()
    names = [f"{i}.png" for i in range(5)]
    for i, name in enumerate(names):
        (images / name).write_bytes(png_bytes(60 + 7 * i, 40 + 3 * i, seed=20 + i))
    (images / "broken.png").write_bytes(b"not an image")
    names.append("broken.png")
    if references:
        refs = [decode_for_model(png_bytes(64, 48, seed=90 + k), 224).pixels for k in range(2)]
        det.set_references(torch.from_numpy(np.stack(refs)))
        assert det.num_references == 2
    first = predict_files(as_scorer(det), [images], tmp_path / "first", overlays=False, progress=False).rows
    threshold = float(np.median([r["score"] for r in first if r["score"] is not None]))  # both decisions occur
    rows = predict_files(as_scorer(det), [images], tmp_path / "out", threshold=threshold, overlays=False,
                         progress=False).rows
    want = {r["name"]: r for r in rows}
    with TestClient(create_app(det, threshold=threshold), base_url="http://127.0.0.1") as client:
        files = [("files", (n, (images / n).read_bytes(), "image/png")) for n in names]
        got = client.post("/v1/predict", files=files, params={"overlay": "false"}).json()["results"]
    assert [g["filename"] for g in got] == names
    worst = 0.0
    for g in got:
        w = want[g["filename"]]
        assert set(RESULT_FIELDS) <= set(g)
        assert g["name"] == g["path"] == g["filename"] and g["overlay"] is None
        for f in RESULT_FIELDS:
            if f in ("path", "name", "overlay", "error"):
                continue
            if f in FLOATS and w[f] is not None:
                worst = max(worst, abs(g[f] - w[f]))
            else:
                assert g[f] == w[f], (f, g[f], w[f])
    scored = [g for g in got if g["ok"]]
    assert len(scored) == 5 and got[-1]["error_code"] == "not_an_image"
    assert sum(g["anomalous"] for g in scored) == 2  # above the median of five
    assert all(g["map_frac_above"] is not None and g["map_max"] > g["map_mean"] > 0 for g in scored)
    # one computation on the same pixels, batched differently: float32 rounding only
    assert worst <= 1e-6, worst
