"""An exported detector, loaded: ``predict`` on arrays, ``predict_files`` on image files.

Torch-free: NumPy, Pillow and ONNX Runtime or OpenVINO. :class:`ExportedModel` is also a
:class:`~s2swclip.inference.pipeline.Scorer`, so ``s2swclip predict --model DIR`` and
``s2swclip serve --model DIR`` run it through the same inference pipeline as the PyTorch
detector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...data.images import OPENAI_MEAN, OPENAI_STD, decode_for_model
from ...errors import S2SWError
from .engines import make_stage
from ...inference.scoring import ScorerBase
from .manifest import Manifest, load_manifest

__all__ = ["ExportedModel", "RuntimePrediction", "load_exported"]


@dataclass
class RuntimePrediction:
    """Result of :meth:`ExportedModel.predict`.

    Attributes:
        image_scores: [B] float32 anomaly scores in [0, 1].
        anomaly_maps: [B, S, S] float32 smoothed anomaly maps.
    """

    image_scores: np.ndarray
    anomaly_maps: np.ndarray


class ExportedModel(ScorerBase):
    """A folder written by ``s2swclip export``, ready to score images.

    Use :func:`load_exported`. Attributes: ``image_size`` (S), ``format``, ``precision``,
    ``threshold`` (the one recorded at export, or None), ``map_scale`` (the exported detector's
    ``map_scale``: ``map / map_scale`` is on the scores' [0, 1] scale, docs/method.md §6.3),
    ``references`` (the few-shot references baked in at export: the manifest's record, or
    None), ``manifest`` (the checked ``s2swclip.json``).
    """

    def __init__(self, folder: Path, manifest: Manifest, *, threads: int | None = None):
        self.folder = folder
        self.manifest = manifest
        self.format = manifest.format
        self.precision = manifest.precision
        self.image_size = int(manifest.image_size)
        self.threshold = manifest.threshold
        self.map_scale = float(manifest.map_scale)
        self.references = manifest.references
        self.input_name = manifest.input.name
        self.output_names = (manifest.scores_output, manifest.maps_output)
        self.stages = [make_stage(folder, self.format, st, threads=threads) for st in manifest.stages]

    # ------------------------------------------------------------------------------ scoring
    def predict(self, images: np.ndarray) -> RuntimePrediction:
        """Score a batch.

        Args:
            images: float32 [B, 3, S, S], CLIP-normalised (what
                :func:`s2swclip.data.images.preprocess` returns, stacked).

        Returns:
            :class:`RuntimePrediction` with ``image_scores`` [B] and ``anomaly_maps`` [B, S, S].
        """
        x = np.asarray(images)
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s) or x.shape[0] < 1:
            raise S2SWError(f"images must be an array [B, 3, {s}, {s}] (this model's input size), "
                            f"got shape {tuple(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise S2SWError(f"images must be floating point (CLIP-normalised), got {x.dtype}")
        values = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        for stage in self.stages:
            values.update(stage.run(values))
        scores, maps = (np.asarray(values[n], dtype=np.float32) for n in self.output_names)
        return RuntimePrediction(scores.reshape(x.shape[0]), maps.reshape(x.shape[0], s, s))

    def predict_files(self, paths: Sequence[str | os.PathLike], *, batch_size: int = 8) -> RuntimePrediction:
        """Decode, preprocess (bicubic to S x S, CLIP normalisation; the PyTorch path's numbers)
        and score image files, ``batch_size`` at a time.

        Raises:
            S2SWError: a file that cannot be read as an image (one line naming it).
        """
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise S2SWError("predict_files needs at least one image path")
        scores, maps = [], []
        for i in range(0, len(paths), max(1, int(batch_size))):
            batch = np.stack([decode_for_model(p, self.image_size).pixels for p in paths[i:i + batch_size]])
            out = self.predict(batch)
            scores.append(out.image_scores)
            maps.append(out.anomaly_maps)
        return RuntimePrediction(np.concatenate(scores), np.concatenate(maps))

    # ------------------------------------------------------------------- Scorer protocol
    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:class:`~s2swclip.inference.pipeline.Scorer`: pixels [B, 3, S, S] -> (scores, maps)."""
        out = self.predict(pixels)
        return out.image_scores, out.anomaly_maps

    # --------------------------------------------------------------- ScorerBase hooks
    def _engine_fields(self) -> dict[str, Any]:
        return {"engine": self.stages[0].engine, "engine_version": self.stages[0].version, "format": self.format,
                "model_dir": str(self.folder)}

    def _provenance(self) -> dict[str, Any]:
        return self.manifest.provenance

    def _precision(self) -> str | None:
        return self.precision

    def _device(self) -> str | None:
        return "cpu"

    def _references(self) -> dict[str, Any] | None:
        refs = self.references
        return None if refs is None else {k: refs[k] for k in (
            "count", "few_shot_weight", "layers", "stream", "coreset", "bank_bytes", "source", "sha256")}

    def _extra_fields(self) -> dict[str, Any]:
        """The precision each stage runs at, and the drift measured at export."""
        effective = [getattr(st, "effective_precision", None) for st in self.stages]
        return {"inference_precision": [p for p in effective if p is not None] or None, "drift": self.manifest.drift}


def load_exported(folder: str | os.PathLike, *, threads: int | None = None,
                  verify_files: bool = True) -> ExportedModel:
    """Load a folder written by ``s2swclip export`` (torch-free).

    Args:
        folder: the export folder (``s2swclip.json`` and the model files).
        threads: CPU threads of the runtime (default: the runtime's own choice).
        verify_files: check the model files' SHA-256 against the manifest (their sizes are
            always checked).

    Returns:
        :class:`ExportedModel`.

    Raises:
        S2SWError: a missing, incomplete, corrupt or foreign folder (one line).
    """
    manifest = load_manifest(folder, verify_files=verify_files)
    mean, std = list(manifest.input.mean), list(manifest.input.std)
    if not (np.allclose(mean, OPENAI_MEAN, rtol=0, atol=1e-7) and np.allclose(std, OPENAI_STD, rtol=0, atol=1e-7)):
        raise S2SWError(f"--model {folder}: the model expects another input normalisation than CLIP's "
                        f"(mean {mean}, std {std}); this version of the runtime only prepares CLIP inputs")
    return ExportedModel(Path(os.path.expanduser(os.fspath(folder))), manifest, threads=threads)
