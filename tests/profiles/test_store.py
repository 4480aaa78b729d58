"""ProfileStore: profiles on disk, versioned, written atomically, verified when loaded."""

import json
import os

import numpy as np
import pytest
import torch

from s2swclip.data.images import decode_for_model
from s2swclip.errors import S2SWError
from s2swclip.inference.calibration import conformal_threshold
from s2swclip.profiles import GoodImage, ProfileScorer, ProfileStore, bank_bytes_per_reference, check_name

from .profile_helpers import SIZE, goods, image_bytes


def pixels(datas):
    return torch.from_numpy(np.stack([decode_for_model(d, SIZE).pixels for d in datas]))


def test_create_writes_a_verified_profile_and_scores_like_the_detector(tmp_path, profile_detector):
    det = profile_detector
    store = ProfileStore(tmp_path, det)
    p = store.create("bolt-m8", goods(3))
    assert (p.name, p.version, p.num_references, p.few_shot_weight, p.threshold) == ("bolt-m8", 1, 3, 1.0, None)
    assert det.num_references == 0  # the shared detector is never given the bank
    m = store.show("bolt-m8")
    assert m["model"]["backbone"] == "S2SW-Tiny-24L" and m["model"]["image_size"] == SIZE
    assert [e["file"] for e in m["images"]] == ["images/000.png", "images/001.png", "images/002.png"]
    import hashlib
    assert m["images"][1]["sha256"] == hashlib.sha256(image_bytes(1)).hexdigest()
    assert json.loads((tmp_path / "bolt-m8" / "current.json").read_text()) == {"version": 1, "folder": "v000001"}
    # the bank: 4 layers x 3 images x 8 x 8 tokens x 768, float32, as the formula says
    assert [tuple(b.shape) for b in p.banks] == [(3 * 64, 768)] * 4
    assert p.nbytes == 3 * bank_bytes_per_reference(SIZE, 14, 768, 4)
    loaded = store.load("bolt-m8")
    for a, b in zip(loaded.banks, p.banks):
        torch.testing.assert_close(a, b)
    # scoring with the profile = the detector with the same references set
    import copy
    ref = copy.deepcopy(det)
    ref.config = ref.config.replace(few_shot_weight=1.0)
    ref.set_references(pixels([image_bytes(i) for i in range(3)]))
    queries = [image_bytes(0), image_bytes(7), image_bytes(8, defect=True)]
    want = ref.predict(pixels(queries))
    scores, maps = ProfileScorer(det, loaded).score(pixels(queries).numpy())
    np.testing.assert_allclose(scores, want.image_scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(maps, want.anomaly_maps.numpy(), atol=1e-5)
    assert scores[0] < 1e-5 < scores[1] < scores[2]  # a reference is normal; the defect scores highest


def test_add_references_and_calibrate_make_new_versions(tmp_path, profile_detector):
    store = ProfileStore(tmp_path, profile_detector)
    v1 = store.create("p", goods(2))
    v2 = store.add_references("p", goods(2, start=2))
    assert (v2.version, v2.num_references) == (2, 4)
    for old, new in zip(v1.banks, v2.banks):
        torch.testing.assert_close(new[: old.shape[0]], old)
        assert new.shape[0] == 2 * old.shape[0]
    assert store.show("p")["images"][3]["file"] == "images/003.png"
    cal = goods(9, start=20)
    v3, c = store.calibrate("p", cal, fpr=0.2)
    scores = ProfileScorer(profile_detector, v2).score(pixels([g.data for g in cal]).numpy())[0]
    want = conformal_threshold(scores, 0.2)
    assert v3.version == 3 and c.n == 9 and c.rank == want.rank == 8
    assert v3.threshold == pytest.approx(want.threshold, abs=1e-6)
    assert store.load("p").threshold == pytest.approx(want.threshold, abs=1e-6)
    assert sorted(os.listdir(tmp_path / "p")) == ["current.json", "v000002", "v000003"]  # v1 pruned
    v4 = store.add_references("p", goods(1, start=40))
    assert v4.manifest["calibration"]["stale"] is True and v4.threshold == v3.threshold


@pytest.mark.parametrize("name", ["", "../x", "a/b", "..", ".hidden", "a\x00b", "tab\tname", "x" * 65, "é"])
def test_invalid_names_are_refused(tmp_path, profile_detector, name):
    with pytest.raises(S2SWError, match="invalid profile name"):
        ProfileStore(tmp_path, profile_detector).create(name, goods(1))
    assert os.listdir(tmp_path) == []  # nothing written (not even the lock: refused before)
    assert check_name("Bolt_M8-v2.1") == "Bolt_M8-v2.1"


def test_limits(tmp_path, profile_detector):
    store = ProfileStore(tmp_path, profile_detector, max_profiles=2, max_references=3)
    store.create("a", goods(2))
    store.create("b", goods(1))
    with pytest.raises(S2SWError, match="holds 2 profiles already, as many as max_profiles allows; delete one first$"):
        store.create("c", goods(1))
    with pytest.raises(S2SWError, match="already exists"):
        store.create("a", goods(1))
    with pytest.raises(S2SWError, match="^4 good images, more than max_references 3$"):
        store.create("d", goods(4))
    with pytest.raises(S2SWError, match="more than max_references 3$"):
        store.add_references("a", goods(2, start=5))
    with pytest.raises(S2SWError, match="good image 'x.png' unusable"):
        store.add_references("b", [GoodImage("x.png", b"not an image")])
    assert store.load("a").version == 1 and store.load("b").version == 1


def test_a_crash_leaves_the_old_profile(tmp_path, profile_detector, monkeypatch):
    import s2swclip.profiles.store as store_module

    store = ProfileStore(tmp_path, profile_detector)
    store.create("p", goods(2))

    def crash(*a, **k):
        raise OSError("simulated crash")

    # crash while the new version is being written: the half-built folder is removed
    monkeypatch.setattr(store_module, "save_bank", crash)
    with pytest.raises(OSError):
        store.add_references("p", goods(1, start=5))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "p")) == ["current.json", "v000001"]
    # crash after the new folder is in place but before the pointer switched: still version 1
    real = store_module.atomic_write_text
    monkeypatch.setattr(store_module, "atomic_write_text",
                        lambda path, text: crash() if path.name == "current.json" else real(path, text))
    with pytest.raises(OSError):
        store.add_references("p", goods(1, start=5))
    monkeypatch.undo()
    assert store.load("p").version == 1 and store.load("p").num_references == 2
    assert store.add_references("p", goods(1, start=6)).version == 2  # the next change goes through
    assert store.load("p").num_references == 3


