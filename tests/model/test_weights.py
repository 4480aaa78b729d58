"""Weights files are untrusted: TorchScript archives are read without running anything in them.

``torch.jit.load`` appears here only as the reference that the package's reader must match, and
to prove that the hostile fixtures are armed (in a subprocess).
"""

import ast
import json
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

import s2swclip
from s2swclip.errors import S2SWError
from s2swclip.model.torchfiles import UnreadableFile, read_torchscript_state_dict
from s2swclip.model.weights import create_clip, load_weights_file

from helpers import make_images
from untrusted_files import forbidden_pickle, jit_load_in_subprocess, save_forbidden_global_archive, \
    save_hostile_archive


def _assert_same_state_dict(got, ref):
    assert list(got) == list(ref)  # same keys, same order
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].stride() == v.stride(), k
        assert torch.equal(got[k], v), k


@pytest.fixture(scope="module")
def traced_fp16(tmp_path_factory):
    """A traced half-precision tiny CLIP (like OpenAI's released archives) and its plain state dict."""
    d = tmp_path_factory.mktemp("traced")
    clip, _ = create_clip("S2SW-Tiny-24L", None, seed=7)
    clip = clip.half()
    torch.save({k: v.contiguous() for k, v in clip.state_dict().items()}, d / "plain.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(clip, {"encode_image": (torch.ones(1, 3, 336, 336).half(),)})
        torch.jit.save(traced, str(d / "traced.pt"))
    return d


def test_traced_archive_reads_bit_identical_to_torch_jit_load(traced_fp16):
    got = read_torchscript_state_dict(traced_fp16 / "traced.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.jit.load(str(traced_fp16 / "traced.pt")).state_dict()
    _assert_same_state_dict(got, ref)
    assert got["visual.conv1.weight"].dtype == torch.float16
    assert "transformer.resblocks.0.attn.in_proj_weight" in got and "attn_mask" in got


def test_traced_archive_gives_the_detector_of_the_plain_state_dict(traced_fp16):
    plain = load_weights_file(traced_fp16 / "plain.pt")
    archive = load_weights_file(traced_fp16 / "traced.pt")
    assert set(plain) == set(archive) and "attn_mask" not in archive
    assert all(torch.equal(plain[k], archive[k]) for k in plain)
    a = s2swclip.load_detector("S2SW-Tiny-24L", str(traced_fp16 / "traced.pt"), None, image_size=224)
    b = s2swclip.load_detector("S2SW-Tiny-24L", str(traced_fp16 / "plain.pt"), None, image_size=224)
    rand = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224)
    images = make_images(2, 224, seed=3)
    pa, pb = a.predict(images), b.predict(images)
    assert torch.equal(pa.anomaly_maps, pb.anomaly_maps) and torch.equal(pa.image_scores, pb.image_scores)
    assert not torch.equal(pa.anomaly_maps, rand.predict(images).anomaly_maps)  # the weights were used


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, bias=False)
        self.register_buffer("buf", torch.arange(4.0))
        self.plain = torch.ones(2)  # a tensor attribute, neither parameter nor buffer
        self.ints: List[int] = [1, 2, 3]
        self.floats: List[float] = [1.5]
        self.flags: List[bool] = [True]
        self.tensors: List[torch.Tensor] = [torch.zeros(2)]
        self.table: Dict[str, torch.Tensor] = {"a": torch.zeros(1)}
        self.device = torch.device("cpu")

    def forward(self, x):
        return (self.lin(x) + self.plain.sum() + self.ints[0] + self.table["a"] + self.floats[0]
                + float(self.flags[0]) + self.tensors[0].sum())


class _Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Inner()
        self.w = torch.nn.Parameter(torch.randn(2, 3).t())  # non-contiguous
        self.emb = torch.nn.Embedding(5, 2)
        self.register_buffer("fp16", torch.randn(3).half())
        self.register_buffer("absent", None)
        self.maybe: Optional[torch.Tensor] = None

    def forward(self, x):
        return self.inner(x) + self.w.sum() + self.emb.weight.sum()


