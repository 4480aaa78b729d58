"""Input collection: every entry a user sees in a folder is a row, under the name they see."""

import os

import numpy as np
import pytest
from PIL import Image

from s2swclip.errors import S2SWError
from s2swclip.inference import inputs as inputs_mod
from s2swclip.inference.inputs import collect_inputs, display_names


def _png(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    _png(d / "a.png", 1)
    frames = [Image.new("P", (16, 16), i) for i in (3, 200)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    _png(d / "sub" / "c.tif", 2)
    (d / "notes.txt").write_text("not an image")
    _png(d / ".hidden.png", 3)
    os.symlink(d / "a.png", d / "link1.png")
    os.symlink(d / "a.png", d / "link2.png")
    os.symlink(d / "gone.png", d / "broken.png")
    return d


def test_folder_lists_every_entry_as_seen(folder):
    entries = collect_inputs([folder])
    rel = [os.path.relpath(e.path, folder) for e in entries]
    # every entry is a row (the decoder reports notes.txt as not an image); hidden ones excluded
    assert rel == ["a.png", "anim.gif", "broken.png", "link1.png", "link2.png", "notes.txt", "sub/c.tif"]
    only = [os.path.relpath(e.path, folder) for e in collect_inputs([folder], images_only=True)]
    assert only == ["a.png", "anim.gif", "broken.png", "link1.png", "link2.png", "sub/c.tif"]
    problems = {os.path.relpath(e.path, folder): e.problem for e in entries if e.problem}
    assert list(problems) == ["broken.png"] and "broken symbolic link" in problems["broken.png"]
    # links are kept under their own names, never resolved to the target
    assert all(os.path.dirname(e.path) in (str(folder), str(folder / "sub")) for e in entries)


def test_unreadable_subfolder_is_an_entry_with_its_reason(folder, monkeypatch):
    real = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(inputs_mod.os, "scandir", scandir)
    entries = collect_inputs([folder])
    sub = [e for e in entries if e.path == str(folder / "sub")]
    assert len(sub) == 1 and "cannot list folder" in sub[0].problem and "Permission denied" in sub[0].problem


def test_files_globs_and_duplicates(folder):
    (folder / "notes.dat").write_text("not an image")
    entries = collect_inputs([folder / "notes.dat", str(folder / "*.png"), folder / "a.png"])
    rel = [os.path.relpath(e.path, folder) for e in entries]
    # a file named explicitly is taken whatever its extension (manifests apart: .txt, .csv,
    # .parquet); the same path given twice is one entry
    assert rel == ["a.png", "broken.png", "link1.png", "link2.png", "notes.dat"]


def test_missing_input_and_nothing_found(tmp_path):
    with pytest.raises(S2SWError, match="input not found"):
        collect_inputs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(S2SWError, match="no images found"):
        collect_inputs([tmp_path / "empty"])
    (tmp_path / "empty" / "notes.txt").write_text("x")  # other files only: still no images, named
    with pytest.raises(S2SWError, match="no images found.*1 other file.*notes.txt"):
        collect_inputs([tmp_path / "empty"])


def test_display_names():
    assert display_names(["/d/x/crack/0.png", "/d/x/good/0.png"]) == ["crack/0.png", "good/0.png"]
    assert display_names(["/d/x/a.png"]) == ["a.png"]
    assert display_names(["/d/a.png", "/d/b.png"]) == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------- manifests
def _manifests(tmp_path, lines):
    """The same list as text, CSV and Parquet manifests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "list.txt").write_text("# inputs\n\n" + "\n".join(lines) + "\n")
    with open(tmp_path / "list.csv", "w", newline="") as f:
        f.write("label,path\n" + "".join(f"x,{p}\n" for p in lines))
    pq.write_table(pa.table({"path": lines, "label": ["x"] * len(lines)}), tmp_path / "list.parquet")
    return [tmp_path / "list.txt", tmp_path / "list.csv", tmp_path / "list.parquet"]


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_manifest_lists_paths_relative_to_itself_unchecked(tmp_path, folder, kind):
    pytest.importorskip("pyarrow")
    lines = ["imgs/a.png", str(folder / "sub" / "c.tif"), "imgs/missing.png", "~/nowhere/x.png",
             "imgs/a.png", "file:///data/remote.png"]
    manifest = {m.suffix: m for m in _manifests(tmp_path, lines)}[f".{kind}"]
    entries = collect_inputs([manifest])
    assert [e.path for e in entries] == sorted({
        str(folder / "a.png"), str(folder / "sub" / "c.tif"), str(folder / "missing.png"),
        os.path.expanduser("~/nowhere/x.png"), "file:///data/remote.png"})
    assert all(e.problem is None for e in entries)  # not checked: the decoder reports missing files


def test_manifests_mix_with_folders_and_globs(tmp_path, folder):
    (tmp_path / "list.txt").write_text(f"{folder / 'a.png'}\n{folder / 'anim.gif'}\n")
    entries = collect_inputs([tmp_path / "list.txt", str(folder / "sub" / "*.tif"), folder / "a.png"])
    assert [os.path.relpath(e.path, folder) for e in entries] == ["a.png", "anim.gif", "sub/c.tif"]


@pytest.mark.parametrize("content, needle", [
    ("a.png\n", None),
    ("# only a comment\n\n", "lists no paths"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_text_manifest_errors(tmp_path, content, needle):
    m = tmp_path / "m.txt"
    m.write_bytes(content if isinstance(content, bytes) else content.encode())
    if needle is None:
        assert [e.path for e in collect_inputs([m])] == [str(tmp_path / "a.png")]
    else:
        with pytest.raises(S2SWError, match=needle) as err:
            collect_inputs([m])
        assert str(m) in str(err.value) and "\n" not in str(err.value)


def test_csv_and_parquet_manifests_need_a_path_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "m.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(S2SWError, match=r"m.csv has no 'path' column \(its header: file, label\)"):
        collect_inputs([tmp_path / "m.csv"])
    pq.write_table(pa.table({"file": ["a.png"]}), tmp_path / "m.parquet")
    with pytest.raises(S2SWError, match=r"m.parquet has no 'path' column \(its columns: file\)"):
        collect_inputs([tmp_path / "m.parquet"])
    pq.write_table(pa.table({"path": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(S2SWError, match="column 'path' holds int64, not text"):
        collect_inputs([tmp_path / "n.parquet"])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(S2SWError, match="cannot read the Parquet manifest .*bad.parquet"):
        collect_inputs([tmp_path / "bad.parquet"])


# --------------------------------------------------------------------------------------- URIs
def test_uri_folders_globs_files_and_manifests(tmp_path, folder):
    pytest.importorskip("pyarrow")
    uri = f"file://{folder}"
    rel = lambda entries: [e.path[len(uri) + 1:] for e in entries]  # noqa: E731
    # a folder: image names only, recursively, hidden ones excluded (as for local folders)
    assert rel(collect_inputs([uri])) == ["a.png", "anim.gif", "link1.png", "link2.png", "sub/c.tif"]
    assert rel(collect_inputs([f"{uri}/*.png"])) == ["a.png", "link1.png", "link2.png"]
    assert rel(collect_inputs([f"{uri}/**/*.tif"])) == ["sub/c.tif"]
    assert rel(collect_inputs([f"{uri}/a.png"])) == ["a.png"]
    (folder / "list.txt").write_text("a.png\nsub/c.tif\nfile:///elsewhere/x.png\n")
    assert [e.path for e in collect_inputs([f"{uri}/list.txt"])] == [
        "file:///elsewhere/x.png", f"{uri}/a.png", f"{uri}/sub/c.tif"]
    with pytest.raises(S2SWError, match="input not found: file://.*/nope"):
        collect_inputs([f"{uri}/nope"])


def test_display_names_of_uris():
    assert display_names(["s3://b/x/crack/0.png", "s3://b/x/good/0.png"]) == ["crack/0.png", "good/0.png"]
    assert display_names(["gs://b/a.png"]) == ["a.png"]
    assert display_names(["/d/a.png", "s3://b/a.png"]) == ["d/a.png", "s3/b/a.png"]
