"""Strings that come from files (file names, manifest entries, model provenance) are printed and
logged with their control characters escaped: an ANSI escape or a newline in them neither acts on
the terminal nor forges a line."""

import csv

import pytest

from helpers import run_cli, write_png
from s2swclip.errors import safe_lines, safe_text

EVIL = "evil\x1b[31mRED\nerror: forged line\r\u202eexe.png"


def test_safe_text_escapes_control_and_invisible_formatting_characters():
    assert safe_text(EVIL) == "evil\\x1b[31mRED\\nerror: forged line\\r\\u202eexe.png"
    assert safe_text("bell\x07 nul\x00 del\x7f sep\u2028 tab\t") == "bell\\x07 nul\\x00 del\\x7f sep\\u2028 tab\\t"
    for kept in ("plain name.png", "Prüfteil 日本 (2).png", "a\\b"):
        assert safe_text(kept) == kept
    assert safe_lines("| a\x1b[0m |\n| b |") == "| a\\x1b[0m |\n| b |"


def _no_control_output(text):
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert not any(line.startswith("error: forged") for line in text.splitlines())


def test_predict_prints_and_logs_names_from_a_manifest_escaped(capsys, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_png(imgs / EVIL, seed=1)  # a real file with that name is scored
    write_png(imgs / "plain.png", seed=2)
    manifest = tmp_path / "list.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        w.writerows([[str(imgs / EVIL)], [str(imgs / "plain.png")], [str(imgs / ("gone-" + EVIL))]])
    code, out, err = run_cli(capsys, "predict", manifest, "--out", tmp_path / "out", "--backbone", "S2SW-Tiny-24L",
                             "--weights", "none", "--image-size", "56", "--no-overlays")
    assert code == 0, err
    _no_control_output(out + err)
    shown = safe_text(EVIL)
    assert sum(shown in line for line in out.splitlines()) == 2  # the scored one and the missing one
    assert any(line.startswith("warning: skipped gone-" + shown) for line in err.splitlines()), err


def test_serve_prints_the_model_provenance_escaped(capsys, monkeypatch):
    pytest.importorskip("fastapi")
    import numpy as np

    import s2swclip.cli.serve as serve_cli
    import s2swclip.serve.app as serve_app

    class EvilScorer:
        image_size = 32
        map_scale = 1.0

        def score(self, pixels):
            return np.zeros(len(pixels), np.float32), np.zeros((len(pixels), 32, 32), np.float32)

        def describe(self):
            return {"backbone": "ViT\x1b]0;owned\x07\x1b[2J\nerror: forged"}

    started = []
    monkeypatch.setattr(serve_cli, "build_serve_app", lambda args: serve_app.create_app(EvilScorer()))
    monkeypatch.setattr(serve_app, "run_server", lambda app, sock, limits=None: started.append(limits))
    code, out, err = run_cli(capsys, "serve", "--port", "0")
    assert code == 0 and len(started) == 1
    _no_control_output(out + err)
    assert "\x07" not in err
    assert "serving ViT\\x1b]0;owned\\x07\\x1b[2J\\nerror: forged on http://127.0.0.1:" in err
