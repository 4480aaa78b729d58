"""Atomic writes: content and permissions as a plain open() gives them, durable (the file and its
folder fsynced, the folder after the rename), nothing half-written left behind, and crashed
writes' temporaries removable."""

import os
import re
import stat

import pytest

from s2swclip import fileio
from s2swclip.fileio import atomic_write_bytes, atomic_write_text, remove_temporaries


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_new_files_get_the_mode_plain_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "atomic.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.bin").st_mode)
    assert mode == 0o666 & ~umask
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode)


def test_file_then_rename_then_folder_are_made_durable(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    assert [e[0] for e in events] == ["fsync-file", "replace", "fsync-dir"]
    assert events[0][1] == os.stat(target).st_ino  # the data written is the file now in place
    assert events[1][1] == "out.txt"
    assert events[2][1] == os.stat(target.parent).st_ino  # the target's own folder


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_missing_folder_is_an_error_without_make_parents(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nope" / "f.bin", b"x", make_parents=False)
    assert not (tmp_path / "nope").exists()


def test_a_kill_before_the_rename_leaves_a_named_temporary_that_can_be_removed(tmp_path, monkeypatch):
    def killed(src, dst):  # what a SIGKILL right before os.replace leaves on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", killed)
    monkeypatch.setattr(fileio.os, "unlink", lambda p: None)  # ... and no cleanup runs
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "prompts_last.safetensors", b"x")
    monkeypatch.undo()
    (left,) = os.listdir(tmp_path)
    assert re.fullmatch(r"\.prompts_last\.safetensors\.[0-9a-f]{8}\.tmp", left), left

    keep = [".report.json.abcd1234.tmp", "prompts_last.safetensors", ".prompts_last.safetensors.tmp",
            "x.prompts_last.safetensors.abcd1234.tmp"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".prompts_epoch002.safetensors.zz_09abc.tmp").mkdir()  # a folder: not ours to delete
    (tmp_path / ".prompts_epoch001.safetensors.k3_zq9ab.tmp").write_text("old-style mkstemp name")
    removed = remove_temporaries(tmp_path, re.compile(r"prompts_last\.safetensors|prompts_epoch\d+\.safetensors"))
    assert sorted(p.name for p in removed) == sorted([left, ".prompts_epoch001.safetensors.k3_zq9ab.tmp"])
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [".prompts_epoch002.safetensors.zz_09abc.tmp"])


class _Growing:
    """A file that another writer extends by ``grow`` bytes between its size being taken and
    the first read (a camera still writing)."""

    def __init__(self, path, grow):
        self.f, self.path, self.grow = open(path, "rb"), path, grow
        self.first = True

    def fileno(self):
        return self.f.fileno()

    def read(self, n):
        if self.first and self.grow:
            with open(self.path, "ab") as w:
                w.write(os.urandom(self.grow))
        self.first = False
        return self.f.read(n)


@pytest.mark.parametrize("size,grow,limit", [(0, 0, 10), (5000, 0, 10), (5000, 0, 4999), (5000, 0, 5000),
                                             (5000, 0, 5001), (100, 3 << 20, 10 << 20), (100, 3 << 20, 2 << 20)])
def test_read_at_most_reads_the_file_up_to_the_limit_however_it_grows(tmp_path, size, grow, limit):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    f = _Growing(path, grow)
    got = fileio.read_at_most(f, limit)
    f.f.close()
    assert got == path.read_bytes()[:limit]


def test_read_at_most_allocates_what_the_file_holds_not_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "small.jpg"
    path.write_bytes(b"x" * 1000)
    asked = []
    with open(path, "rb") as f:
        real = f.read
        monkeypatch.setattr(f, "read", lambda n=-1: asked.append(n) or real(n), raising=False)
        assert fileio.read_at_most(f, 256 << 20) == b"x" * 1000
    assert asked == [1001]  # its size and one byte to see the end; f.read(256 MiB) allocates 256 MiB first


def test_read_regular_file_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(fileio.NotRegularFileError, match="FIFO"):
        fileio.read_regular_file(tmp_path / "pipe.jpg", 100)
