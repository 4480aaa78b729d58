"""ScorerSpec: what a scoring worker loads, as plain picklable data built where it runs."""

import dataclasses
import pickle

import numpy as np
import pytest
from PIL import Image

from s2swclip.errors import S2SWError
from s2swclip.inference.spec import ScorerSpec
from s2swclip.specs import DetectorSpec, SpecError


def test_spec_is_plain_data_and_builds_the_detector_of_load_detector(tmp_path, monkeypatch):
    import s2swclip

    monkeypatch.chdir(tmp_path)
    spec = ScorerSpec.detector("S2SW-Tiny-24L", None, None, image_size=56)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and hash(again) == hash(spec)
    assert spec.describe() == {"kind": "detector", "backbone": "S2SW-Tiny-24L", "weights": None, "prompts": None,
                               "image_size": 56, "device": "cpu", "precision": "fp32", "preset": None,
                               "cache_dir": None}
    scorer = again.build()
    assert scorer.image_size == spec.image_size() == 56 and scorer.map_scale == 4
    ref = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=56, untrained_ok=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 56, 56)).astype(np.float32)
    scores, maps = scorer.score(x)
    import torch

    out = ref.predict(torch.from_numpy(x))
    assert np.array_equal(scores, out.image_scores.numpy()) and np.array_equal(maps, out.anomaly_maps.numpy())


def test_image_size_without_building():
    assert ScorerSpec.detector("S2SW-Tiny-24L", None).image_size() == 518
    assert ScorerSpec.detector("S2SW-Tiny-24L", None, preset="visa-to-all").image_size() == 410
    assert ScorerSpec.detector("S2SW-Tiny-24L", None, preset="visa-to-all", image_size=96).image_size() == 96


def test_local_files_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"x")
    spec = ScorerSpec.detector("S2SW-Tiny-24L", "w.safetensors", "nope.safetensors", cache_dir="cache")
    s = spec.spec
    assert s.weights == str(tmp_path / "w.safetensors")
    assert s.prompts == "nope.safetensors"  # not there: kept as given, check() names it
    assert s.cache_dir == str(tmp_path / "cache")
    assert spec.replace(device="cuda").spec == dataclasses.replace(s, device="cuda")


@pytest.mark.parametrize("kwargs, needle", [
    ({"weights": "gone/w.safetensors"}, "weights file not found"),
    ({"prompts": "gone.safetensors"}, "gone.safetensors"),
    ({"backbone": "no-such-net"}, "unknown backbone"),
])
def test_check_names_what_is_wrong_before_any_worker_starts(tmp_path, kwargs, needle):
    args = {"backbone": "S2SW-Tiny-24L", "weights": None, **kwargs}
    spec = ScorerSpec.detector(args.pop("backbone"), args.pop("weights"), **args)
    with pytest.raises(S2SWError, match=needle):
        spec.check()


def test_wrong_fields_are_refused_when_the_spec_is_made_naming_the_field():
    with pytest.raises(SpecError, match=r"^precision must be one of fp32, bf16, fp16, got 'fp8'$") as err:
        ScorerSpec.detector("S2SW-Tiny-24L", None, precision="fp8")
    assert err.value.field == "precision"
    with pytest.raises(SpecError, match="^few_shot_weight must be a number >= 0 and <= 1, got 1.5$"):
        DetectorSpec("S2SW-Tiny-24L", None, few_shot_weight=1.5)
    with pytest.raises(SpecError, match="unknown detector option 'wavelet_lambdaa'"):
        ScorerSpec.detector("S2SW-Tiny-24L", None, wavelet_lambdaa=0.5)
    assert pickle.loads(pickle.dumps(err.value)).field == "precision"


def test_digests_are_of_the_content_of_every_model_input(tmp_path):
    import hashlib

    (tmp_path / "p.safetensors").write_bytes(b"prompts")
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(refs / f"{i}.png")
    spec = ScorerSpec.detector("S2SW-Tiny-24L", None, tmp_path / "p.safetensors", reference=refs, shots=2)
    sha = [hashlib.sha256((refs / f"{i}.png").read_bytes()).digest() for i in range(2)]
    assert spec.digests() == {"prompts": hashlib.sha256(b"prompts").hexdigest(),
                              "reference": hashlib.sha256(b"".join(sha)).hexdigest()}
    (tmp_path / "p.safetensors").write_bytes(b"other prompts")  # same path, other content
    assert spec.digests()["prompts"] == hashlib.sha256(b"other prompts").hexdigest()


def test_engine_and_spec_import_no_torch_until_a_detector_is_built():
    """Decoding tasks and the driver's planning stay torch-free, so that workers of a torch-free
    scorer kind need no PyTorch."""
    import subprocess
    import sys
    from pathlib import Path

    import s2swclip

    code = ("import sys; import s2swclip.inference.ray_engine, s2swclip.inference.shards; "
            "from s2swclip.inference.spec import ScorerSpec; "
            "ScorerSpec.detector('S2SW-Tiny-24L', None, preset='visa-to-all').image_size(); "
            "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))")
    src = str(Path(s2swclip.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_exported_spec_is_plain_data_and_checks_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = ScorerSpec.exported("exported")  # no folder yet: nothing recorded about it, check() says what is wrong
    assert spec.describe() == {"kind": "exported", "model": str(tmp_path / "exported"), "manifest_sha256": None}
    assert pickle.loads(pickle.dumps(spec)) == spec
    for call in (spec.check, spec.image_size, spec.build):
        with pytest.raises(S2SWError, match=f"^model {tmp_path / 'exported'}: no such folder"):
            call()
    (tmp_path / "exported").mkdir()
    with pytest.raises(S2SWError, match="no s2swclip.json in this folder"):
        ScorerSpec.exported(tmp_path / "exported").check()


def test_describe_keeps_a_zero_few_shot_weight_and_the_specs_are_frozen():
    spec = DetectorSpec("S2SW-Tiny-24L", None, reference="good", few_shot_weight=0.0, options={"sigma": 2})
    d = spec.describe()
    assert d["few_shot_weight"] == 0.0 and d["reference"] == "good" and d["options"] == {"sigma": 2}
    assert spec.detector_options() == {"sigma": 2, "few_shot_weight": 0.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.prompts = "other"
