"""Training on synthetic data with the tiny backbone: the loss falls, held-out maps improve,
checkpoints are atomic and resume continues exactly."""

import json
import os

import numpy as np
import pytest
import torch

import s2swclip
from s2swclip.data.synthetic import generate_dataset
from s2swclip.eval.metrics import pixel_auroc
from s2swclip.train import train

SIZE = 224


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    classes = ["wood", "fabric", "marble", "perforated", "bottle_cap", "pill", "nut"]
    aux = generate_dataset(root / "aux", classes=classes, n_train_good=2, n_test_good=6,
                           n_test_defect=10, image_size=256, seed=0)
    # held-out images of the same categories: a random backbone has no semantics that would carry
    # over to unseen categories, so transfer across categories is not what this test can show
    target = generate_dataset(root / "target", classes=classes, n_train_good=2, n_test_good=6,
                              n_test_defect=10, image_size=256, seed=1)
    return aux, target


def _held_out_pixel_auroc(det, target):
    from s2swclip.data.dataset import AnomalyDataset

    ds = AnomalyDataset(target, image_size=SIZE)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    maps, masks = [], []
    for batch in loader:
        maps.append(det.predict(batch["image"]).anomaly_maps.numpy())
        masks.append(batch["mask"].numpy())
    return pixel_auroc(np.concatenate(masks), np.concatenate(maps))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(data[0], out, backbone="S2SW-Tiny-24L", weights=None, epochs=4, batch_size=8,
                   image_size=SIZE, seed=3, progress=False)
    return out, result


def test_loss_falls_and_held_out_auroc_rises(data, trained):
    out, result = trained
    totals = [h["total"] for h in result.history]
    assert len(totals) == 4
    assert all(b < a for a, b in zip(totals, totals[1:])), totals
    untrained = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=SIZE, seed=3)
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(result.checkpoint), image_size=SIZE)
    before, after = _held_out_pixel_auroc(untrained, data[1]), _held_out_pixel_auroc(det, data[1])
    assert after > before + 0.02, (before, after)


def test_checkpoints_logs_and_no_temporaries(trained):
    out, result = trained
    names = sorted(os.listdir(out))
    assert names == ["prompts_epoch001.safetensors", "prompts_epoch002.safetensors",
                     "prompts_epoch003.safetensors", "prompts_epoch004.safetensors",
                     "prompts_last.safetensors", "train.log", "train_state.pt"]
    log = (out / "train.log").read_text()
    assert "epoch 4/4" in log and "pixel_generic=" in log
    meta = s2swclip.model.checkpoint.load_prompts(out / "prompts_last.safetensors").meta
    assert meta["epoch"] == 4 and meta["backbone"] == "S2SW-Tiny-24L"


def test_resume_continues_exactly(data, tmp_path):
    kw = dict(backbone="S2SW-Tiny-24L", weights=None, batch_size=8, image_size=SIZE, seed=5,
              progress=False, max_batches=2)
    straight = train(data[0], tmp_path / "a", epochs=2, **kw)
    train(data[0], tmp_path / "b", epochs=1, **kw)
    resumed = train(data[0], tmp_path / "b", epochs=2, resume=True, **kw)
    assert json.dumps(resumed.history) == json.dumps(straight.history)
    from s2swclip.model.checkpoint import load_prompts

    a = load_prompts(tmp_path / "a" / "prompts_last.safetensors").tensors
    b = load_prompts(tmp_path / "b" / "prompts_last.safetensors").tensors
    for k in a:
        assert torch.equal(a[k], b[k]), k
