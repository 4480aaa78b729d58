"""``s2swclip export``: a loaded detector -> a folder the torch-free runtime loads.

The folder is built in a temporary sibling and renamed into place at the end, so a failed or
interrupted export never leaves a half-written model folder. After writing the model files,
the export loads them with the runtime (:mod:`s2swclip.deploy.runtime`) and measures the drift
against the float32 PyTorch detector on (up to 8 of) the calibration images (or, without
``--calibrate``, on 4 seeded random inputs), records it in ``s2swclip.json`` and returns it.

A detector with references (the few-normal-shot mode) is exported with its memory bank baked
into the scoring head (float32 constants, :mod:`.graph`); the manifest records the references
(count, weight, layers, stream, coreset, bank rows, and what they were read from with a digest
of the files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ... import __version__
from ...data.images import OPENAI_MEAN, OPENAI_STD, ImageError, decode_for_model
from ...errors import S2SWError
from ...fileio import atomic_write_text, check_output_dir
from ...model.detector import S2SWDetector
from ...specs import check_threshold
from ..runtime.manifest import (FORMATS, MANIFEST_NAME, PRECISIONS, Manifest, ManifestInput, Stage, file_record,
                                seal_manifest)
from .graph import IMAGES, MAPS, SCORES, DetectorGraph

__all__ = ["Drift", "ExportResult", "ReferenceSource", "check_export_request", "export_detector",
           "references_record"]

log = logging.getLogger(__name__)

#: Drift is measured on this many seeded random inputs when no calibration folder is given...
RANDOM_DRIFT_IMAGES = 4
#: ... and on at most this many of the calibration images otherwise.
MAX_DRIFT_IMAGES = 8
#: Parity the float32 exports are held to (PyTorch ``predict`` at the same weights).
FP32_TOLERANCE = {"scores": 1e-5, "maps": 1e-4}


@dataclass
class Drift:
    """Largest differences of the exported model from the float32 PyTorch detector."""

    max_abs_score: float
    max_abs_map: float
    images: str  # "calibration" or "random"
    n_images: int

    def describe(self) -> str:
        return (f"drift vs PyTorch fp32 on {self.n_images} {self.images} image(s): "
                f"max |d score| {self.max_abs_score:.2e}, max |d map| {self.max_abs_map:.2e}")


@dataclass
class ExportResult:
    folder: Path
    manifest: Manifest
    drift: Drift
    seconds: float


@dataclass
class ReferenceSource:
    """What the detector's references were read from, for the manifest: ``source`` as given
    (a folder, glob pattern, image or references file), the ``files`` read in their order
    (:func:`~s2swclip.inference.references.apply_references` returns them), ``shots``."""

    source: str | os.PathLike
    files: Sequence[str | os.PathLike]
    shots: int | None = None


def references_record(det: S2SWDetector, source: ReferenceSource | None = None) -> dict[str, Any] | None:
    """The manifest's ``references`` entry of ``det`` (None without references).

    ``sha256`` is the SHA-256 of the concatenated SHA-256 digests of ``source.files`` in their
    order (one value for the whole set; ``source`` and ``shots`` say how to list them again);
    ``source``, ``shots`` and ``sha256`` are null for references set from tensors.
    """
    bank = det.references
    if not bank.num_references:
        return None
    rows = [int(b.shape[0]) for b in bank.banks]
    record = {"count": int(bank.num_references), "few_shot_weight": float(det.config.few_shot_weight),
              "layers": list(bank.layers), "stream": bank.stream, "coreset": bank.coreset, "bank_rows": rows,
              "bank_bytes": sum(rows) * int(bank.banks[0].shape[1]) * 4,  # float32 in the head
              "source": None, "shots": None, "sha256": None}
    if source is not None:
        digest = hashlib.sha256()
        for f in source.files:
            digest.update(bytes.fromhex(file_record(f)["sha256"]))
        record.update(source=os.path.abspath(os.path.expanduser(os.fspath(source.source))), shots=source.shots,
                      sha256=digest.hexdigest())
    return record


def check_export_request(fmt: str, precision: str, calibrate_dir, out_dir) -> Path:
    """Everything about an export request that can be checked before loading the model: the
    format/precision pair, the calibration folder, a new or empty output folder. Returns it."""
    if fmt not in FORMATS:
        raise S2SWError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", fields=("format",))
    if precision not in PRECISIONS:
        raise S2SWError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", fields=("precision",))
    if fmt == "onnx" and precision != "fp32":
        raise S2SWError(f"precision {precision} is made with OpenVINO, ONNX exports are fp32; use format openvino",
                        fields=("precision", "format"))
    if precision == "int8" and calibrate_dir is None:
        raise S2SWError("precision int8 needs calibrate_dir; give it a folder of normal images of your product "
                        "for the quantisation statistics", fields=("precision", "calibrate_dir"))
    if calibrate_dir is not None:
        from ...inference.inputs import collect_inputs

        try:
            collect_inputs([calibrate_dir])
        except S2SWError as e:
            raise S2SWError(f"calibrate_dir: {e}", fields=("calibrate_dir", *e.fields)) from None
    out = check_output_dir(out_dir)
    if out.exists() and any(out.iterdir()):
        raise S2SWError(f"out_dir {out} is not empty; export into a new or empty folder", fields=("out_dir",))
    return out


def load_calibration(folder: str | os.PathLike, image_size: int, limit: int) -> np.ndarray:
    """Up to ``limit`` images of ``folder`` (sorted by name) as float32 [n, 3, S, S]."""
    from ...inference.inputs import collect_inputs

    entries = [e for e in collect_inputs([folder], images_only=True) if e.problem is None]
    arrays = []
    for e in entries:
        if len(arrays) >= limit:
            break
        try:
            arrays.append(decode_for_model(e.path, image_size).pixels)
        except ImageError as err:
            log.warning("calibration: skipped %s (%s)", e.path, err)
    if not arrays:
        raise S2SWError(f"calibrate_dir {folder}: no readable image in this folder", fields=("calibrate_dir",))
    return np.stack(arrays)


def _reference(det: S2SWDetector, images: np.ndarray, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    for i in range(0, len(images), batch):
        out = det.predict(torch.from_numpy(images[i:i + batch]))
        scores.append(out.image_scores.cpu().numpy())
        maps.append(out.anomaly_maps.cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)


def measure_drift(folder: Path, det: S2SWDetector, images: np.ndarray, kind: str) -> Drift:
    """Load ``folder`` with the runtime and compare it with ``det.predict`` on ``images``."""
    from ..runtime import load_exported

    model = load_exported(folder, verify_files=False)
    want_s, want_m = _reference(det, images)
    got = [model.predict(images[i:i + 1]) for i in range(len(images))]
    got_s = np.concatenate([g.image_scores for g in got])
    got_m = np.concatenate([g.anomaly_maps for g in got])
    return Drift(float(np.abs(got_s - want_s).max()), float(np.abs(got_m - want_m).max()), kind, len(images))


def _versions(fmt: str, precision: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["onnx", "onnxscript"] if fmt == "onnx" else ["openvino"]
    if precision == "int8":
        names.append("nncf")
    out = {"s2swclip": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return out


def _write_models(graph: DetectorGraph, tmp: Path, fmt: str, precision: str,
                  calibration: np.ndarray | None) -> tuple[list[Stage], list[str]]:
    """Write the model files; returns the manifest's stages and the file names."""
    if fmt == "onnx":
        from .to_onnx import export_onnx

        files = export_onnx(graph, tmp / "model.onnx")
        return [Stage("detector", "model.onnx", None, (IMAGES,), (SCORES, MAPS), "fp32")], files
    from .to_openvino import convert_parts, save_ir

    encoder, head, names = convert_parts(graph)
    if precision == "int8":
        from .quantize import quantize_int8

        encoder = quantize_int8(encoder, calibration)
    files = save_ir(encoder, tmp / "encoder.xml") + save_ir(head, tmp / "head.xml")
    stages = [
        Stage("encoder", "encoder.xml", "encoder.bin", tuple(names["encoder_in"]), tuple(names["encoder_out"]),
              "bf16" if precision == "bf16" else "fp32"),
        Stage("head", "head.xml", "head.bin", tuple(names["head_in"]), tuple(names["head_out"]), "fp32"),
    ]
    return stages, files


