"""``s2swclip.json``: what an exported model folder holds, written by export, checked by the runtime.

An exported folder is untrusted input like any other file a user hands us: the manifest is
read with a size bound, every field is type- and range-checked (numbers finite, within the
ranges an export writes), model files must be plain names inside the folder whose size and
SHA-256 match the manifest, and the manifest covers itself: ``manifest_sha256`` is the SHA-256
of its canonical JSON without that field (:func:`manifest_digest`), so an edited manifest is
refused. (A digest is not a signature: it catches corruption and edits by hand, not someone who
recomputes it; give an exported folder the trust you give the code that runs it.) Manifests of
exports made before the field existed still load, with a warning. The model files are graphs
that ONNX Runtime / OpenVINO execute: a crafted graph can compute anything within its operators,
including a loop that never ends, so the runtime checks their declared inputs and outputs
against the manifest at load time and bounds each inference call in time (see :mod:`.model`).

Layout (``schema_version`` 1)::

    {
      "schema": "s2swclip-export", "schema_version": 1,
      "format": "onnx" | "openvino", "precision": "fp32" | "bf16" | "int8",
      "image_size": S,
      "input": {"name": "images", "layout": "NCHW", "mean": [3], "std": [3], "resize": "bicubic"},
      "outputs": {"scores": "image_scores", "maps": "anomaly_maps"},
      "stages": [{"name", "model", "weights" (OpenVINO) or null, "inputs": [...], "outputs": [...],
                  "inference_precision": "fp32" | "bf16"}, ...],
      "files": {"<name>": {"bytes": int, "sha256": hex}, ...},
      "detector_config": {...}, "threshold": float | null,
      "map_scale": float > 0 (the maps' bound: map / map_scale is on the scores' [0, 1] scale),
      "references": null | {"count": K, "few_shot_weight": w, "layers": [...], "stream",
                    "coreset": f | null, "bank_rows": [...], "bank_bytes", "source": str | null,
                    "shots": int | null, "sha256": hex | null}   (few-shot bank baked into the head),
      "provenance": {...}, "drift": {...} | null, "export": {...},
      "manifest_sha256": hex (SHA-256 of the canonical JSON of everything else)
    }

Stages run in order; each stage's inputs are the folder's input or earlier stages' outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import S2SWError, first_line

__all__ = ["FORMATS", "MANIFEST_NAME", "PRECISIONS", "SCHEMA", "SCHEMA_VERSION", "Manifest", "ManifestInput",
           "Stage", "check_manifest", "file_record", "load_manifest", "manifest_digest", "read_manifest",
           "seal_manifest"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "s2swclip.json"
SCHEMA = "s2swclip-export"
SCHEMA_VERSION = 1
FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
STAGE_PRECISIONS = ("fp32", "bf16")
MAX_MANIFEST_BYTES = 1_000_000
MAX_IMAGE_SIZE = 8192
DIGEST_FIELD = "manifest_sha256"
#: ranges of the numbers an export writes (map_scale: the number of feature layers, 1 to 24)
MAP_SCALE_RANGE = (1e-3, 1e3)
MAX_FILE_BYTES = 1 << 40
MAX_COUNT = 10**7
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_EXTENSIONS = {"onnx": (".onnx", ".onnx.data"), "openvino": (".xml", ".bin")}


class _Invalid(Exception):
    pass


def _get(d: dict, key: str, kind, where: str):
    if key not in d:
        raise _Invalid(f"{where} has no '{key}'")
    value = d[key]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise _Invalid(f"{where}.{key} has the wrong type")
    return value


def _names(values, where: str) -> list[str]:
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and _NAME.match(v) for v in values):
        raise _Invalid(f"{where} must be a non-empty list of plain names")
    return list(values)


def _check_file_name(name: Any, fmt: str, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.startswith("."):
        raise _Invalid(f"{where} must be a plain file name inside the folder")
    if not name.endswith(_EXTENSIONS[fmt]):
        raise _Invalid(f"{where} {name!r} is not a {fmt} model file")
    return name


def check_manifest(data: Any) -> dict[str, Any]:
    """Validate a parsed manifest (types, ranges, names, the stage chain). Raises ValueError
    naming the first problem; returns ``data``."""
    try:
        if not isinstance(data, dict):
            raise _Invalid("it is not a JSON object")
        if data.get("schema") != SCHEMA:
            raise _Invalid(f"it is not an s2swclip export manifest (schema is not {SCHEMA!r})")
        version = _get(data, "schema_version", int, "manifest")
        if version != SCHEMA_VERSION:
            raise _Invalid(f"schema_version {version} is not supported (this version reads {SCHEMA_VERSION}); "
                           "export the model again with this version")
        fmt = _get(data, "format", str, "manifest")
        if fmt not in FORMATS:
            raise _Invalid(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        if _get(data, "precision", str, "manifest") not in PRECISIONS:
            raise _Invalid(f"precision is not one of {', '.join(PRECISIONS)}")
        size = _get(data, "image_size", int, "manifest")
        if not 1 <= size <= MAX_IMAGE_SIZE:
            raise _Invalid(f"image_size {size} is outside 1..{MAX_IMAGE_SIZE}")
        inp = _get(data, "input", dict, "manifest")
        _names([_get(inp, "name", str, "input")], "input.name")
        for key in ("mean", "std"):
            v = _get(inp, key, list, "input")
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                      for x in v):
                raise _Invalid(f"input.{key} must be three finite numbers")
        outs = _get(data, "outputs", dict, "manifest")
        _names([_get(outs, "scores", str, "outputs"), _get(outs, "maps", str, "outputs")], "outputs")
        threshold = data.get("threshold")
        if threshold is not None:
            _get(data, "threshold", float, "manifest")
        lo, hi = MAP_SCALE_RANGE
        if not lo <= _get(data, "map_scale", float, "manifest") <= hi:
            raise _Invalid(f"map_scale must be a number in [{lo:g}, {hi:g}]")
        if "references" not in data:
            raise _Invalid("manifest has no 'references'")
        if data["references"] is not None:
            _check_references(data["references"])
        for key in ("detector_config", "provenance"):
            _get(data, key, dict, "manifest")
        files = _get(data, "files", dict, "manifest")
        for name, rec in files.items():
            _check_file_name(name, fmt, "a file name in 'files'")
            if not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int) \
                    or not 0 <= rec["bytes"] <= MAX_FILE_BYTES \
                    or not isinstance(rec.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", rec["sha256"]):
                raise _Invalid(f"files[{name!r}] must hold 'bytes' and a hex 'sha256'")
        stages = _get(data, "stages", list, "manifest")
        if not 1 <= len(stages) <= 4:
            raise _Invalid("there must be 1 to 4 stages")
        available = {inp["name"]}
        for i, st in enumerate(stages):
            where = f"stages[{i}]"
            if not isinstance(st, dict):
                raise _Invalid(f"{where} is not an object")
            for key in ("model", "weights") if fmt == "openvino" else ("model",):
                name = _check_file_name(st.get(key), fmt, f"{where}.{key}")
                if name not in files:
                    raise _Invalid(f"{where}.{key} {name!r} is not listed in 'files'")
            ins = _names(st.get("inputs"), f"{where}.inputs")
            missing = [n for n in ins if n not in available]
            if missing:
                raise _Invalid(f"{where} needs {missing[0]!r}, which no earlier stage produces")
            available |= set(_names(st.get("outputs"), f"{where}.outputs"))
            if st.get("inference_precision") not in STAGE_PRECISIONS:
                raise _Invalid(f"{where}.inference_precision is not one of {', '.join(STAGE_PRECISIONS)}")
        for name in (outs["scores"], outs["maps"]):
            if name not in available:
                raise _Invalid(f"no stage produces the output {name!r}")
    except _Invalid as e:
        raise ValueError(str(e)) from None
    return data


def _check_references(ref: Any) -> None:
    """The ``references`` entry: what the few-shot bank baked into the head was made from."""
    where = "references"
    if not isinstance(ref, dict):
        raise _Invalid(f"{where} must be null or an object")
    if not 1 <= _get(ref, "count", int, where) <= MAX_COUNT:
        raise _Invalid(f"{where}.count must be at least 1 and at most {MAX_COUNT}")
    if not 0 <= _get(ref, "few_shot_weight", float, where) <= 1:
        raise _Invalid(f"{where}.few_shot_weight must be in [0, 1]")
    layers, rows = _get(ref, "layers", list, where), _get(ref, "bank_rows", list, where)
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in layers):
        raise _Invalid(f"{where}.layers must be a non-empty list of layer numbers")
    if len(rows) != len(layers) or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_COUNT * 10**4
                                           for x in rows):
        raise _Invalid(f"{where}.bank_rows must hold one positive row count per layer")
    if _get(ref, "stream", str, where) not in ("plain", "dpam"):
        raise _Invalid(f"{where}.stream must be 'plain' or 'dpam'")
    if not 0 <= _get(ref, "bank_bytes", int, where) <= MAX_FILE_BYTES:
        raise _Invalid(f"{where}.bank_bytes must be >= 0 and at most {MAX_FILE_BYTES}")
    for key, kind in (("coreset", float), ("source", str), ("shots", int), ("sha256", str)):
        if key not in ref:
            raise _Invalid(f"{where} has no '{key}'")
        if ref[key] is not None:
            _get(ref, key, kind, where)
    if ref["coreset"] is not None and not 0 < ref["coreset"] <= 1:
        raise _Invalid(f"{where}.coreset must be null or a fraction in (0, 1]")
    if ref["shots"] is not None and not 1 <= ref["shots"] <= MAX_COUNT:
        raise _Invalid(f"{where}.shots must be null or at least 1")
    if ref["sha256"] is not None and not re.fullmatch(r"[0-9a-f]{64}", ref["sha256"]):
        raise _Invalid(f"{where}.sha256 must be null or a hex SHA-256")


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file (read in 8 MiB chunks)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def read_manifest(folder: str | os.PathLike, *, verify_files: bool = True) -> dict[str, Any]:
    """Read and check ``folder/s2swclip.json`` and the model files it lists.

    Raises:
        S2SWError: one line naming the folder and what is wrong (missing folder, no or
            malformed manifest, a file missing, of the wrong size or with another SHA-256).
    """
    root = Path(os.path.expanduser(os.fspath(folder)))
    hint = "point it at a folder that the export wrote"
    if not root.is_dir():
        raise S2SWError(f"model {root}: no such folder; {hint}", fields=("model",))
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise S2SWError(f"model {root}: no {MANIFEST_NAME} in this folder, so it is not an exported "
                        f"s2swclip model; {hint}", fields=("model",))
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise S2SWError(f"model {root}: cannot read {MANIFEST_NAME}: {first_line(e)}", fields=("model",)) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise S2SWError(f"model {root}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes; "
                        f"it is not an s2swclip manifest", fields=("model",))
    try:
        data = check_manifest(json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                                         parse_float=_finite_float))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise S2SWError(f"model {root}: {MANIFEST_NAME} is not valid JSON; {hint}", fields=("model",)) from None
    except ValueError as e:
        raise S2SWError(f"model {root}: invalid {MANIFEST_NAME}: {e}", fields=("model",)) from None
    _check_digest(root, data)
    for name, rec in data["files"].items():
        p = root / name
        if p.is_symlink() or not p.is_file():
            raise S2SWError(f"model {root}: model file {name} is missing (or not a regular file); "
                            f"copy the whole exported folder", fields=("model",))
        if p.stat().st_size != rec["bytes"]:
            raise S2SWError(f"model {root}: model file {name} has {p.stat().st_size} bytes, the manifest "
                            f"says {rec['bytes']}: the folder is incomplete or corrupt; export again",
                            fields=("model",))
        if verify_files and file_record(p)["sha256"] != rec["sha256"]:
            raise S2SWError(f"model {root}: model file {name} does not match its SHA-256 in "
                            f"{MANIFEST_NAME}: the folder is corrupt or was changed; export again", fields=("model",))
    return data


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def manifest_digest(data: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of ``data`` without
    ``manifest_sha256``: what that field holds."""
    body = {k: v for k, v in data.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``manifest_sha256`` (set last, over everything else)."""
    return {**{k: v for k, v in data.items() if k != DIGEST_FIELD}, DIGEST_FIELD: manifest_digest(data)}


def _check_digest(root: Path, data: dict[str, Any]) -> None:
    """The manifest's own digest (exports made before it existed: a warning)."""
    recorded = data.get(DIGEST_FIELD)
    if recorded is None:
        log.warning("model %s: %s has no %s (exported by an older version): the manifest itself is not "
                    "covered by a digest; export the model again to cover it", root, MANIFEST_NAME, DIGEST_FIELD)
        return
    if not isinstance(recorded, str) or recorded != manifest_digest(data):
        raise S2SWError(f"model {root}: {MANIFEST_NAME} does not match its {DIGEST_FIELD}: the manifest was "
                        f"changed after export (or is corrupt); export the model again", fields=("model",))


# ------------------------------------------------------------------------------ typed manifest
@dataclass(frozen=True)
class ManifestInput:
    """The model input: its name, layout and the preprocessing it expects."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    dtype: str = "float32"
    resize: str = "bicubic"


@dataclass(frozen=True)
class Stage:
    """One model file run in turn: its inputs are the folder's input or earlier outputs."""

    name: str
    model: str
    weights: str | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    inference_precision: str


@dataclass(frozen=True)
class Manifest:
    """``s2swclip.json`` as typed fields (layout: the module docstring), written with
    :meth:`to_dict` and read with :meth:`from_dict` (after :func:`check_manifest`); format
    version :data:`SCHEMA_VERSION` (``schema_version``). ``files``: name -> ``{"bytes",
    "sha256"}``; ``references``, ``detector_config``, ``provenance``, ``drift``, ``export``: the
    records described in the module docstring."""

    format: str
    precision: str
    image_size: int
    input: ManifestInput
    scores_output: str
    maps_output: str
    stages: tuple[Stage, ...]
    files: dict[str, dict[str, Any]]
    detector_config: dict[str, Any]
    threshold: float | None
    map_scale: float
    references: dict[str, Any] | None
    provenance: dict[str, Any]
    drift: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout (checked: :func:`check_manifest`)."""
        d = {"schema": SCHEMA, "schema_version": self.schema_version, "format": self.format,
             "precision": self.precision, "image_size": self.image_size,
             "input": {**asdict(self.input), "mean": list(self.input.mean), "std": list(self.input.std)},
             "outputs": {"scores": self.scores_output, "maps": self.maps_output},
             "stages": [{**asdict(st), "inputs": list(st.inputs), "outputs": list(st.outputs)} for st in self.stages],
             "files": self.files, "detector_config": self.detector_config, "threshold": self.threshold,
             "map_scale": self.map_scale, "references": self.references, "provenance": self.provenance,
             "drift": self.drift}
        if self.export is not None:
            d["export"] = self.export
        return check_manifest(d)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """The manifest of parsed JSON; ValueError naming the first problem."""
        d = check_manifest(data)
        inp = d["input"]
        stages = tuple(Stage(str(st.get("name", f"stage{i}")), st["model"],
                             st.get("weights"), tuple(st["inputs"]), tuple(st["outputs"]), st["inference_precision"])
                       for i, st in enumerate(d["stages"]))
        return cls(d["format"], d["precision"], int(d["image_size"]),
                   ManifestInput(inp["name"], tuple(inp["mean"]), tuple(inp["std"]), inp.get("layout", "NCHW"),
                                 inp.get("dtype", "float32"), inp.get("resize", "bicubic")),
                   d["outputs"]["scores"], d["outputs"]["maps"], stages, d["files"], d["detector_config"],
                   d.get("threshold"), float(d["map_scale"]), d["references"], d["provenance"], d.get("drift"),
                   d.get("export"), int(d["schema_version"]))


def load_manifest(folder: str | os.PathLike, *, verify_files: bool = True) -> Manifest:
    """:func:`read_manifest`, as a :class:`Manifest`."""
    return Manifest.from_dict(read_manifest(folder, verify_files=verify_files))
