"""A manifest entry whose URI cannot be used is a row with its error, never the end of the run;
a store that cannot be used is tried once and reported by one warning per run (local engine here;
the Ray engine in test_ray_engine.py)."""

import logging

import numpy as np
import pytest
from PIL import Image

from s2swclip.errors import S2SWError
from s2swclip.inference import uris
from s2swclip.inference.local import predict_files

pytest.importorskip("pyarrow")

UNREACHABLE = "hdfs://127.0.0.1:1"  # no Hadoop client here, nothing listening there elsewhere


class MeanScorer:
    """Scores an image by its mean pixel (no model needed)."""

    image_size = 32
    map_scale = 1.0

    def score(self, pixels):
        return pixels.mean(axis=(1, 2, 3)), np.zeros((len(pixels), 32, 32), np.float32)

    def describe(self):
        return {"backbone": "mean"}


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name)
    lines = ["a.png", "foo://bucket/x.png", f"{UNREACHABLE}/d/1.png", "foo://bucket/y.png",
             f"{UNREACHABLE}/d/2.png", f"{UNREACHABLE}/d/3.png", f"file://{tmp_path}/b.png", "file:///nowhere/c.png"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def _store_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "s2swclip.inference.uris"]


def test_unusable_uris_are_rows_and_each_store_is_reported_once(manifest, tmp_path, caplog, monkeypatch):
    probes = []
    real_probe = uris._probe
    monkeypatch.setattr(uris, "_probe", lambda uri: probes.append(uri) or real_probe(uri))
    with caplog.at_level(logging.WARNING, logger="s2swclip"):
        s = predict_files(MeanScorer(), [manifest], tmp_path / "out", overlays=False, progress=False)
    rows = {r["path"]: r for r in s.rows}
    assert len(rows) == 8 and (s.n_scored, s.n_failed) == (2, 6)
    assert rows[str(tmp_path / "a.png")]["score"] is not None and rows[f"file://{tmp_path}/b.png"]["score"] is not None
    for p in ("foo://bucket/x.png", "foo://bucket/y.png"):
        assert rows[p]["error_code"] == "unsupported_uri" and rows[p]["score"] is None
        assert rows[p]["error"].startswith(f"{p}: unsupported URI scheme foo://")
    for i in (1, 2, 3):
        p = f"{UNREACHABLE}/d/{i}.png"
        assert rows[p]["error_code"] == "unreadable" and rows[p]["error"].startswith(f"{p}: ")
    assert rows["file:///nowhere/c.png"]["error_code"] == "missing"  # its store answered
    # each unusable store: one warning for the run, no per-row "skipped" line for its entries
    warned = _store_warnings(caplog)
    assert len(warned) == 2
    assert any("foo://bucket/" in w and "its 2 input(s)" in w and "unsupported_uri" in w for w in warned)
    assert any(UNREACHABLE in w and "its 3 input(s)" in w and "unreadable" in w for w in warned)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 1 and "nowhere/c.png" in skipped[0]
    # tried once per store: the unsupported scheme once, the unreachable store on two entries, the
    # local one until it answered (a missing file is an answer)
    assert sorted(probes) == sorted(["foo://bucket/x.png", f"{UNREACHABLE}/d/1.png", f"{UNREACHABLE}/d/2.png",
                                     "file:///nowhere/c.png"])
    assert (tmp_path / "out" / "results.csv").read_text().count("unsupported_uri") == 2


def test_a_store_that_answers_for_one_entry_is_usable(tmp_path, monkeypatch):
    """One entry the store refuses (permissions) does not make the whole store unreachable."""
    answers = iter([uris.ImageError("unreadable", "denied"), None])
    monkeypatch.setattr(uris, "_probe", lambda uri: next(answers))
    assert uris.unreachable_stores(["s3://b/1.png", "s3://b/2.png", "s3://b/3.png"]) == {}


def test_a_uri_named_on_the_command_line_is_still_an_error():
    with pytest.raises(S2SWError, match="unsupported URI scheme foo://"):
        uris.list_uri("foo://bucket/folder/")


CHILD = r"""
import json, logging, sys
import numpy as np
from s2swclip.inference.local import predict_files
sys.path.insert(0, sys.argv[3])
from test_unusable_uris import MeanScorer
records = []
handler = logging.Handler()
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger("s2swclip").addHandler(handler)
s = predict_files(MeanScorer(), [sys.argv[1]], sys.argv[2], overlays=False, progress=False)
print(json.dumps({"rows": s.rows, "warnings": records}))
"""


@pytest.mark.slow
def test_an_unreachable_s3_store_is_tried_once(tmp_path):
    """An S3 endpoint where nothing listens (each attempt takes seconds of retries): one warning,
    two probes, every entry a row; in a child process (S3 settings come from its environment)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    keys = [f"s3://s2sw-unreachable/{i}.png" for i in range(6)]
    (tmp_path / "list.txt").write_text("\n".join(["a.png", *keys]) + "\n")
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    here = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "list.txt"), str(tmp_path / "out"), here],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["path"]: r for r in out["rows"]}
    assert rows[str(tmp_path / "a.png")]["score"] is not None
    assert [rows[k]["error_code"] for k in keys] == ["unreadable"] * 6
    assert all(rows[k]["error"].startswith(f"{k}: cannot reach s3://s2sw-unreachable/") for k in keys)
    assert len(out["warnings"]) == 1 and "its 6 input(s) are rows with error_code unreadable" in out["warnings"][0]