def export_detector(
    det: S2SWDetector,
    out_dir: str | os.PathLike,
    *,
    format: str,
    precision: str = "fp32",
    calibrate_dir: str | os.PathLike | None = None,
    calibrate_max: int = 32,
    threshold: float | None = None,
    references: ReferenceSource | None = None,
) -> ExportResult:
    """Export the whole detector (image in; image score and smoothed map out) to ``out_dir``.

    Args:
        det: a float32 detector on the CPU (``load_detector(..., precision="fp32")``); its
            configured image size is the exported model's fixed input size.
        out_dir: a new or empty folder; it receives the model file(s) and ``s2swclip.json``.
        format: ``onnx`` (one ``model.onnx``, fp32) or ``openvino`` (``encoder.xml/.bin``
            and ``head.xml/.bin``).
        precision: ``fp32``; ``bf16`` (OpenVINO: the encoder runs with the CPU plugin's
            bfloat16 inference precision where the CPU supports it); ``int8`` (OpenVINO: NNCF
            post-training quantisation of the encoder on the ``calibrate_dir`` images).
        calibrate_dir: normal images of the product: int8 statistics and the drift measurement.
        calibrate_max: most calibration images used (sorted by name).
        threshold: decision threshold recorded for ``predict``/``serve --model``.
        references: what ``det``'s references were read from (recorded in the manifest); the
            references themselves are ``det``'s (:meth:`S2SWDetector.set_references`): their bank
            becomes constants of the exported head, fused as ``det.predict`` fuses it.

    Returns:
        :class:`ExportResult` (folder, manifest, measured drift, seconds).
    """
    started = time.perf_counter()
    out = check_export_request(format, precision, calibrate_dir, out_dir)
    check_threshold(threshold)
    _check_exportable(det, references)
    size = int(det.config.image_size)
    few_shot = references_record(det, references)
    if few_shot is not None:
        log.info("few-shot: %d reference image(s) baked into the head (weight %g, %d bank rows, %.1f MB)",
                 few_shot["count"], few_shot["few_shot_weight"], sum(few_shot["bank_rows"]),
                 few_shot["bank_bytes"] / 1e6)
    calibration = None
    if calibrate_dir is not None:
        calibration = load_calibration(calibrate_dir, size, int(calibrate_max))
        log.info("calibration: %d image(s) from %s", len(calibration), calibrate_dir)
    drift_images = calibration[:MAX_DRIFT_IMAGES] if calibration is not None else np.random.default_rng(
        0).standard_normal((RANDOM_DRIFT_IMAGES, 3, size, size)).astype(np.float32)

    graph = DetectorGraph(det, size).eval()
    tmp = _staging_folder(out)
    try:
        stages, files = _write_models(graph, tmp, format, precision, calibration)
        manifest = _manifest(det, tmp, format, precision, stages, files, threshold, few_shot)
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(seal_manifest(manifest.to_dict()), indent=2))
        log.info("measuring the drift against PyTorch fp32 on %d image(s)", len(drift_images))
        drift = measure_drift(tmp, det, drift_images, "calibration" if calibration is not None else "random")
        seconds = time.perf_counter() - started
        manifest = dataclasses.replace(
            manifest, drift={"reference": "pytorch fp32", "images": drift.images, "n_images": drift.n_images,
                             "max_abs_score": drift.max_abs_score, "max_abs_map": drift.max_abs_map},
            export={"seconds": round(seconds, 1), "peak_rss_mib": _peak_rss_mib()})
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(seal_manifest(manifest.to_dict()), indent=2))
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if precision == "fp32" and (drift.max_abs_score > FP32_TOLERANCE["scores"] or drift.max_abs_map > FP32_TOLERANCE["maps"]):
        log.warning("the fp32 export differs from PyTorch by more than %s: %s", FP32_TOLERANCE, drift.describe())
    return ExportResult(out, manifest, drift, seconds)