def test_corrupt_profiles_are_reported_by_name_and_skipped(tmp_path, profile_detector):
    store = ProfileStore(tmp_path, profile_detector)
    for name in ("good", "bad-bank", "bad-image", "bad-manifest", "bad-pointer"):
        store.create(name, goods(1))
    v = tmp_path / "{}" / "v000001"
    bank = str(v).format("bad-bank") + "/references.safetensors"
    with open(bank, "r+b") as f:
        f.seek(-64, os.SEEK_END)
        f.write(b"\xff" * 64)
    (tmp_path / "bad-image" / "v000001" / "images" / "000.png").write_bytes(image_bytes(99))
    (tmp_path / "bad-manifest" / "v000001" / "profile.json").write_text('{"format": "s2swclip-profile"')
    (tmp_path / "bad-pointer" / "current.json").write_text('{"version": 1, "folder": "../../etc"}')
    loaded, problems = ProfileStore(tmp_path, profile_detector).load_all()
    assert list(loaded) == ["good"]
    assert sorted(problems) == ["bad-bank", "bad-image", "bad-manifest", "bad-pointer"]
    assert "references file" in problems["bad-bank"]
    assert "does not have the SHA-256" in problems["bad-image"]
    assert "not valid UTF-8 JSON" in problems["bad-manifest"]
    assert "pointer" in problems["bad-pointer"]


def test_delete(tmp_path, profile_detector):
    store = ProfileStore(tmp_path, profile_detector)
    store.create("p", goods(1))
    store.delete("p")
    assert store.names() == [] and os.listdir(tmp_path) == [".lock"]
    with pytest.raises(S2SWError, match="no profile named 'p'"):
        store.delete("p")


def test_a_profile_with_its_own_prompts_shares_the_backbone(tmp_path, profile_detector):
    import s2swclip
    from s2swclip.model.checkpoint import save_prompts

    save_prompts(tmp_path / "p.safetensors", profile_detector.prompts, {"backbone": "S2SW-Tiny-24L"})
    trained = s2swclip.load_detector("S2SW-Tiny-24L", None, tmp_path / "p.safetensors", image_size=SIZE)
    with torch.no_grad():  # prompts unlike the service's (untrained) ones
        for p in trained.prompts.parameters():
            p.mul_(-3.0)
    save_prompts(tmp_path / "p.safetensors", trained.prompts, {"backbone": "S2SW-Tiny-24L"})
    made = ProfileStore(tmp_path / "root", trained)
    fused = made.create("fused", goods(2))  # trained prompts: the weight defaults to the detector's 0.5
    assert fused.few_shot_weight == 0.5 and fused.manifest["model"]["prompts_sha256"] is not None
    served = ProfileStore(tmp_path / "root", profile_detector)  # the service: other (untrained) prompts
    loaded = served.load("fused")
    sibling = served.detector_for("fused", loaded.manifest)
    assert sibling is not profile_detector and sibling.backbone is profile_detector.backbone  # one backbone
    queries = pixels([image_bytes(7), image_bytes(8, defect=True)]).numpy()
    want = ProfileScorer(trained, fused).score(queries)
    got = served.scorer(loaded).score(queries)
    plain = ProfileScorer(profile_detector, loaded).score(queries)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    assert np.abs(plain[0] - want[0]).max() > 1e-3  # the service's own prompts would score differently
    (tmp_path / "p.safetensors").write_bytes((tmp_path / "p.safetensors").read_bytes() + b" ")
    _, problems = ProfileStore(tmp_path / "root", profile_detector).load_all()
    assert "changed since it was made" in problems["fused"]
