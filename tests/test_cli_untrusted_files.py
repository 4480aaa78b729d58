"""Untrusted weights and prompt files through the command line: one ``error:`` line, exit 2,
nothing from the file runs, no output written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from s2swclip.cli import main
from s2swclip.model.checkpoint import FORMAT_TAG
from s2swclip.model.prompts import DEFAULT_VOCABULARY

from untrusted_files import forbidden_pickle, save_forbidden_global_archive, save_hostile_archive

MODEL = ["--backbone", "S2SW-Tiny-24L", "--image-size", "224"]
TINY = MODEL + ["--weights", "none"]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def _predict_refused(capsys, tmp_path, image, *model_args, needles=()):
    out = tmp_path / "out"
    code = main(["predict", str(image), "--out", str(out), "--quiet", *model_args])
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()  # refused before any output was written
    return lines[0]


def test_hostile_torchscript_archive_as_weights_or_prompts(capsys, tmp_path, image):
    path, marker = tmp_path / "hostile.pt", tmp_path / "marker"
    save_hostile_archive(path, marker)
    _predict_refused(capsys, tmp_path, image, *MODEL, "--weights", str(path),
                     needles=(str(path), "__setstate__"))
    _predict_refused(capsys, tmp_path, image, *TINY, "--prompts", str(path),
                     needles=(str(path), "TorchScript archive"))
    assert not marker.exists()


def test_archive_calling_os_system_as_weights(capsys, tmp_path, image):
    path, marker = tmp_path / "evil.pt", tmp_path / "marker"
    save_forbidden_global_archive(path, "os", "system", marker)
    _predict_refused(capsys, tmp_path, image, *MODEL, "--weights", str(path),
                     needles=(str(path), "os.system"))
    assert not marker.exists()


def test_pickle_calling_eval_as_prompts(capsys, tmp_path, image):
    path, marker = tmp_path / "evil.pth", tmp_path / "marker"
    path.write_bytes(forbidden_pickle("builtins", "eval", marker))
    _predict_refused(capsys, tmp_path, image, *TINY, "--prompts", str(path),
                     needles=(str(path), "builtins.eval, which is not tensor data"))
    assert not marker.exists()


def _authors(path, **changes):
    g = torch.Generator().manual_seed(0)
    sd = {"ctx_pos": torch.randn(1, 1, 14, 64, generator=g), "ctx_neg": torch.randn(1, 1, 14, 64, generator=g)}
    sd.update({f"compound_prompts_text.{k}": torch.randn(4, 64, generator=g) for k in range(8)})
    sd.update(changes)
    torch.save({"prompt_learner": sd}, path)
    return path


def _ours(path, config=None, meta=None):
    tensors = {"ctx_normal": torch.zeros(14, 64), "ctx_anomaly": torch.zeros(14, 64),
               "deep_prompts": torch.zeros(8, 4, 64)}
    cfg = {"n_ctx": 14, "depth": 9, "deep_tokens": 4,
           "vocabulary": {f: list(v) for f, v in DEFAULT_VOCABULARY.items()}}
    cfg.update(config or {})
    save_file(tensors, str(path), metadata={"format": FORMAT_TAG, "format_version": "1",
                                            "config": json.dumps(cfg), "meta": json.dumps(meta or {})})
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: _authors(p, ctx_pos=[0.5] * 14), "ctx_pos is not a tensor"),
    (lambda p: _authors(p, **{"compound_prompts_text.x": torch.zeros(4, 64)}), "unknown deep-prompt key"),
    (lambda p: _authors(p, **{"compound_prompts_text.5": torch.zeros(2, 64)}), "unequal shapes"),
    (lambda p: _ours(p, config={"n_ctx": 0}), "n_ctx must be an integer >= 1"),
    (lambda p: _ours(p, config={"n_ctx": "fourteen"}), "n_ctx must be an integer >= 1"),
    (lambda p: _ours(p, meta={"detector_config": {"feature_layers": []}}), "feature_layers"),
    (lambda p: _ours(p, meta={"detector_config": {"layer_aliasing": "no"}}), "layer_aliasing"),
])
def test_malformed_prompt_checkpoint(capsys, tmp_path, image, make, needle):
    path = make(tmp_path / "prompts.bin")
    _predict_refused(capsys, tmp_path, image, *TINY, "--prompts", str(path), needles=(str(path), needle))


def test_well_formed_prompt_checkpoint_is_accepted(capsys, tmp_path, image):
    """The control for the cases above: the same builders, unchanged, give a working file."""
    for path in (_authors(tmp_path / "a.pth"), _ours(tmp_path / "o.safetensors")):
        out = tmp_path / f"out_{path.stem}"
        code = main(["predict", str(image), "--out", str(out), "--quiet", *TINY, "--prompts", str(path)])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads((out / "results.json").read_text())["n_scored"] == 1
