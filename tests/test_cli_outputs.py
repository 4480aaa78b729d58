"""An output folder or file that cannot be created or written is one ``error:`` line and exit
status 2, for every command that writes one, before any work is done."""

import errno
import os
from pathlib import Path

import pytest
from helpers import run_cli, user_error, write_png

TINY = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "64"]

# /proc refuses new folders even to root, whose os.access() says yes to everything
UNCREATABLE = "/proc/s2swclip-no-such-folder/out"
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("command", ["predict", "export", "train", "test", "demo", "watch"])
def test_uncreatable_out_is_one_error_line(capsys, tmp_path, command):
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text('{"train": {}, "test": {}}')
    argv = {"predict": ["predict", images, *TINY],
            "export": ["export", "--format", "onnx", *TINY],
            "train": ["train", "--data", tmp_path / "data", *TINY],
            "test": ["test", "--data", tmp_path / "data", *TINY],
            "demo": ["demo"],
            "watch": ["watch", images, *TINY]}[command]
    # every command: the library names its argument out_dir, the command line adds the flag
    user_error(capsys, [*argv, "--out", UNCREATABLE], f"cannot create out_dir {UNCREATABLE} (--out): ")
    assert not any(tmp_path.glob("**/.s2swclip-probe-*"))


def test_probe_leaves_nothing_behind(tmp_path):
    from s2swclip.fileio import check_output_dir

    target = tmp_path / "new" / "deeper"
    assert check_output_dir(target) == target
    assert sorted(os.listdir(tmp_path)) == []


def test_a_write_failure_found_late_is_one_error_line(capsys, monkeypatch, tmp_path):
    """A disk that fills up after the checks: the OSError from the write becomes one line naming
    the file, not a traceback."""
    import s2swclip.cli.demo as demo_cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "report.json"))

    monkeypatch.setattr(demo_cli, "cmd_demo", full_disk)
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "out")
    from helpers import assert_user_error

    assert_user_error(code, err, "report.json", "No space left on device")
