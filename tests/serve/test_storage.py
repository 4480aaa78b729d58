"""SaveStore: sanitised names inside the folder, atomic writes, and an exact disk cap."""

import json
import os
import threading

import pytest

from .serve_helpers import png_bytes
from s2swclip.errors import S2SWError
from s2swclip.serve import storage
from s2swclip.serve.storage import FORMAT_EXTENSIONS, SaveStore, folder_bytes, sanitise_name

RID = "20260101T000000_0123abcd"


def line_bytes(record, upload, overlay=None):
    """Independent transcription of one results.jsonl line's size."""
    saved = {"upload": upload} if overlay is None else {"upload": upload, "overlay": overlay}
    return len((json.dumps(dict(record, saved=saved)) + "\n").encode("utf-8"))


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_save_writes_bytes_overlay_and_log(tmp_path):
    store = SaveStore(tmp_path / "s")
    data, ov = png_bytes(20, 20, 1), png_bytes(10, 10, 2)
    out = store.save(RID, 3, "../../dir/My Photo!.PNG", "png", data, ov, {"filename": "x", "score": 0.25})
    stem = f"{RID}_03_My_Photo"
    assert out == {"saved": True, "upload": f"uploads/{stem}.png", "overlay": f"overlays/{stem}.png"}
    root = tmp_path / "s"
    assert (root / out["upload"]).read_bytes() == data and (root / out["overlay"]).read_bytes() == ov
    lines = (root / "results.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"filename": "x", "score": 0.25,
                                              "saved": {"upload": out["upload"], "overlay": out["overlay"]}}]
    out2 = store.save(RID, 4, None, "tiff", b"abc", None, {"n": 2})
    assert out2 == {"saved": True, "upload": f"uploads/{RID}_04_image.tif"}
    assert all_files(root) == sorted(["results.jsonl", out["upload"], out["overlay"], out2["upload"]])
    assert store.used_bytes == folder_bytes(root) == (
        len(data) + len(ov) + 3 + line_bytes({"filename": "x", "score": 0.25}, out["upload"], out["overlay"])
        + line_bytes({"n": 2}, out2["upload"]))


@pytest.mark.parametrize("fmt,ext", [("jpeg", ".jpg"), ("mpo", ".jpg"), ("png", ".png"), ("tiff", ".tif"),
                                     ("webp", ".webp"), ("gif", ".gif"), ("", ".bin"), ("xcf", ".bin")])
def test_extension_from_format(tmp_path, fmt, ext):
    out = SaveStore(tmp_path).save(RID, 0, "a.png", fmt, b"x", None, {})
    assert out["upload"] == f"uploads/{RID}_00_a{ext}" and FORMAT_EXTENSIONS.get(fmt, ".bin") == ext


@pytest.mark.parametrize("name,expected", [
    ("../../etc/passwd", "passwd"), ("C:\\x\\y.png", "y"), ("..", "image"), ("", "image"), (None, "image"),
    (".hidden.png", "hidden"), ("a b;c$(rm).tif", "a_b_c_rm"), ("ü-ñ.png", "image"), ("x" * 300, "x" * 80),
    ("a..b.png", "a.b"), ("-_.x.", "x"),
])
def test_sanitise_name(name, expected):
    assert sanitise_name(name) == expected


