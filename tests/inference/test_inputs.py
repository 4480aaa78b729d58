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


def test_folder_lists_every_image_entry_as_seen(folder):
    entries = collect_inputs([folder])
    rel = [os.path.relpath(e.path, folder) for e in entries]
    assert rel == ["a.png", "anim.gif", "broken.png", "link1.png", "link2.png", "sub/c.tif"]
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


def test_display_names():
    assert display_names(["/d/x/crack/0.png", "/d/x/good/0.png"]) == ["crack/0.png", "good/0.png"]
    assert display_names(["/d/x/a.png"]) == ["a.png"]
    assert display_names(["/d/a.png", "/d/b.png"]) == ["a.png", "b.png"]
