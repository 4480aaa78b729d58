"""The inspection service's REST API through the ASGI test client (no network, no disk)."""

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from .serve_helpers import FakeDetector, png_bytes
from s2swclip.data.dataset import preprocess_image
from s2swclip.serve.app import create_app
from s2swclip.serve.storage import sanitise_name
from s2swclip.serve.batcher import BatcherClosed, MicroBatcher, QueueFull


def client_for(app):
    """A test client whose requests name a loopback Host (the service refuses other names)."""
    return TestClient(app, base_url="http://127.0.0.1")


def files_field(*named):
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


@pytest.fixture(scope="module")
def tiny_client(tiny_detector):
    app = create_app(tiny_detector, threshold=0.5, batch_wait_ms=5)
    with client_for(app) as client:
        yield client


def decode_overlay(row):
    return Image.open(io.BytesIO(base64.b64decode(row["overlay_png"])))


# ------------------------------------------------------------------------- service endpoints
def test_health_and_model(tiny_client):
    h = tiny_client.get("/v1/health")
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "ok" and body["queue"]["capacity"] == 64
    m = tiny_client.get("/v1/model").json()
    assert m["backbone"] == "S2SW-Tiny-24L"
    assert m["image_size"] == 224 and m["precision"] == "fp32" and m["threshold"] == 0.5
    assert m["prompts"] is None and m["untrained_prompts"] is True
    assert m["limits"]["max_batch"] == 8 and m["save"] is False


def test_openapi_and_docs(tiny_client):
    spec = tiny_client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    assert {"/v1/health", "/v1/model"} <= set(spec["paths"])
    assert tiny_client.get("/docs").status_code == 404  # Swagger UI needs a CDN: off, the schema stays


def test_page_is_served_without_external_assets(tiny_client):
    page = tiny_client.get("/")
    assert page.status_code == 200 and "S2SWCLIP inspection" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/", "/static/app.js", "/static/style.css"):
        r = tiny_client.get(path)
        assert r.status_code == 200
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", r.text), f"external asset in {path}"
        assert "url(http" not in r.text and "@import" not in r.text