def _check_exportable(det: S2SWDetector, references: ReferenceSource | None) -> None:
    """A float32 detector on the CPU, with its references (if any) at its own image size."""
    if det.config.precision != "fp32" or det.device.type != "cpu":
        raise S2SWError("export needs a float32 detector on the CPU: load_detector(..., device='cpu', "
                        "precision='fp32')")
    size = int(det.config.image_size)
    if det.num_references and det.references.image_size != size:
        raise S2SWError(f"the references are {det.references.image_size} px images, the export is for {size} px: "
                        f"set the references at the detector's image size")
    if references is not None and not det.num_references:
        raise ValueError("references given, but the detector has none set")


def _staging_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` (same filesystem: renamed into place when complete),
    with the umask's permissions (mkdtemp makes it private; an export is meant to be copied and
    served)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def _manifest(det: S2SWDetector, tmp: Path, fmt: str, precision: str, stages: list[Stage], files: list[str],
              threshold: float | None, few_shot: dict[str, Any] | None) -> Manifest:
    """The manifest of the model files written to ``tmp`` (no drift measured yet)."""
    size = int(det.config.image_size)
    return Manifest(
        format=fmt, precision=precision, image_size=size,
        input=ManifestInput(IMAGES, tuple(OPENAI_MEAN), tuple(OPENAI_STD)),
        scores_output=SCORES, maps_output=MAPS, stages=tuple(stages),
        files={name: file_record(tmp / name) for name in files},
        detector_config=det.config.replace(image_size=size).to_dict(),
        threshold=None if threshold is None else float(threshold),
        map_scale=float(det.map_scale), references=few_shot,
        provenance={**_json_safe(det.provenance), "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "versions": _versions(fmt, precision)},
    )


def _peak_rss_mib() -> int | None:
    """Peak resident memory of this process so far (Linux reports KiB; None where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