def test_scripted_module_reads_like_torch_jit_load(tmp_path):
    """Typed lists/dicts, a device, plain tensor attributes (left out), None buffers, strides."""
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_Outer()), str(path))
        ref = torch.jit.load(str(path)).state_dict()
    got = read_torchscript_state_dict(path)
    _assert_same_state_dict(got, ref)
    assert list(got) == ["w", "fp16", "inner.buf", "inner.lin.weight", "emb.weight"]


def _assert_one_line(err: S2SWError, *needles):
    msg = str(err)
    assert "\n" not in msg and "weights_only" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_hostile_archive_is_armed(tmp_path):
    path, marker = tmp_path / "hostile.pt", tmp_path / "marker"
    save_hostile_archive(path, marker)
    assert not marker.exists()  # saving does not run __setstate__
    done = jit_load_in_subprocess(path)
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # torch.jit.load ran the archive's code


def test_hostile_archive_is_refused_and_nothing_runs(tmp_path):
    path, marker = tmp_path / "hostile.pt", tmp_path / "marker"
    save_hostile_archive(path, marker)  # also registers the op here: torch.jit.load would succeed
    with pytest.raises(S2SWError) as e:
        load_weights_file(path)
    _assert_one_line(e.value, str(path), "__setstate__")
    with pytest.raises(S2SWError) as e:
        s2swclip.load_detector("S2SW-Tiny-24L", str(path), None, image_size=224)
    _assert_one_line(e.value, str(path))
    with pytest.raises(S2SWError) as e:
        s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    _assert_one_line(e.value, str(path), "TorchScript archive")
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval")])
def test_forbidden_global_is_refused_without_running(tmp_path, module, name):
    path, marker = tmp_path / "evil.pt", tmp_path / "marker"
    pkl = save_forbidden_global_archive(path, module, name, marker)
    armed = subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                           input=pkl, capture_output=True, timeout=60)
    assert armed.returncode == 0 and marker.exists()  # plain unpickling runs it
    marker.unlink()
    with pytest.raises(S2SWError) as e:
        load_weights_file(path)
    _assert_one_line(e.value, str(path), f"{module}.{name}")
    assert not marker.exists()


def test_forbidden_global_in_a_torch_save_file_is_refused(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "marker"
    path.write_bytes(forbidden_pickle("os", "system", marker))
    with pytest.raises(S2SWError) as e:
        load_weights_file(path)
    _assert_one_line(e.value, str(path), "system")
    assert not marker.exists()


# ---------------------------------------------------------------- hand-built TorchScript archives
_SOURCE = 'class M(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n  w : Tensor\n  training : bool\n'


def _ints(xs):
    return b"(" + b"".join(b"I%d\n" % x for x in xs) + b"t"


def _tensor(key="0", numel=2, offset=0, size=(2,), stride=(1,), storage=b"FloatStorage"):
    """Pickle opcodes of ``_rebuild_tensor_v2`` on storage ``key``, as torch.jit.save writes them."""
    pid = b"(Vstorage\nctorch\n" + storage + b"\nV" + key.encode() + b"\nVcpu\nI%d\ntQ" % numel
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"I%d\n" % offset + _ints(size) + _ints(stride)
            + b"\x89ccollections\nOrderedDict\n)Rt" + b"R")


def _module_pickle(attrs: bytes = None, cls=b"M", memo=False) -> bytes:
    attrs = (b"Vw\n" + _tensor() + b"Vtraining\n\x89") if attrs is None else attrs
    return (b"\x80\x02c__torch__\n" + cls + b"\n)\x81" + (b"q\x00" if memo else b"")
            + b"}(" + attrs + b"ub.")


def _archive(path, pkl=None, records=None, source=_SOURCE, byteorder=b"little", deflate=()):
    records = {"0": struct.pack("<2f", 1.0, 2.0)} if records is None else records
    def method(name):
        return zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/data.pkl", _module_pickle() if pkl is None else pkl, compress_type=method("data.pkl"))
        z.writestr("a/code/__torch__.py", source, compress_type=method("code"))
        for key, data in records.items():
            z.writestr(f"a/data/{key}", data, compress_type=method(key))
        z.writestr("a/constants.pkl", b"\x80\x02).")
        z.writestr("a/byteorder", byteorder)
    return path


