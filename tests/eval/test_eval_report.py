"""Report dict, Markdown, JSON and CSV files."""

import csv
import json
import os

import pytest

from s2swclip.errors import S2SWError
from s2swclip.eval.report import (
    METRIC_KEYS,
    build_report,
    format_markdown,
    load_report,
    to_csv,
    write_report,
)


def metrics(base, pixel=True):
    out = {k: base + 0.01 * i for i, k in enumerate(METRIC_KEYS)}
    if not pixel:
        out.update({k: None for k in METRIC_KEYS if k.startswith("pixel")})
    return out


@pytest.fixture
def report():
    return build_report(
        "mvtec",
        {"bottle": metrics(0.90), "cable": metrics(0.80), "headct": metrics(0.70, pixel=False)},
        aupro_method="grid200",
    )


def test_build_report_shape_and_means(report):
    assert list(report) == ["dataset", "aupro_method", "classes", "mean"]
    assert report["dataset"] == "mvtec" and report["aupro_method"] == "grid200"
    assert list(report["classes"]) == ["bottle", "cable", "headct"]
    for m in list(report["classes"].values()) + [report["mean"]]:
        assert tuple(m) == METRIC_KEYS
    assert report["mean"]["image_auroc"] == pytest.approx((0.90 + 0.80 + 0.70) / 3)
    # pixel means over the classes where they are defined
    assert report["mean"]["pixel_aupro"] == pytest.approx((0.96 + 0.86) / 2)
    assert report["classes"]["headct"]["pixel_auroc"] is None


def test_build_report_validation():
    with pytest.raises(S2SWError, match="outside"):
        build_report("d", {"a": {"image_auroc": 1.5}})
    with pytest.raises(S2SWError, match="unknown metric"):
        build_report("d", {"a": {"image_auc": 0.5}})
    with pytest.raises(S2SWError, match="unknown AUPRO"):
        build_report("d", {"a": metrics(0.5)}, aupro_method="x")
    with pytest.raises(S2SWError, match="no classes"):
        build_report("d", {})
    with pytest.warns(UserWarning, match="NaN"):
        r = build_report("d", {"a": {"image_auroc": float("nan"), "image_ap": 0.5}})
    assert r["classes"]["a"]["image_auroc"] is None and r["mean"]["image_auroc"] is None
    assert r["mean"]["pixel_auroc"] is None


def test_markdown(report):
    md = format_markdown(report)
    lines = md.strip().splitlines()
    assert "mvtec" in lines[0] and "grid200" in lines[0] and "%" in lines[0]
    table = [l for l in lines if l.startswith("|")]
    assert len(table) == 2 + 3 + 1  # header, separator, 3 classes, mean
    assert "I-AUROC" in table[0] and "P-AUPRO" in table[0]
    bottle = [c.strip() for c in table[2].strip("|").split("|")]
    assert bottle == ["bottle", "90.0", "91.0", "92.0", "93.0", "94.0", "95.0", "96.0"]
    headct = [c.strip() for c in table[4].strip("|").split("|")]
    assert headct[4:] == ["n/a"] * 4
    mean = [c.strip() for c in table[5].strip("|").split("|")]
    assert mean[0] == "**mean**" and mean[1] == "80.0" and mean[7] == "91.0*"
    assert "defined" in lines[-1]
    plain = format_markdown(report, percent=False)
    assert "0.900" in plain and "[0, 1]" in plain.splitlines()[0]
    exact = build_report("visa", {"pcb1": metrics(0.5)})
    assert "exact" in format_markdown(exact).splitlines()[0]


def test_write_and_load(tmp_path, report):
    out = tmp_path / "nested" / "run"
    paths = write_report(report, str(out))
    assert sorted(os.listdir(out)) == ["report.csv", "report.json"]  # no temp files left
    data = json.loads((out / "report.json").read_text())
    assert data == report
    assert set(data) == {"dataset", "aupro_method", "classes", "mean"}
    assert data["classes"]["headct"]["pixel_ap"] is None
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["bottle", "cable", "headct", "mean"]
    assert list(rows[0]) == ["dataset", "class", *METRIC_KEYS, "aupro_method"]
    assert float(rows[0]["image_auroc"]) == 0.90
    assert rows[2]["pixel_auroc"] == "" and rows[3]["aupro_method"] == "grid200"
    for r in rows:  # every cell is the report's number, written exactly
        values = report["mean"] if r["class"] == "mean" else report["classes"][r["class"]]
        assert [float(r[k]) if r[k] else None for k in METRIC_KEYS] == [values[k] for k in METRIC_KEYS]
    assert load_report(paths["json"]) == report
    assert to_csv(report) == (out / "report.csv").read_text()
    # rewriting replaces the files in place
    write_report(build_report("mvtec", {"bottle": metrics(0.5)}), str(out))
    assert list(json.loads((out / "report.json").read_text())["classes"]) == ["bottle"]


def test_load_errors(tmp_path):
    with pytest.raises(S2SWError, match="not found"):
        load_report(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(S2SWError, match="cannot read"):
        load_report(str(bad))
    bad.write_text('{"dataset": "x"}')
    with pytest.raises(S2SWError, match="report has no"):
        load_report(str(bad))


def test_end_to_end_with_compute_metrics(tmp_path):
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from s2swclip.metrics import compute_metrics

    rng = np.random.default_rng(0)
    per_class = {}
    for cls in ("a", "b"):
        masks = np.zeros((4, 16, 16), bool)
        masks[1, 3:8, 4:9] = masks[3, 10:14, 2:6] = True
        maps = (rng.random((4, 16, 16)) + 0.5 * masks).astype(np.float32)
        labels, scores = masks.reshape(4, -1).any(1), maps.reshape(4, -1).mean(1)
        per_class[cls] = compute_metrics(labels, scores, masks, maps)
        assert per_class[cls]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
        assert per_class[cls]["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    rep = build_report("toy", per_class)
    write_report(rep, str(tmp_path))
    assert json.loads((tmp_path / "report.json").read_text()) == rep
    assert rep["aupro_method"] == "exact"
    for k in METRIC_KEYS:
        assert rep["mean"][k] == pytest.approx((per_class["a"][k] + per_class["b"][k]) / 2, abs=1e-12)
