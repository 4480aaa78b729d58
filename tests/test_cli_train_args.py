"""``s2swclip train`` as a user mistypes it: a bad option, an --out that cannot be used, or a
--resume state that cannot be used ends with one ``error:`` line and exit status 2, before any
work (no model or data loaded) and with nothing written."""

import os
import pickle
import sys

import pytest

from s2swclip.cli import main
from s2swclip.data.synthetic import generate_dataset
from s2swclip.training.loop import train

TINY = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "56", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn"), classes=["pill"], n_train_good=1,
                            n_test_good=2, n_test_defect=2, image_size=64, seed=6)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished one-epoch run with the CLI's defaults and --batch-size 2."""
    out = tmp_path_factory.mktemp("run") / "out"
    train(data, out, backbone="S2SW-Tiny-24L", weights=None, epochs=1, batch_size=2, image_size=56,
          progress=False)
    return out


def _train(capsys, data, out, *args):
    code = main(["train", "--data", str(data), "--out", str(out), *args])
    _, err = capsys.readouterr()
    return code, err


def _assert_one_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "\x1b" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "0"], "batch_size must be a positive integer, got 0 (--batch-size)"),
    (["--batch-size", "-4"], "batch_size must be a positive integer, got -4 (--batch-size)"),
    (["--lr", "-1"], "lr must be a finite number > 0, got -1.0 (--lr)"),
    (["--lr", "0"], "lr must be a finite number > 0, got 0.0 (--lr)"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan (--lr)"),
    (["--lr", "inf"], "lr must be a finite number > 0, got inf (--lr)"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0 (--epochs)"),
    (["--alpha", "nan"], "alpha must be a finite number >= 0, got nan (--alpha)"),
    (["--beta=-inf"], "beta must be a finite number >= 0, got -inf (--beta)"),
    (["--image-size", "0"], "--image-size"),  # checked by the shared model options, or by TrainConfig
    (["--seed", "-1"], "(--seed)"),
    (["--max-batches", "-1"], "max_batches must be an integer >= 0, got -1 (--max-batches)"),
    (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
])
def test_bad_option_is_one_line_before_any_work(capsys, tmp_path, args, needle):
    # data that does not exist and a backbone that does not exist: the option is checked first
    out = tmp_path / "out"
    code, err = _train(capsys, tmp_path / "no-data", out, *TINY, "--backbone", "no-such-model", *args)
    _assert_one_error(code, err, needle)
    assert not out.exists()


def test_out_naming_an_existing_file_is_refused_before_any_work(capsys, tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    code, err = _train(capsys, tmp_path / "no-data", out, *TINY, "--backbone", "no-such-model")
    _assert_one_error(code, err, "--out", str(out), "existing file")
    assert out.read_text() == "keep me" and os.listdir(tmp_path) == ["results.txt"]


def test_out_below_a_file_is_refused_before_any_work(capsys, tmp_path):
    (tmp_path / "results.txt").write_text("keep me")
    out = tmp_path / "results.txt" / "run"
    code, err = _train(capsys, tmp_path / "no-data", out, *TINY, "--backbone", "no-such-model")
    _assert_one_error(code, err, "--out", str(out))
    assert os.listdir(tmp_path) == ["results.txt"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write into any folder")
def test_unwritable_out_folder_is_refused_before_any_work(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = _train(capsys, tmp_path / "no-data", locked / "run", *TINY, "--backbone", "no-such-model")
    finally:
        locked.chmod(0o700)
    _assert_one_error(code, err, "--out", "not writable")
    assert os.listdir(locked) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_out_where_nothing_can_be_created_is_refused_before_the_model_loads(capsys, data):
    # even root cannot create a folder in /proc; the unknown backbone shows no model was loaded
    code, err = _train(capsys, data, "/proc/s2swclip-train-out", *TINY, "--backbone", "no-such-model")
    _assert_one_error(code, err, "out_dir /proc/s2swclip-train-out (--out)", "choose another folder")
    assert not os.path.exists("/proc/s2swclip-train-out")


def test_resume_with_other_options_is_one_line_and_writes_nothing(capsys, tmp_path, data, run):
    before = _snapshot(run)
    code, err = _train(capsys, data, run, *TINY, "--resume", "--epochs", "2", "--batch-size", "4")
    _assert_one_error(code, err, f"cannot resume from {run / 'train_state.safetensors'}",
                      "batch_size was 2, now 4 (--batch-size)")
    assert _snapshot(run) == before


def test_resume_with_the_same_options_continues(capsys, tmp_path, data, run):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run, out)
    code, err = _train(capsys, data, out, *TINY, "--resume", "--epochs", "2", "--batch-size", "2")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["prompts_epoch001.safetensors", "prompts_epoch002.safetensors",
                                       "prompts_last.safetensors", "train.log", "train_log.jsonl",
                                       "train_state.safetensors"]
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2


class _Marker:
    def __reduce__(self):
        return (os.system, ("touch MARKER_FROM_PICKLE",))


@pytest.mark.parametrize("name,needle", [
    ("train_state.safetensors", "not a safetensors file"),
    ("train_state.pt", "pickle format of older s2swclip versions, which is not read"),
])
def test_resume_from_a_pickle_is_one_line_and_runs_nothing(capsys, tmp_path, monkeypatch, data, name, needle):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(pickle.dumps({"optimizer": _Marker()}))
    code, err = _train(capsys, data, out, *TINY, "--resume", "--batch-size", "2")
    _assert_one_error(code, err, f"cannot resume from {out / name}", needle)
    assert os.listdir(out) == [name] and not (tmp_path / "MARKER_FROM_PICKLE").exists()