def test_hand_built_archive_reads(tmp_path):
    sd = read_torchscript_state_dict(_archive(tmp_path / "ok.pt"))
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.tensor([1.0, 2.0]))
    strided = _module_pickle(b"Vw\n" + _tensor(numel=6, offset=1, size=(2, 2), stride=(1, 2)))
    sd = read_torchscript_state_dict(_archive(tmp_path / "view.pt", strided,
                                              {"0": struct.pack("<6f", *range(6))}))
    assert torch.equal(sd["w"], torch.tensor([[1.0, 3.0], [2.0, 4.0]]))


@pytest.mark.parametrize("kwargs, reason", [
    (dict(records={}), "data/0 is missing"),
    (dict(records={"0": b"\0" * 12}), "holds 12 bytes"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor(numel=10 ** 12))), "holds 8 bytes"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor(size=(3,)))), "past its storage"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor(offset=2, size=(1,)))), "past its storage"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor(storage=b"UntypedStorage"))), "torch.UntypedStorage"),
    (dict(deflate=("0",)), "compressed"),
    (dict(byteorder=b"big"), "big"),
    (dict(source=""), "no source for class"),
    (dict(source=_SOURCE.replace('["w", ]', '["w", os.system]')), "declares malformed __parameters__"),
    (dict(source=_SOURCE.replace('["w", ]', '[1]')), "declares malformed __parameters__"),
    (dict(source=_SOURCE + "  def __setstate__(self, state: int) -> NoneType:\n    return None\n"),
     "__setstate__"),
    (dict(pkl=b"\x80\x02c__torch__\nM\n)\x81(I1\ntb."), "no attribute dict"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor() + b"Vself\nh\x00", memo=True)), "loops"),
    (dict(pkl=_module_pickle(b"Vtraining\n\x89")), "lacks its tensor"),
    (dict(pkl=_module_pickle(b"Vw\nI3\n")), "is not a tensor"),
    (dict(pkl=b"\x80\x02(I1\nt."), "does not hold a module"),
    (dict(pkl=b"\x80\x02c__torch__\nM\n)\x81}(Vw\n"), "malformed data.pkl"),
    # BUILD on the reader's objects: a tensor (Tensor.__setstate__ would call set_), a storage
    # type and an allowed function (both shared by every load)
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor() + b"(I0\nI0\n(I2\nt(I1\nttb")), "modify an object"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor() + b"Vx\nctorch\nFloatStorage\n}(Vdtype\nI1\nub")),
     "modify an object"),
    (dict(pkl=_module_pickle(b"Vw\n" + _tensor() + b"Vx\nctorch.jit._pickle\nbuild_intlist\n}(Vz\nI1\nub")),
     "modify an object"),
])
def test_malformed_archive_is_refused(tmp_path, kwargs, reason):
    path = _archive(tmp_path / "bad.pt", **kwargs)
    with pytest.raises(UnreadableFile, match=reason):
        read_torchscript_state_dict(path)
    with pytest.raises(S2SWError) as e:
        load_weights_file(path)
    _assert_one_line(e.value, str(path), "cannot read weights file")
    # and the reader is unchanged for the next file
    sd = read_torchscript_state_dict(_archive(tmp_path / "ok.pt"))
    assert sd["w"].dtype == torch.float32 and torch.equal(sd["w"], torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("record", ["data.pkl", "code"])
def test_records_inflating_beyond_the_limits_are_refused(tmp_path, record):
    """A few kB of deflated padding that would inflate past the reader's 64 MiB limits."""
    padding = 65 << 20
    if record == "data.pkl":
        path = _archive(tmp_path / "bomb.pt", pkl=_module_pickle() + b"\0" * padding, deflate=(record,))
    else:
        path = _archive(tmp_path / "bomb.pt", source=_SOURCE + " " * padding, deflate=(record,))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UnreadableFile, match="exceeds the reader's size limit"):
        read_torchscript_state_dict(path)


