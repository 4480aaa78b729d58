"""Progress output: a bar on a terminal, plain lines at fixed fractions or intervals elsewhere."""

import io
import logging

import pytest

import s2swclip.progress as progress_module
from s2swclip.progress import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "s2swclip"]


def test_off_a_terminal_a_plain_line_every_tenth_and_no_carriage_returns(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="s2swclip"):
        bar = progress(50, "testing mvtec", stream=stream, unit="img")
        for _ in range(50):
            bar.update(1)
        bar.close()
    lines = _lines(caplog)
    assert [line.split(",")[0] for line in lines] == [f"testing mvtec: {n}/50 ({2 * n}%)" for n in range(5, 55, 5)]
    assert stream.getvalue() == "" and not any("\r" in line for line in lines)


def test_off_a_terminal_a_line_every_interval_when_the_work_is_slow(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="s2swclip"):
        bar = progress(1000, "scoring", stream=io.StringIO(), interval=30.0)
        bar.set_postfix({"loss": "0.5"})
        for _ in range(3):
            now[0] += 31.0  # one unit per 31 s: far less than 10 % between lines
            bar.update(1)
        bar.close()
    assert [line.split(",")[0] for line in _lines(caplog)] == [
        "scoring: 1/1000 (0%)", "scoring: 2/1000 (0%)", "scoring: 3/1000 (0%)", "scoring: 3/1000 (0%)"]
    assert _lines(caplog)[0].endswith("loss=0.5")


def test_on_a_terminal_a_tqdm_bar_and_disabled_means_silent(caplog):
    term = _Terminal()
    with caplog.at_level(logging.INFO, logger="s2swclip"):
        bar = progress(4, "epoch 1/2", stream=term, unit="batch")
        bar.update(4)
        bar.close()
        quiet = progress(4, "x", enabled=False)
        quiet.update(4)
        quiet.close()
    assert "epoch 1/2" in term.getvalue() and "\r" in term.getvalue()
    assert _lines(caplog) == []


def test_training_reports_progress_as_plain_lines_off_a_terminal(tmp_path, caplog):
    from s2swclip.data.synthetic import generate_dataset
    from s2swclip.training.loop import train

    data = generate_dataset(tmp_path / "data", classes=["pill"], n_train_good=1, n_test_good=2,
                            n_test_defect=2, image_size=64, seed=4)
    with caplog.at_level(logging.INFO, logger="s2swclip"):
        train(data, tmp_path / "run", backbone="S2SW-Tiny-24L", weights=None, epochs=1, batch_size=2,
              image_size=56, seed=2, progress=True)  # pytest's stderr is not a terminal
    lines = [m for m in _lines(caplog) if m.startswith("epoch 1/1: ")]
    assert [m.split(",")[0] for m in lines] == ["epoch 1/1: 1/2 (50%)", "epoch 1/1: 2/2 (100%)"], lines
    assert "batch/s" in lines[0] and "total=" in lines[0]
