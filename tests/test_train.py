"""Training on synthetic data with the tiny backbone: the loss falls, held-out maps improve,
checkpoints are atomic and resume continues exactly."""

import dataclasses
import json
import logging
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

import s2swclip
from s2swclip.data.synthetic import generate_dataset
from s2swclip.errors import S2SWError
from s2swclip.model.checkpoint import load_prompts, save_prompts
from s2swclip.eval.metrics import pixel_auroc
from s2swclip.cli.train import FLAGS as CLI_FLAGS
from s2swclip.training.loop import LOSS_KEYS, resolve_train_config, train
from s2swclip.training.state import read_state

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
                     "prompts_last.safetensors", "train.log", "train_log.jsonl", "train_state.safetensors"]
    log = (out / "train.log").read_text()
    assert "epoch 4/4" in log and "pixel_generic=" in log
    meta = s2swclip.model.checkpoint.load_prompts(out / "prompts_last.safetensors").meta
    assert meta["epoch"] == 4 and meta["backbone"] == "S2SW-Tiny-24L"
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for r, h in zip(records, result.history):
        assert set(r) == {"epoch", "seconds", *LOSS_KEYS, "lr", "features_cached"}
        assert all(r[k] == h[k] for k in LOSS_KEYS)
        assert r["lr"] == 1e-3 and r["features_cached"] is False and 0 < r["seconds"] < 600
    state = read_state(out / "train_state.safetensors")
    assert state.epoch == 4 and state.history == result.history and state.records == records
    last = s2swclip.model.checkpoint.load_prompts(out / "prompts_last.safetensors").tensors
    assert all(torch.equal(state.prompts[k], last[k]) for k in last)
    steps = [float(s["step"]) for s in state.optimizer["state"].values()]
    assert steps == [4 * 14.0] * 3  # 7 classes x 16 images / batch 8 = 14 steps an epoch


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