# ----------------------------------------------------------------------------------- predict
def test_predict_one_matches_the_detector(tiny_client, tiny_detector):
    data = png_bytes(64, 48, seed=1)
    r = tiny_client.post("/v1/predict", files=files_field(("part.png", data)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_scored"] == 1 and body["n_failed"] == 0 and body["threshold"] == 0.5
    row = body["results"][0]
    assert row["ok"] and row["filename"] == "part.png" and (row["width"], row["height"]) == (64, 48)
    x = preprocess_image(Image.open(io.BytesIO(data)).convert("RGB"), 224)
    expected = float(tiny_detector.predict(x[None]).image_scores[0])
    assert row["score"] == pytest.approx(expected, abs=1e-5)
    assert row["anomalous"] == (row["score"] > 0.5)
    over = decode_overlay(row)
    assert over.format == "PNG" and over.size == (224, 168)  # the original's aspect ratio
    t = row["timing_ms"]
    assert {"decode", "queue", "inference", "batch_size", "overlay", "request_total"} <= set(t)
    assert t["batch_size"] == 1 and t["inference"] > 0


def test_predict_many_with_broken_files(tiny_client):
    good = png_bytes(40, 40, seed=2)
    corrupt = png_bytes(40, 40, seed=3)[:120]  # truncated PNG: header fine, data missing
    jpeg = png_bytes(50, 30, seed=4, fmt="JPEG")
    r = tiny_client.post("/v1/predict", files=files_field(
        ("a.png", good), ("broken.png", corrupt), ("notes.txt", b"hello, not an image"),
        ("c.jpg", jpeg), ("empty.png", b"")))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_scored"] == 2 and body["n_failed"] == 3
    rows = body["results"]
    assert [x["filename"] for x in rows] == ["a.png", "broken.png", "notes.txt", "c.jpg", "empty.png"]
    assert [x["ok"] for x in rows] == [True, False, False, True, False]
    assert rows[1]["error_code"] == "corrupt" and "corrupt" in rows[1]["error"]
    assert rows[2]["error_code"] == "not_an_image" and "not an image" in rows[2]["error"]
    assert rows[4]["error_code"] == "empty"
    assert rows[0]["timing_ms"]["batch_size"] == 2  # the two good files went in one batch
    assert decode_overlay(rows[3]).size == (224, 134)


def test_nothing_scorable_answers_422_with_reasons(tiny_client):
    r = tiny_client.post("/v1/predict", files=files_field(("x.txt", b"plain text")))
    assert r.status_code == 422
    body = r.json()
    assert "no image could be scored" in body["detail"] and "x.txt" in body["detail"]
    assert body["results"][0]["error_code"] == "not_an_image"


def test_threshold_query_overrides_the_decision(tiny_client):
    f = files_field(("a.png", png_bytes(32, 32, seed=5)))
    assert tiny_client.post("/v1/predict?threshold=0", files=f).json()["results"][0]["anomalous"] is True
    assert tiny_client.post("/v1/predict?threshold=1", files=f).json()["results"][0]["anomalous"] is False
    no_overlay = tiny_client.post("/v1/predict?overlay=false", files=f).json()["results"][0]
    assert no_overlay["ok"] and no_overlay["overlay_png"] is None


def test_no_threshold_means_no_decision(fake_detector):
    with client_for(create_app(fake_detector)) as client:
        row = client.post("/v1/predict", files=files_field(("a.png", png_bytes()))).json()["results"][0]
    assert row["ok"] and row["anomalous"] is None


def test_bad_requests_answer_400(tiny_client):
    r = tiny_client.post("/v1/predict", content=b"raw bytes", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]
    r = tiny_client.post("/v1/predict", data={"note": "no file here"})
    assert r.status_code == 400


def test_request_too_large_answers_413(fake_detector):
    app = create_app(fake_detector, max_upload_bytes=20_000)
    with client_for(app) as client:
        big = png_bytes(200, 200, seed=6)  # ~120 kB of noise
        r = client.post("/v1/predict", files=files_field(("big.png", big)))
        assert r.status_code == 413
        assert "limit" in r.json()["detail"] and "--max-upload-mb" in r.json()["detail"]
        # a body without Content-Length (streamed) is cut off at the limit too
        def gen():
            yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"s.png\"\r\n\r\n"
            for _ in range(30):
                yield b"\0" * 1000
            yield b"\r\n--b--\r\n"
        r = client.post("/v1/predict", content=gen(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert client.post("/v1/predict", files=files_field(("ok.png", png_bytes(20, 20)))).status_code == 200


def test_too_many_pixels(fake_detector):
    app = create_app(fake_detector, max_pixels=1000)
    with client_for(app) as client:
        r = client.post("/v1/predict", files=files_field(("huge.png", png_bytes(64, 64))))
        assert r.status_code == 413
        assert "4,096 pixels" in r.json()["detail"] and "max_pixels 1,000" in r.json()["detail"]
        r = client.post("/v1/predict", files=files_field(("small.png", png_bytes(30, 30)), ("huge.png", png_bytes(64, 64))))
        assert r.status_code == 200
        rows = r.json()["results"]
        assert rows[0]["ok"] and rows[1]["error_code"] == "too_many_pixels"


def test_more_files_than_the_queue_answers_413(fake_detector):
    with client_for(create_app(fake_detector, queue_size=2)) as client:
        r = client.post("/v1/predict", files=files_field(*[(f"{i}.png", png_bytes(16, 16, i)) for i in range(3)]))
    assert r.status_code == 413 and "--queue-size" in r.json()["detail"]


def test_model_failure_answers_500():
    det = FakeDetector()
    det.predict = lambda images: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with client_for(create_app(det)) as client:
        r = client.post("/v1/predict", files=files_field(("a.png", png_bytes())))
        assert r.status_code == 500 and "out of memory" in r.json()["detail"]
        assert client.get("/v1/health").json()["last_error"].endswith("out of memory")


# ------------------------------------------------------------------ queueing and micro-batching
async def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _async_client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def test_queue_full_answers_503(gated_detector):
    app = create_app(gated_detector, queue_size=2, batch_wait_ms=0)
    batcher = app.state.batcher

    async def scenario():
        async with _async_client(app) as client:
            post = lambda i: client.post("/v1/predict", files=files_field((f"{i}.png", png_bytes(16, 16, i))))
            first = asyncio.ensure_future(post(0))
            await _wait_for(gated_detector.entered.is_set)      # first image is being scored
            second = asyncio.ensure_future(post(1))
            await _wait_for(lambda: batcher.pending == 2)        # queue (capacity 2) is full
            third = await post(2)
            health = await client.get("/v1/health")
            gated_detector.release()
            return await first, await second, third, health

    first, second, third, health = asyncio.run(scenario())
    assert third.status_code == 503
    assert third.headers["retry-after"] == "1"
    assert "queue is full" in third.json()["detail"] and "retry" in third.json()["detail"]
    assert health.json()["queue"] == {"pending": 2, "capacity": 2}
    assert first.status_code == 200 and second.status_code == 200
    assert batcher.pending == 0 and batcher.rejected == 1
    batcher.close()


def test_concurrent_requests_are_scored_in_one_batch(gated_detector):
    app = create_app(gated_detector, max_batch=8, batch_wait_ms=50)
    batcher = app.state.batcher

    async def scenario():
        async with _async_client(app) as client:
            post = lambda i: client.post("/v1/predict", files=files_field((f"{i}.png", png_bytes(16, 16, i))))
            first = asyncio.ensure_future(post(0))
            await _wait_for(gated_detector.entered.is_set)  # the worker is busy with request 0
            others = [asyncio.ensure_future(post(i)) for i in range(1, 6)]
            await _wait_for(lambda: batcher.pending == 6)  # five more requests are waiting
            gated_detector.release()
            return [await first] + [await o for o in others]

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * 6
    assert gated_detector.batch_sizes == [1, 5]  # 6 requests, 2 predict calls
    sizes = [a.json()["results"][0]["timing_ms"]["batch_size"] for a in answers]
    assert sizes == [1, 5, 5, 5, 5, 5]
    batcher.close()


def test_batches_are_capped_at_max_batch(fake_detector):
    with client_for(create_app(fake_detector, max_batch=3)) as client:
        r = client.post("/v1/predict", files=files_field(*[(f"{i}.png", png_bytes(16, 16, i)) for i in range(7)]))
    assert r.status_code == 200 and r.json()["n_scored"] == 7
    assert fake_detector.batch_sizes == [3, 3, 1]


def test_batcher_close_fails_waiting_items():
    import threading

    gate = threading.Event()
    b = MicroBatcher(lambda xs: [gate.wait(10) and x for x in xs], max_batch=1, max_wait_ms=0, queue_size=3)
    futures = b.submit_many([1, 2, 3])
    with pytest.raises(QueueFull):
        b.submit(4)
    time.sleep(0.05)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(10)
    assert futures[0].result(5)[0] == 1
    for f in futures[1:]:
        with pytest.raises(BatcherClosed):
            f.result(5)
    with pytest.raises(BatcherClosed):
        b.submit(5)
    assert b.pending == 0 and not b.alive


# ---------------------------------------------------------------------------------- disk use
def test_save_writes_only_sanitised_names_under_dir(fake_detector, tmp_path):
    root = tmp_path / "save"
    with client_for(create_app(fake_detector, save_dir=root)) as client:
        assert client.get("/v1/model").json()["save"] is True
        r = client.post("/v1/predict", files=files_field(
            ("../../escape me?.png", png_bytes(20, 20, 1)), ("a/b\\..\\c.JPG", png_bytes(20, 20, 2, fmt="JPEG")),
            ("...", png_bytes(20, 20, 3)), ("bad.txt", b"not an image")))
    assert r.status_code == 200 and r.json()["n_scored"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["save"]  # nothing beside DIR
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    uploads = [w for w in written if w.startswith("uploads/")]
    overlays = [w for w in written if w.startswith("overlays/")]
    assert len(uploads) == 3 and len(overlays) == 3 and "results.jsonl" in written
    assert len(written) == 7
    safe = re.compile(r"^(uploads|overlays)/[0-9T]{15}_[0-9a-f]{8}_\d{2}_[A-Za-z0-9][A-Za-z0-9._-]*\.(png|jpg)$")
    for w in uploads + overlays:
        assert safe.match(w), w
    stems = sorted(w.split("_", 3)[-1] for w in uploads)
    assert stems == ["c.jpg", "escape_me.png", "image.png"]
    lines = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    assert [x["filename"] for x in lines] == ["../../escape me?.png", "a/b\\..\\c.JPG", "..."]
    assert all((root / x["saved"]["upload"]).is_file() for x in lines)


@pytest.mark.parametrize("name,expected", [
    ("../../etc/passwd", "passwd"), ("C:\\x\\y.png", "y"), ("..", "image"), ("", "image"),
    (".hidden.png", "hidden"), ("a b;c$(rm).tif", "a_b_c_rm"), ("ü-ñ.png", "image"), ("x" * 300, "x" * 80),
])
def test_sanitise_name(name, expected):
    assert sanitise_name(name) == expected


_NO_WRITES_SCRIPT = r"""
import os, sys
from fastapi.testclient import TestClient
sys.path.insert(0, sys.argv[1])
from serve.serve_helpers import FakeDetector, png_bytes
from s2swclip.serve.app import create_app

writes, active = [], [False]

def audit(event, args):
    if active[0] and event == "open":
        path, mode, flags = args
        if (mode and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            writes.append(str(path))

sys.addaudithook(audit)
big = png_bytes(700, 700, seed=9)  # > 1 MB: a spooling form parser would hit the disk
assert len(big) > 1_100_000
with TestClient(create_app(FakeDetector()), base_url="http://127.0.0.1") as client:
    client.get("/v1/health")
    active[0] = True
    r = client.post("/v1/predict", files=[("files", ("a.png", big, "image/png")),
                                          ("files", ("b.png", png_bytes(30, 30), "image/png"))])
    active[0] = False
assert r.status_code == 200 and r.json()["n_scored"] == 2, r.text
print("WRITES", writes)
"""


def test_nothing_is_written_without_save(tmp_path):
    """Every file opened for writing while a request is served is recorded by an audit hook, in a
    child process (audit hooks cannot be removed, so they stay out of the test process)."""
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "no_writes.py"
    script.write_text(_NO_WRITES_SCRIPT)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script), tests_dir], cwd=work, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WRITES []" in proc.stdout, proc.stdout
    assert list(work.iterdir()) == []