def test_truncated_archive_is_refused(tmp_path):
    data = _archive(tmp_path / "ok.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(S2SWError) as e:
        load_weights_file(path)
    _assert_one_line(e.value, str(path), "cannot read weights file")


@pytest.mark.parametrize("content", [b"", b"junk that is not a checkpoint", b"PK\x03\x04garbage"])
def test_unreadable_weights_file_is_one_clear_line(tmp_path, content):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(S2SWError) as e:
        load_weights_file(path)
    _assert_one_line(e.value, str(path), "cannot read weights file")


def test_package_never_calls_torch_jit_load_or_unsafe_torch_load():
    """No ``*.jit.load(...)`` call and no ``weights_only=False`` anywhere in the package."""
    package = Path(s2swclip.__file__).parent
    offenders = []
    for file in package.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "load" and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "jit":
                offenders.append(f"{file.name}:{node.lineno} jit.load")
            if isinstance(node, ast.keyword) and node.arg == "weights_only" and \
                    not (isinstance(node.value, ast.Constant) and node.value.value is True):
                offenders.append(f"{file.name}:{node.lineno} weights_only")
    assert not offenders


# ------------------------------------------------------------------------------ backbone configs
def _tiny_config():
    from s2swclip.model.weights import _CONFIG_DIR

    return json.loads((_CONFIG_DIR / "S2SW-Tiny-24L.json").read_text())


def _edit(cfg, path, value):
    *parents, key = path
    d = cfg
    for p in parents:
        d = d[p]
    d[key] = value
    return cfg


@pytest.mark.parametrize("path,value,needle", [
    (["vision_cfg"], [1, 2], "'vision_cfg' and 'text_cfg' must be JSON objects"),
    (["vision_cfg", "width"], "64", 'vision_cfg.width must be an integer in 1..16384, got "64"'),
    (["vision_cfg", "patch_size"], 0, "vision_cfg.patch_size must be an integer in 1..1024, got 0"),
    (["vision_cfg", "layers"], 1.5, "vision_cfg.layers must be an integer"),
    (["text_cfg", "vocab_size"], -3, "text_cfg.vocab_size must be an integer"),
    (["vision_cfg", "mlp_ratio"], "4", "vision_cfg.mlp_ratio must be a number"),
    (["vision_cfg", "patch_size"], 500, "patch_size is larger than vision_cfg.image_size"),
    (["vision_cfg", "no_such_option"], 1, "cannot build a CLIP model"),
])
def test_a_backbone_config_with_wrong_types_or_values_is_one_line(tmp_path, path, value, needle):
    from s2swclip.model.weights import create_clip

    cfg_path = tmp_path / "bad.json"
    cfg_path.write_text(json.dumps(_edit(_tiny_config(), path, value)))
    with pytest.raises(S2SWError) as e:
        create_clip(str(cfg_path), None)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_config_beyond_the_available_memory_is_refused_before_building(tmp_path, monkeypatch):
    import s2swclip.arrays
    from s2swclip.model.weights import create_clip

    cfg = _edit(_edit(_tiny_config(), ["vision_cfg", "width"], 4096), ["vision_cfg", "layers"], 28)
    (tmp_path / "wide.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(s2swclip.arrays, "available_memory", lambda: 8 * 10**9)
    with pytest.raises(S2SWError, match=r"about 22\.\d GB of parameters, but only 8\.0 GB"):
        create_clip(str(tmp_path / "wide.json"), None)


def test_the_parameter_estimate_counts_the_real_model():
    from s2swclip.model.weights import _INT_FIELDS, create_clip, parameter_bytes

    cfg = _tiny_config()
    values = {f: (cfg if "." not in f else cfg[f.split(".")[0]]).get(f.split(".")[-1]) for f in _INT_FIELDS}
    model, _ = create_clip("S2SW-Tiny-24L", None)
    real = 4 * sum(p.numel() for p in model.parameters())
    est = parameter_bytes({k: v for k, v in values.items() if v is not None})
    assert abs(est - real) / real < 0.02, (est, real)  # layer norms and biases are left out