def test_nothing_is_written_outside_the_folder(tmp_path):
    root = tmp_path / "s"
    store = SaveStore(root)
    for i, name in enumerate(["../../up.png", "/etc/passwd", "..\\..\\win.png", "a/../../b.png"]):
        assert store.save(RID, i, name, "png", b"d", b"o", {})["saved"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    with pytest.raises(ValueError, match="refusing to write outside"):
        store.save("../escape", 0, "a.png", "png", b"d", None, {})
    assert all(f.startswith(("uploads/", "overlays/")) or f == "results.jsonl" for f in all_files(root))


def test_existing_content_is_counted_once_at_start(tmp_path):
    root = tmp_path / "s"
    (root / "uploads").mkdir(parents=True)
    (root / "uploads" / "old.png").write_bytes(b"u" * 700)
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_bytes(b"n" * 300)
    outside = tmp_path / "big.bin"
    outside.write_bytes(b"b" * 50_000)
    os.symlink(outside, root / "notes" / "link.bin")  # a link's target is not the folder's content
    store = SaveStore(root, max_bytes=10_000)
    assert store.used_bytes == 1000


def test_cap_is_exact(tmp_path):
    data, ov, rec = png_bytes(30, 30, 3), png_bytes(12, 12, 4), {"filename": "a.png", "score": 0.5}
    stem = f"{RID}_00_a"
    need = len(data) + len(ov) + line_bytes(rec, f"uploads/{stem}.png", f"overlays/{stem}.png")
    for k, (extra, ok) in enumerate([(-1, False), (0, True)]):
        root = tmp_path / f"s{k}"
        root.mkdir()
        (root / "before.bin").write_bytes(b"p" * 1234)
        store = SaveStore(root, max_bytes=1234 + need + extra)
        out = store.save(RID, 0, "a.png", "png", data, ov, rec)
        assert out["saved"] is ok
        if ok:
            assert folder_bytes(root) == store.used_bytes == 1234 + need == store.max_bytes
            # full to the byte: even a one-byte file with no log record is refused now
            refused = store.save(RID, 1, "b.png", "png", b"x", None, {})
            assert refused["saved"] is False
        else:
            refused = out
            assert all_files(root) == ["before.bin"] and store.used_bytes == 1234
        assert set(refused) == {"saved", "reason"}
        assert refused["reason"].startswith("--save folder is full (")
        assert "raise --save-max-mb or empty" in refused["reason"]


def test_refusal_keeps_earlier_saves(tmp_path):
    root = tmp_path / "s"
    data = b"d" * 5000
    store = SaveStore(root, max_bytes=12_000)
    results = [store.save(RID, i, f"f{i}.png", "png", data, None, {"i": i}) for i in range(4)]
    assert [r["saved"] for r in results] == [True, True, False, False]
    assert all_files(root) == ["results.jsonl", f"uploads/{RID}_00_f0.png", f"uploads/{RID}_01_f1.png"]
    assert [json.loads(x)["i"] for x in (root / "results.jsonl").read_text().splitlines()] == [0, 1]
    used = sum(5000 + line_bytes({"i": i}, f"uploads/{RID}_0{i}_f{i}.png") for i in range(2))
    need = 5000 + line_bytes({"i": 2}, f"uploads/{RID}_02_f2.png")
    assert store.used_bytes == used and used + need > 12_000
    assert results[2]["reason"] == (f"--save folder is full ({used} bytes of 12000 bytes; this file needs "
                                    f"{need} bytes); raise --save-max-mb or empty {root.resolve()}")
    # a fresh store on the same folder counts what is there
    assert SaveStore(root, max_bytes=12_000).used_bytes == folder_bytes(root) == store.used_bytes


def test_concurrent_saves_never_cross_the_cap(tmp_path):
    root = tmp_path / "s"
    data = b"z" * 1000
    rec = {"score": 0.125}
    need = len(data) + line_bytes(rec, f"uploads/{RID}_00_n000.png")  # same length for every index/name
    cap = 37 * need + need // 2
    store = SaveStore(root, max_bytes=cap)
    outs, start = [], threading.Barrier(8)

    def worker(t):
        start.wait()
        for j in range(12):
            outs.append(store.save(RID, t * 12 + j, f"n{t * 12 + j:03d}.png", "png", data, None, rec))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(outs) == 96
    assert sum(o["saved"] for o in outs) == 37
    assert folder_bytes(root) == store.used_bytes == 37 * need <= cap
    assert len((root / "results.jsonl").read_text().splitlines()) == 37
    assert len(list((root / "uploads").iterdir())) == 37  # no temporary files left


def test_a_failed_write_is_rolled_back(tmp_path, monkeypatch):
    root = tmp_path / "s"
    store = SaveStore(root, max_bytes=100_000)
    real = storage.atomic_write_bytes

    def flaky(path, data, make_parents=True):
        if "overlays" in str(path):
            raise OSError(28, "No space left on device")
        real(path, data, make_parents)

    monkeypatch.setattr(storage, "atomic_write_bytes", flaky)
    with pytest.raises(OSError, match="No space left"):
        store.save(RID, 0, "a.png", "png", b"d" * 100, b"o" * 100, {})
    assert all_files(root) == [] and store.used_bytes == 0
    monkeypatch.setattr(storage, "atomic_write_bytes", real)
    assert store.save(RID, 0, "a.png", "png", b"d" * 100, b"o" * 100, {})["saved"] is True  # name free again


def test_a_name_is_never_overwritten(tmp_path):
    store = SaveStore(tmp_path)
    assert store.save(RID, 0, "a.png", "png", b"first", None, {})["saved"] is True
    with pytest.raises(FileExistsError):
        store.save(RID, 0, "a.png", "png", b"second", None, {})
    assert (tmp_path / "uploads" / f"{RID}_00_a.png").read_bytes() == b"first"


def test_bad_arguments(tmp_path):
    with pytest.raises(S2SWError, match="--save-max-mb must be positive"):
        SaveStore(tmp_path, max_bytes=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(S2SWError, match="cannot create the --save folder"):
        SaveStore(tmp_path / "file")


def test_refusal_reports_megabytes(tmp_path):
    (tmp_path / "old.bin").write_bytes(b"o" * 1_400_000)
    store = SaveStore(tmp_path, max_bytes=1_500_000)
    out = store.save(RID, 0, "a.png", "png", b"d" * 200_000, None, {})
    assert out["reason"].startswith("--save folder is full (1.4 MB of 1.5 MB; this file needs 0.2 MB); ")
