"""The training feature cache: exact (bit-identical prompts with an fp32 cache, cold or warm, with
resume and workers), keyed by content and options, refusing unusable entries and full disks."""

import collections
import json
import logging
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import s2swclip.training.feature_cache as fc
from s2swclip.cli.train import FLAGS as CLI_FLAGS
from s2swclip.data.dataset import AnomalyDataset
from s2swclip.data.synthetic import generate_dataset
from s2swclip.errors import S2SWError
from s2swclip.model.checkpoint import load_prompts
from s2swclip.model.objective import s2sw_objective
from s2swclip.training.loop import train

from helpers import make_images

SMALL = dict(backbone="S2SW-Tiny-4L", weights=None, batch_size=2, image_size=56, seed=2, progress=False)
EPOCHS = 3
TOKENS, DIM = (56 // 14) ** 2 + 1, 768


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cachedata")
    return generate_dataset(root / "data", classes=["pill"], n_train_good=1, n_test_good=3,
                            n_test_defect=3, image_size=64, seed=4)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uncached run: the prompts every fp32-cached run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    train(data, out, epochs=EPOCHS, **SMALL)
    return out


def _prompts(out):
    return load_prompts(out / "prompts_last.safetensors").tensors


def _same_prompts(a, b):
    a, b = _prompts(a), _prompts(b)
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _flags(out):
    return [json.loads(line)["features_cached"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _entries(cache):
    return sorted(cache.rglob("*.safetensors"))


# ---------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("where,workers", [("disk", 0), ("disk", 2), ("memory", 2)])
def test_an_fp32_cache_gives_bit_identical_prompts(data, reference, tmp_path, where, workers):
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    train(data, out, epochs=EPOCHS, num_workers=workers,
          cache_features="memory" if where == "memory" else cache, **SMALL)
    assert _same_prompts(out, reference)
    assert _flags(out) == [False, True, True]
    assert _flags(reference) == [False, False, False]
    if where == "disk":
        entries = _entries(cache)
        assert len(entries) == 6  # one per image
        (folder,) = [p for p in cache.iterdir()]
        assert json.loads((folder / "manifest.json").read_text())["options"]["layer_aliasing"] is True
        from safetensors.torch import load_file

        tensors = load_file(entries[0])  # faithful aliasing: the four layers are one tensor
        assert {k: tuple(v.shape) for k, v in tensors.items()} == {"global": (DIM,), "patch.0": (TOKENS, DIM)}
        assert all(v.dtype == torch.float32 for v in tensors.values())
    else:
        assert not cache.exists()


def test_resume_with_a_warm_cache_and_two_workers(data, reference, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    train(data, out, epochs=1, cache_features=cache, **SMALL)
    train(data, out, epochs=EPOCHS, resume=True, cache_features=cache, num_workers=2, **SMALL)
    assert _same_prompts(out, reference)
    assert _flags(out) == [False, True, True]
    assert "6 entries already there" in (out / "train.log").read_text()


def test_a_cache_is_shared_by_runs_that_differ_in_training_hyper_parameters(data, reference, tmp_path):
    cache = tmp_path / "cache"
    train(data, tmp_path / "sweep", epochs=1, cache_features=cache, **dict(SMALL, lr=0.01, alpha=0.5, beta=1.0))
    before = {p: p.stat().st_mtime_ns for p in _entries(cache)}
    out = tmp_path / "run"
    train(data, out, epochs=EPOCHS, cache_features=cache, **SMALL)
    assert _flags(out) == [True, True, True]  # no image encoded at all
    assert {p: p.stat().st_mtime_ns for p in _entries(cache)} == before
    assert _same_prompts(out, reference)
    # random weights are drawn with the run's seed: another seed is another backbone, another key
    # (with pretrained weights the seed does not touch the backbone and the cache is shared)
    other = tmp_path / "seed"
    train(data, other, epochs=1, cache_features=cache, **dict(SMALL, seed=7))
    assert _flags(other) == [False] and len(list(cache.iterdir())) == 2


def test_training_encodes_images_one_at_a_time(tiny_detector):
    images = make_images(3, 56, seed=1)
    glob, patches = fc.encode_per_image(tiny_detector, images)
    assert len({id(p) for p in patches}) == 1 and len(patches) == 4  # aliasing kept
    for i in range(3):
        g1, p1 = tiny_detector.encode_image(images[i:i + 1])
        assert torch.equal(glob[i], g1[0]) and torch.equal(patches[0][i], p1[0][0])


def test_the_objective_on_features_equals_the_objective_on_images(own_detector):
    det = own_detector.train()
    images = make_images(2, 56, seed=3)
    masks = torch.zeros(2, 56, 56)
    masks[1, 10:30, 20:40] = 1
    labels = torch.tensor([0, 1])
    kw = dict(alpha=0.5, beta=0.1, random_pair_prob=1.0)
    a = s2sw_objective(det, images, masks, labels, generator=torch.Generator().manual_seed(0), **kw)
    b = s2sw_objective(det, None, masks, labels, generator=torch.Generator().manual_seed(0),
                       features=det.encode_image(images), **kw)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="either images or features"):
        s2sw_objective(det, images, masks, labels, features=det.encode_image(images))
    with pytest.raises(ValueError, match="image features must be"):
        s2sw_objective(det, None, masks, labels, features=det.encode_image(images[:1]))


# ---------------------------------------------------------------------------------------- keys
def test_a_changed_image_file_is_a_miss(data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    cache = tmp_path / "cache"
    train(root, tmp_path / "a", epochs=1, cache_features=cache, **SMALL)
    assert len(_entries(cache)) == 6
    meta = json.loads((root / "meta.json").read_text())
    item = meta["test"]["pill"][0]
    path = root / item["img_path"]
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(path)  # same name, new content
    out = tmp_path / "b"
    train(root, out, epochs=1, cache_features=cache, **SMALL)
    assert _flags(out) == [False]
    assert len(_entries(cache)) == 7  # the changed image got its own entry; the old one is not used


def test_options_that_change_image_features_use_another_key_and_others_share_it(data, tmp_path):
    cache = tmp_path / "cache"
    train(data, tmp_path / "a", epochs=1, cache_features=cache, **SMALL)
    out = tmp_path / "sigma"  # smoothing acts on maps, not on the backbone's features: shared
    train(data, out, epochs=1, cache_features=cache, detector_options={"sigma": 2.0}, **SMALL)
    assert _flags(out) == [True]
    for i, options in enumerate(({"dpam_layers": 2}, {"layer_aliasing": False})):  # default: 3 of 4 layers
        out = tmp_path / f"other{i}"
        train(data, out, epochs=1, cache_features=cache, detector_options=options, **SMALL)
        assert _flags(out) == [False]
        assert len([p for p in cache.iterdir()]) == i + 2  # a new run-key folder each time
    without_aliasing = [p for p in cache.iterdir()
                        if not json.loads((p / "manifest.json").read_text())["options"]["layer_aliasing"]]
    from safetensors.torch import load_file

    entry = load_file(_entries(without_aliasing[0])[0])
    assert len([k for k in entry if k.startswith("patch.")]) == 4  # four true per-layer features


def test_the_run_key_covers_weights_image_size_and_precision(tiny_detector, data):
    import copy

    ds = AnomalyDataset(data, image_size=56)
    key, description = fc.run_key(tiny_detector, ds, "fp32")
    assert fc.run_key(tiny_detector, ds, "fp32")[0] == key
    assert fc.run_key(tiny_detector, AnomalyDataset(data, image_size=70), "fp32")[0] != key
    assert fc.run_key(tiny_detector, ds, "fp16")[0] != key
    other = copy.deepcopy(tiny_detector)
    with torch.no_grad():
        other.backbone.clip.visual.proj[0, 0] += 1e-6  # one weight changed
    assert fc.run_key(other, ds, "fp32")[0] != key
    other.config = other.config.replace(precision="bf16")
    assert fc.run_key(other, ds, "fp32")[1]["precision"] == "bf16"
    with torch.no_grad():
        other.backbone.clip.visual.proj[0, 0] -= 1e-6
    assert fc.run_key(other, ds, "fp32")[0] != key
    assert description["preprocessing"]["image_size"] == 56


# ------------------------------------------------------------------------------ untrusted entries
LAYOUT = fc.Layout(embed_dim=8, tokens=5, layers=(0, 0, 1), dtype="fp32")
ENTRY = "ab" * 32


def _files(tmp_path):
    return fc.EntryFiles(tmp_path, "k" * 64, LAYOUT)


def _valid(files, entry=ENTRY):
    g = torch.randn(8, generator=torch.Generator().manual_seed(0))
    d = (torch.randn(5, 8), torch.randn(5, 8))
    return files.encode(entry, g, d), (g, d)


def _resave(tensors, meta):
    from safetensors.torch import save

    return save(tensors, metadata=meta)


def _tensors_meta(raw):
    from safetensors.torch import load

    n = int.from_bytes(raw[:8], "little")
    return load(raw), json.loads(raw[8:8 + n])["__metadata__"]


class _Marker:
    def __reduce__(self):
        return (os.system, ("touch MARKER_FROM_PICKLE",))


def _edit(raw, tensor_edit=None, meta_edit=None):
    t, m = _tensors_meta(raw)
    if tensor_edit:
        tensor_edit(t)
    if meta_edit:
        meta_edit(m)
    return _resave(t, m)


BAD = {
    "empty": (lambda raw: b"", "not a safetensors file"),
    "truncated": (lambda raw: raw[:-7], "not a safetensors file"),
    "random bytes": (lambda raw: os.urandom(300), "not a safetensors file"),
    "hostile pickle": (lambda raw: pickle.dumps({"global": _Marker()}), "not a safetensors file"),
    "huge header": (lambda raw: (10 ** 9).to_bytes(8, "little") + raw[8:], "not a safetensors file"),
    "flipped data byte": (lambda raw: raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:], "checksum"),
    "foreign key": (lambda raw: _edit(raw, meta_edit=lambda m: m.update(entry="cd" * 32)), "another image"),
    "other format": (lambda raw: _edit(raw, meta_edit=lambda m: m.update(format="x")), "not an s2swclip"),
    "other layers": (lambda raw: _edit(raw, meta_edit=lambda m: m.update(layers="[0, 1, 2]")), "layer layout"),
    "missing tensor": (lambda raw: _edit(raw, lambda t: t.pop("patch.1")), "holds tensors"),
    "extra tensor": (lambda raw: _edit(raw, lambda t: t.update(code=torch.zeros(1))), "holds tensors"),
    "wrong dtype": (lambda raw: _edit(raw, lambda t: t.update({"global": t["global"].double()})), "global is"),
    "wrong shape": (lambda raw: _edit(raw, lambda t: t.update({"patch.0": torch.zeros(6, 8)})), "patch.0 is"),
    "nan with a valid checksum": (lambda raw: _edit(raw, lambda t: t["global"].__setitem__(0, float("nan"))), "NaN"),
    "too large": (lambda raw: raw + b" " * (1 << 15), "larger than an entry"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_an_unusable_entry_is_refused_with_its_reason(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    raw, _ = _valid(files)
    make, needle = BAD[kind]
    bad = make(raw)
    if kind == "nan with a valid checksum":  # recompute the checksum over the NaN tensor
        t, m = _tensors_meta(bad)
        m["crc32"] = str(fc._crc32(t))
        bad = _resave(t, m)
    path = files.path(ENTRY)
    path.parent.mkdir(parents=True)
    path.write_bytes(bad)
    with pytest.raises(fc.BadEntry, match=needle):
        files.read(ENTRY)
    assert not (tmp_path / "MARKER_FROM_PICKLE").exists()


def test_a_valid_entry_round_trips_and_a_missing_one_is_none(tmp_path):
    files = _files(tmp_path)
    raw, (g, d) = _valid(files)
    assert files.read(ENTRY) is None
    files.path(ENTRY).parent.mkdir(parents=True)
    files.path(ENTRY).write_bytes(raw)
    g2, d2 = files.read(ENTRY)
    assert torch.equal(g, g2) and all(torch.equal(a, b) for a, b in zip(d, d2))
    assert len(raw) <= LAYOUT.entry_bytes


def test_corrupted_and_foreign_entries_are_recomputed_never_used(data, reference, tmp_path, caplog):
    cache = tmp_path / "cache"
    train(data, tmp_path / "fill", epochs=1, cache_features=cache, **SMALL)
    entries = _entries(cache)
    good = {p: p.read_bytes() for p in entries}
    raw = entries[0].read_bytes()
    entries[0].write_bytes(raw[:-3] + bytes([raw[-3] ^ 0x40]) + raw[-2:])  # corrupted data
    entries[1].write_bytes(entries[2].read_bytes())  # another image's (valid) entry under this name
    entries[3].write_bytes(raw[: len(raw) // 2])  # truncated
    entries[4].write_bytes(pickle.dumps({"global": _Marker()}))  # not ours at all
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="s2swclip.training.feature_cache"):
        train(data, out, epochs=EPOCHS, cache_features=cache, num_workers=2, **SMALL)
    warned = [r.getMessage() for r in caplog.records if r.name == "s2swclip.training.feature_cache"]
    assert len(warned) == 4 and all("recomputing it" in w for w in warned), warned
    for i, needle in ((0, "checksum"), (1, "another image"), (3, "not a safetensors"), (4, "not a safetensors")):
        p = entries[i]
        assert any(str(p) in w and needle in w for w in warned), (p, warned)
    assert _flags(out) == [False, True, True]
    assert _same_prompts(out, reference)
    for p in entries:  # rewritten: the same tensors as the original entries
        t_now, _ = _tensors_meta(p.read_bytes())
        t_then, _ = _tensors_meta(good[p])
        assert all(torch.equal(t_now[k], t_then[k]) for k in t_then)


# --------------------------------------------------------------------------------------- fp16
def test_an_fp16_cache_halves_the_entries_and_is_reproducible(data, reference, tmp_path):
    cache = tmp_path / "cache"
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    train(data, cold, epochs=EPOCHS, cache_features=cache, cache_dtype="fp16", **SMALL)
    train(data, warm, epochs=EPOCHS, cache_features=cache, cache_dtype="fp16", **SMALL)
    assert _flags(cold) == [False, True, True] and _flags(warm) == [True, True, True]
    assert _same_prompts(cold, warm)  # features rounded in every epoch: cold == warm
    assert not _same_prompts(cold, reference)
    a, b = _prompts(cold), _prompts(reference)
    for k in a:  # close to the fp32 prompts: rounding features to fp16 is a small perturbation
        assert (a[k] - b[k]).abs().max() < 1e-2 * b[k].abs().max(), k
    sizes = [p.stat().st_size for p in _entries(cache)]
    fp32 = fc.Layout(DIM, TOKENS, (0, 0, 0, 0), "fp32").tensor_bytes
    assert len(sizes) == 6 and all(fp32 / 2 <= s < fp32 / 2 + 1024 for s in sizes), (sizes, fp32)
    with pytest.raises(S2SWError, match=r"feature_cache was 'fp16', now None\)") as e:
        train(data, cold, epochs=EPOCHS + 1, resume=True, cache_features=cache, **SMALL)
    assert "feature_cache was 'fp16', now None (--cache-dtype)" in e.value.with_flags(CLI_FLAGS)


# ------------------------------------------------------------------------------------ refusals
def test_a_disk_without_the_space_is_refused_before_training(data, tmp_path, monkeypatch, caplog):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 10 ** 6, 10 ** 6))
    cache, out = tmp_path / "cache", tmp_path / "run"
    with pytest.raises(S2SWError) as e:
        train(data, out, epochs=1, cache_features=cache, **SMALL)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cache_features {cache}: the cache needs 0.00") and (
        "has only 0.001 GB free" in msg and "set cache_dtype fp16 to halve the size;" in msg), msg
    shown = e.value.with_flags(CLI_FLAGS)  # what the command line shows
    assert shown.startswith(f"cache_features {cache} (--cache-features): ") and (
        "set cache_dtype fp16 to halve the size (--cache-dtype);" in shown), shown
    assert not cache.exists() and not (out / "train_state.safetensors").exists()


def test_memory_without_the_space_is_refused(data, tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "available_memory", lambda: 1000)
    with pytest.raises(S2SWError, match=r"^cache_features memory: the cache needs .* memory has only"):
        train(data, tmp_path / "run", epochs=1, cache_features="memory", **SMALL)


def test_the_expected_size_is_reported_first(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, epochs=1, cache_features=tmp_path / "cache", **SMALL)
    per = fc.Layout(DIM, TOKENS, (0, 0, 0, 0), "fp32").entry_bytes
    log = (out / "train.log").read_text()
    assert f"feature cache ({tmp_path / 'cache'}, fp32): {per / 1e6:.2f} MB per image, " \
           f"{6 * per / 1e9:.3f} GB for 6 images; 0 entries already there" in log
    assert log.index("feature cache (") < log.index("epoch 1/1")


def test_a_data_pipeline_not_declared_deterministic_is_refused(data, tmp_path, monkeypatch):
    monkeypatch.setattr(AnomalyDataset, "deterministic", False)
    with pytest.raises(S2SWError, match="^cache_features needs a deterministic data pipeline"):
        train(data, tmp_path / "run", epochs=1, cache_features="memory", **SMALL)
    train(data, tmp_path / "plain", epochs=1, max_batches=1, **SMALL)  # without a cache: fine


@pytest.mark.parametrize("kw,needle", [
    (dict(cache_dtype="fp16"), "cache_dtype fp16 applies to a feature cache (--cache-dtype); set "
                               "cache_features to a folder or 'memory' (--cache-features)"),
    (dict(cache_features="memory", cache_dtype="bf16"), "invalid cache_dtype 'bf16' (--cache-dtype): choose"),
])
def test_cache_options_are_checked_before_any_work(tmp_path, kw, needle):
    with pytest.raises(S2SWError) as e:
        train(tmp_path / "no-data", tmp_path / "out", **dict(SMALL, **kw))
    # the library names the fields; the command line adds their flags
    assert str(e.value).startswith(re.sub(r" \(--[a-z-]+\)", "", needle)), str(e.value)
    assert e.value.with_flags(CLI_FLAGS).startswith(needle), e.value.with_flags(CLI_FLAGS)
    assert os.listdir(tmp_path) == []


def test_a_cache_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(S2SWError, match="^cache_features .*file.* is an existing file"):
        train(tmp_path / "no-data", tmp_path / "out", cache_features=tmp_path / "file", **SMALL)


def test_the_cache_decodes_exactly_the_bytes_it_hashes(data):
    ds = AnomalyDataset(data, image_size=56)
    for i in (0, 5):
        plain = ds[i]
        path = ds.resolve(ds.items[i]["img_path"])
        with open(path, "rb") as f:
            from_bytes = ds.sample(i, image=f.read())
        without = ds.sample(i, image=False)
        assert torch.equal(plain["image"], from_bytes["image"]) and "image" not in without
        assert all(torch.equal(plain["mask"], s["mask"]) and plain["label"] == s["label"] for s in (from_bytes, without))


# ---------------------------------------------------------------- planted FIFOs, folders, links
def _in_thread(fn, timeout):
    """Run ``fn`` in a daemon thread; (finished, result or exception). A hang is a failure, not a
    hung test run."""
    import threading

    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box


def test_a_fifo_a_folder_or_a_link_as_an_entry_is_refused_without_blocking(tmp_path):
    files = _files(tmp_path / "k")
    raw, _ = _valid(files)
    files.path(ENTRY).parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(raw)
    for plant, needle in ((os.mkfifo, "FIFO"), (os.mkdir, "folder"),
                          (lambda p: os.symlink(elsewhere, p), "symbolic link")):
        path = files.path(ENTRY)
        plant(path)
        done, box = _in_thread(lambda: files.read(ENTRY), timeout=20)
        assert done, f"reading a {needle} entry blocked"
        assert isinstance(box.get("error"), fc.BadEntry) and needle in str(box["error"]), box
        (os.rmdir if path.is_dir() and not path.is_symlink() else os.unlink)(path)


def test_a_shard_folder_that_is_a_link_never_takes_writes_outside_the_cache(tmp_path):
    files = _files(tmp_path / "cache" / "key")
    raw, _ = _valid(files)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache" / "key").mkdir(parents=True)
    os.symlink(outside, tmp_path / "cache" / "key" / ENTRY[:2])
    (outside / f"{ENTRY}.safetensors").write_bytes(raw)  # a valid entry, reachable only by the link
    with pytest.raises(fc.BadEntry, match="symbolic link"):
        files.read(ENTRY)
    with pytest.raises(OSError) as e:
        files.write(ENTRY, raw)
    assert e.value.errno in fc._ENTRY_ERRNOS
    assert sorted(p.name for p in outside.iterdir()) == [f"{ENTRY}.safetensors"]


def test_planted_entries_are_recomputed_and_do_not_stop_the_other_writes(data, reference, tmp_path, caplog):
    cache = tmp_path / "cache"
    train(data, tmp_path / "fill", epochs=1, cache_features=cache, **SMALL)
    entries = _entries(cache)
    shards = collections.Counter(p.parent for p in entries)
    alone = [p for p in entries if shards[p.parent] == 1]  # an entry alone in its shard folder
    fifo, folder = [p for p in entries if p not in alone[:1]][:2]
    linked = alone[0]
    os.unlink(fifo)
    os.mkfifo(fifo)
    os.unlink(folder)
    (folder / "x").mkdir(parents=True)  # a non-empty folder: cannot be replaced by a file
    outside = tmp_path / "outside"
    shutil.move(linked.parent, outside)
    os.symlink(outside, linked.parent)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="s2swclip.training.feature_cache"):
        done, box = _in_thread(lambda: train(data, out, epochs=EPOCHS, cache_features=cache, **SMALL), 300)
    assert done, "training hung on a planted FIFO"
    assert "error" not in box, box
    warned = [r.getMessage() for r in caplog.records if r.name == "s2swclip.training.feature_cache"]
    assert any(str(fifo) in w and "FIFO" in w for w in warned), warned
    assert any(str(folder) in w and "folder" in w and "recomputing it" in w for w in warned), warned
    assert any(str(folder) in w and "cannot be stored" in w for w in warned), warned
    assert any(str(linked) in w and "symbolic link" in w for w in warned), warned
    assert not any("cannot write feature cache entries" in w for w in warned), warned  # writes stay on
    assert _same_prompts(out, reference)
    assert fifo.is_file() and not fifo.is_symlink()  # the FIFO's place got a real entry again
    assert sorted(p.name for p in outside.iterdir()) == [linked.name]  # nothing new written outside
    stored = [p for p in _entries(cache) if p.is_file() and not p.is_symlink() and p.parent != linked.parent]
    assert len(stored) == len(entries) - 2  # all but the folder's and the linked shard's
    assert sum("cannot be stored" in w for w in warned) == 2  # once per entry, not once per epoch