# ------------------------------------------------------------------ small runs (56 px, 4 images)
SMALL = dict(backbone="S2SW-Tiny-24L", weights=None, batch_size=2, image_size=56, seed=2, progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A one-epoch run on four images: (data root, run folder)."""
    root = tmp_path_factory.mktemp("small")
    data = generate_dataset(root / "data", classes=["pill"], n_train_good=1, n_test_good=2,
                            n_test_defect=2, image_size=64, seed=4)
    train(data, root / "run", epochs=1, **SMALL)
    return data, root / "run"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_training_leaves_the_global_rng_and_logging_setup_alone(small, tmp_path, caplog):
    logger = logging.getLogger("s2swclip.training.loop")
    handlers, level = list(logger.handlers), logger.level
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="s2swclip.training.loop"):
        train(small[0], tmp_path / "run", epochs=1, **SMALL)
    assert torch.equal(torch.get_rng_state(), before)
    assert logger.handlers == handlers and logger.level == level
    assert any(r.name == "s2swclip.training.loop" and r.getMessage().startswith("epoch 1/1 total=") for r in caplog.records)
    assert "epoch 1/1 total=" in (tmp_path / "run" / "train.log").read_text()


def _same_prompt_file(a, b):
    """Same tensors, config and metadata (safetensors orders its metadata map arbitrarily, so the
    bytes of two writes of the same content may differ)."""
    a, b = load_prompts(a), load_prompts(b)
    return (a.config == b.config and a.meta == b.meta and set(a.tensors) == set(b.tensors)
            and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors))


def test_resume_rederives_missing_or_stale_exports(small, tmp_path):
    data, run = small
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "prompts_last.safetensors").unlink()
    (out / "train_log.jsonl").unlink()
    other = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=56, seed=99, untrained_ok=True)
    save_prompts(out / "prompts_epoch001.safetensors", other.prompts, {"epoch": 1})  # stale content
    assert not _same_prompt_file(out / "prompts_epoch001.safetensors", run / "prompts_epoch001.safetensors")
    result = train(data, out, epochs=1, resume=True, **SMALL)
    assert sorted(os.listdir(out)) == sorted(os.listdir(run))
    for name in ("prompts_epoch001.safetensors", "prompts_last.safetensors"):
        assert _same_prompt_file(out / name, run / name), name
    for name in ("train_log.jsonl", "train_state.safetensors"):
        assert (out / name).read_bytes() == (run / name).read_bytes(), name
    log = (out / "train.log").read_text()
    for name in ("prompts_epoch001.safetensors", "prompts_last.safetensors", "train_log.jsonl"):
        assert f"re-exported {name} from train_state.safetensors (epoch 1)" in log
    assert "already trained for 1 epochs" in log
    assert result.history == read_state(out / "train_state.safetensors").history


@pytest.mark.parametrize("change,needle", [
    (dict(batch_size=4), "batch_size was 2, now 4 (--batch-size)"),
    (dict(lr=0.01), "lr was 0.001, now 0.01 (--lr)"),
    (dict(image_size=70), "image_size was 56, now 70 (--image-size)"),
    (dict(seed=3), "seed was 2, now 3 (--seed)"),
    (dict(max_batches=1), "max_batches was None, now 1 (--max-batches)"),
    (dict(preset="mvtec-to-visa"), "alpha was 1.0, now 0.001 (--alpha)"),
    (dict(detector_options={"sigma": 2.0}), "detector_options was {}, now {'sigma': 2.0}"),
    ("more data", "items was 4, now 5 (--data)"),
])
def test_resume_refuses_a_state_of_another_configuration(small, tmp_path, change, needle):
    data, run = small
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = _snapshot(out)
    kw = dict(SMALL, epochs=2, resume=True)
    if change == "more data":
        data = generate_dataset(tmp_path / "more", classes=["pill"], n_train_good=1, n_test_good=2,
                                n_test_defect=3, image_size=64, seed=4)
    else:
        kw.update(change)
    with pytest.raises(S2SWError) as e:
        train(data, out, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith(f"cannot resume from {out / 'train_state.safetensors'}")
    # the library names the field; the command line adds its flag
    assert "belongs to another run configuration" in msg and _without_flag(needle) in msg, msg
    assert "(--" not in msg and needle in e.value.with_flags(CLI_FLAGS), e.value.with_flags(CLI_FLAGS)
    assert _snapshot(out) == before  # nothing written, not even to train.log


def _rewrite(raw, edit):
    """The safetensors bytes ``raw`` with tensors/metadata changed by ``edit(tensors, meta)``."""
    from safetensors.torch import load, save

    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    tensors = load(raw)
    edit(tensors, meta)
    return save(tensors, metadata=meta)


def _set(d, key, value):
    d[key] = value


def _meta_json(key, change):
    def edit(tensors, meta):
        value = json.loads(meta[key])
        change(value)
        meta[key] = json.dumps(value)
    return edit


class _Marker:
    def __reduce__(self):
        return (os.system, ("touch MARKER_FROM_PICKLE",))


MALFORMED = {
    "random bytes": lambda raw: os.urandom(64),
    "hostile pickle": lambda raw: pickle.dumps({"optimizer": _Marker()}),
    "empty": lambda raw: b"",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "huge header length": lambda raw: (10**12).to_bytes(8, "little") + b"{}",
    "prompt file": None,  # a prompts_*.safetensors put in the state's place
    "format tag": lambda raw: _rewrite(raw, lambda t, m: _set(m, "format", "s2swclip-prompts")),
    "format version": lambda raw: _rewrite(raw, lambda t, m: _set(m, "format_version", "2")),
    "epoch not a number": lambda raw: _rewrite(raw, lambda t, m: _set(m, "epoch", "one")),
    "epoch 0": lambda raw: _rewrite(raw, lambda t, m: _set(m, "epoch", "0")),
    "history not JSON": lambda raw: _rewrite(raw, lambda t, m: _set(m, "history", "[{")),
    "history too short": lambda raw: _rewrite(raw, lambda t, m: _set(m, "history", "[]")),
    "records wrong epoch": lambda raw: _rewrite(raw, _meta_json("records", lambda r: r[0].update(epoch=5))),
    "metadata entry missing": lambda raw: _rewrite(raw, lambda t, m: m.pop("fingerprint")),
    "fingerprint not a mapping": lambda raw: _rewrite(raw, lambda t, m: _set(m, "fingerprint", "[]")),
    "moment of wrong shape": lambda raw: _rewrite(raw, lambda t, m: _set(t, "optimizer.ctx_normal.exp_avg", torch.zeros(3))),
    "moment missing": lambda raw: _rewrite(raw, lambda t, m: t.pop("optimizer.deep_prompts.exp_avg_sq")),
    "hyper-parameter not a number": lambda raw: _rewrite(raw, _meta_json(
        "optimizer", lambda o: o["param_groups"][0].update(lr={"x": 1}))),
    "optimizer names an unknown tensor": lambda raw: _rewrite(raw, _meta_json(
        "optimizer", lambda o: o["param_groups"][0].update(params=["ctx_normal", "ctx_anomaly", "w"]))),
    "rng of wrong size": lambda raw: _rewrite(raw, lambda t, m: _set(t, "rng.pair", torch.zeros(10, dtype=torch.uint8))),
    "rng missing": lambda raw: _rewrite(raw, lambda t, m: t.pop("rng.shuffle")),
    "prompt not float32": lambda raw: _rewrite(raw, lambda t, m: _set(t, "prompts.ctx_normal", t["prompts.ctx_normal"].double())),
    "prompt missing": lambda raw: _rewrite(raw, lambda t, m: t.pop("prompts.deep_prompts")),
    "extra tensor": lambda raw: _rewrite(raw, lambda t, m: _set(t, "code", torch.zeros(1))),
    "buffer missing": lambda raw: _rewrite(raw, lambda t, m: t.pop("buffers.generic_eot")),
    "learner config off": lambda raw: _rewrite(raw, _meta_json("learner_config", lambda c: c.update(n_ctx=3))),
    "vocabulary not phrases": lambda raw: _rewrite(raw, _meta_json(
        "learner_config", lambda c: c["vocabulary"].update(generic=[1, 2]))),
    "detector option of wrong type": lambda raw: _rewrite(raw, _meta_json(
        "export_meta", lambda e: e["detector_config"].update(feature_layers="6,12"))),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_state_is_one_clear_line_and_runs_nothing(small, tmp_path, monkeypatch, kind):
    data, run = small
    out = tmp_path / "run"
    shutil.copytree(run, out)
    state = out / "train_state.safetensors"
    make = MALFORMED[kind]
    state.write_bytes((run / "prompts_last.safetensors").read_bytes() if make is None else make(state.read_bytes()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(S2SWError) as e:
        read_state(state)
    msg = str(e.value)
    assert msg.startswith(f"cannot resume from {state}: ") and msg.endswith("choose another out_dir")
    assert "\n" not in msg and "\x1b" not in msg and len(msg) < 400, msg
    assert not (tmp_path / "MARKER_FROM_PICKLE").exists()


def test_resume_refuses_a_malformed_or_pickled_state_before_any_work(small, tmp_path, monkeypatch):
    data, run = small
    monkeypatch.chdir(tmp_path)
    for name in ("train_state.safetensors", "train_state.pt"):  # ours, and the old pickle format
        out = tmp_path / name
        out.mkdir()
        (out / name).write_bytes(pickle.dumps({"optimizer": _Marker()}))
        with pytest.raises(S2SWError, match=rf"^cannot resume from {re.escape(str(out / name))}: .*"
                                            r"(not a safetensors file|pickle format).*choose another out_dir$"):
            train(data, out, epochs=1, resume=True, **SMALL)
        assert os.listdir(out) == [name] and not (tmp_path / "MARKER_FROM_PICKLE").exists()


@pytest.mark.parametrize("option,value,needle", [
    ("epochs", 0, "epochs must be a positive integer, got 0 (--epochs)"),
    ("batch_size", 0, "batch_size must be a positive integer, got 0 (--batch-size)"),
    ("batch_size", 2.5, "batch_size must be a positive integer, got 2.5 (--batch-size)"),
    ("batch_size", True, "batch_size must be a positive integer, got True (--batch-size)"),
    ("image_size", -56, "image_size must be a positive integer, got -56 (--image-size)"),
    ("lr", -1.0, "lr must be a finite number > 0, got -1.0 (--lr)"),
    ("lr", 0, "lr must be a finite number > 0, got 0 (--lr)"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan (--lr)"),
    ("lr", float("inf"), "lr must be a finite number > 0, got inf (--lr)"),
    ("lr", "0.1", "lr must be a finite number > 0, got '0.1' (--lr)"),
    ("alpha", float("nan"), "alpha must be a finite number >= 0, got nan (--alpha)"),
    ("beta", float("-inf"), "beta must be a finite number >= 0, got -inf (--beta)"),
    ("beta", -0.5, "beta must be a finite number >= 0, got -0.5 (--beta)"),
    ("seed", -1, "seed must be an integer in [0, 9223372036854775806], got -1 (--seed)"),
    ("betas", (0.5, 1.0), "betas must be two numbers in [0, 1)"),
    ("betas", (float("nan"), 0.9), "betas must be two numbers in [0, 1)"),
    ("betas", (0.9,), "betas must be two numbers in [0, 1)"),
    ("random_pair_prob", 1.5, "random_pair_prob must be a number in [0, 1], got 1.5"),
    ("pairwise_hinge", "yes", "pairwise_hinge must be True or False, got 'yes'"),
])
def test_invalid_training_options_are_refused_naming_the_flag(option, value, needle):
    with pytest.raises(S2SWError) as e:
        resolve_train_config(**{option: value})
    assert str(e.value) == _without_flag(needle) or (
        "(--" not in needle and str(e.value).startswith(needle)), str(e.value)
    assert e.value.fields == (option,) and e.value.with_flags(CLI_FLAGS).startswith(needle)


def test_valid_training_options_are_normalised():
    cfg = resolve_train_config("mvtec-to-visa", batch_size=np.int64(3), lr=np.float32(0.5), betas=[0, 0.9])
    assert (cfg.batch_size, cfg.lr, cfg.betas, cfg.epochs, cfg.alpha) == (3, 0.5, (0.0, 0.9), 16, 0.001)
    assert type(cfg.batch_size) is int and type(cfg.lr) is float
    json.dumps(dataclasses.asdict(cfg))


@pytest.mark.parametrize("kw,needle", [
    (dict(max_batches=-1), "max_batches must be an integer >= 0, got -1 (--max-batches)"),
    (dict(num_workers=-2), "num_workers must be an integer >= 0, got -2 (--workers)"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0 (--batch-size)"),
])
def test_invalid_run_arguments_are_refused_before_anything_is_written(tmp_path, kw, needle):
    with pytest.raises(S2SWError) as e:
        train(tmp_path / "no-data", tmp_path / "out", **dict(SMALL, **kw))
    assert str(e.value) == _without_flag(needle) and e.value.with_flags(CLI_FLAGS) == needle
    assert os.listdir(tmp_path) == []


def _without_flag(needle):
    """A message as the library words it: the field without the command line's ``(--flag)``."""
    return re.sub(r" \(--[a-z-]+\)", "", needle)
