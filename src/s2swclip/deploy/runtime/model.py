"""An exported detector, loaded: ``predict`` on arrays, ``predict_files`` on image files.

Torch-free: NumPy, Pillow and ONNX Runtime or OpenVINO. :class:`ExportedModel` is also a
:class:`~s2swclip.inference.pipeline.Scorer`, so ``s2swclip predict --model DIR`` and
``s2swclip serve --model DIR`` run it through the same inference pipeline as the PyTorch
detector.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...data.images import OPENAI_MEAN, OPENAI_STD, decode_for_model
from ...errors import InferenceTimeout, S2SWError
from ...inference.scoring import ScorerBase
from .engines import _first_line, make_stage
from .manifest import Manifest, load_manifest

__all__ = ["DEFAULT_INFERENCE_TIMEOUT", "ExportedModel", "InferenceTimeout", "RuntimePrediction", "load_exported"]

#: Seconds one batch may take in the runtime (``inference_timeout``): a crafted graph can loop
#: for ever; a real one scores a batch in seconds to a minute on a CPU.
DEFAULT_INFERENCE_TIMEOUT = 300.0
_CANCEL_GRACE_S = 5.0  # after a timeout: how long a cancelled call gets to stop


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

    def __init__(self, folder: Path, manifest: Manifest, *, threads: int | None = None,
                 inference_timeout: float | None = DEFAULT_INFERENCE_TIMEOUT):
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
        self.inference_timeout = inference_timeout
        self._stuck = False
        self.stages = [make_stage(folder, self.format, st, threads=threads) for st in manifest.stages]
        self._check_signature()

    def _check_signature(self) -> None:
        """The model files' declared input and outputs against the manifest (names, ranks, sizes):
        an edited ``image_size`` or a swapped model is refused before any work."""
        s = self.image_size
        declared: dict[str, tuple | None] = {}
        for stage in reversed(self.stages):  # the folder's input: as the first stage declares it
            declared.update(stage.shapes())
        want = {self.input_name: (None, 3, s, s), self.output_names[0]: (None,), self.output_names[1]: (None, s, s)}
        for name, shape in want.items():
            got = declared.get(name)
            if got is None or len(got) != len(shape) or any(g is not None and w is not None and g != w
                                                             for g, w in zip(got, shape)):
                shown = "unknown" if got is None else "[" + ", ".join("?" if g is None else str(g) for g in got) + "]"
                expected = "[" + ", ".join("B" if w is None else str(w) for w in shape) + "]"
                raise S2SWError(f"model {self.folder}: the model's {name} is {shown}, s2swclip.json (image_size "
                                f"{s}) needs {expected}: the manifest and the model files do not belong together; "
                                f"export again", fields=("model",))

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
        values = self._infer({self.input_name: np.ascontiguousarray(x, dtype=np.float32)}, x.shape[0])
        scores, maps = (np.asarray(values[n], dtype=np.float32) for n in self.output_names)
        b = x.shape[0]
        if scores.size != b or maps.shape != (b, s, s):
            raise S2SWError(f"model {self.folder}: the model returned {self.output_names[0]} "
                            f"{list(scores.shape)} and {self.output_names[1]} {list(maps.shape)} for {b} image(s) "
                            f"of {s} px, not [{b}] and [{b}, {s}, {s}]; export again", fields=("model",))
        return RuntimePrediction(scores.reshape(b), maps.reshape(b, s, s))

    def _run_stages(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for stage in self.stages:
            values.update(stage.run(values))
        return values

    def _infer(self, values: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """Run the stages in a worker thread with a deadline (:attr:`inference_timeout`); a
        runtime failure or a timeout is one :class:`S2SWError` line."""
        if self._stuck:
            raise InferenceTimeout(f"model {self.folder}: an earlier inference never stopped after its "
                                   f"inference_timeout; restart the process and check the exported model",
                                   fields=("model", "inference_timeout"))
        box: dict[str, Any] = {}
        done = threading.Event()

        def work():
            try:
                box["values"] = self._run_stages(values)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e
            finally:
                done.set()

        limit = self.inference_timeout
        if limit is None:
            work()
        else:
            threading.Thread(target=work, name="s2sw-inference", daemon=True).start()
            if not done.wait(limit):
                for stage in self.stages:
                    stage.cancel()
                self._stuck = not done.wait(_CANCEL_GRACE_S)
                raise InferenceTimeout(f"model {self.folder}: a batch of {batch} image(s) did not finish within "
                                       f"inference_timeout {limit:g} s; raise it for a slow machine, else "
                                       f"export the model again: its graph may never end",
                                       fields=("model", "inference_timeout"))
        if "error" in box:
            e = box["error"]
            if isinstance(e, S2SWError):
                raise e
            raise S2SWError(f"model {self.folder}: the runtime failed on a batch of {batch} image(s): "
                            f"{type(e).__name__}: {_first_line(e)}", fields=("model",)) from None
        return box["values"]

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


def load_exported(folder: str | os.PathLike, *, threads: int | None = None, verify_files: bool = True,
                  inference_timeout: float | None = DEFAULT_INFERENCE_TIMEOUT) -> ExportedModel:
    """Load a folder written by ``s2swclip export`` (torch-free).

    Args:
        folder: the export folder (``s2swclip.json`` and the model files).
        threads: CPU threads of the runtime (default: the runtime's own choice).
        verify_files: check the model files' SHA-256 against the manifest (their sizes are
            always checked).
        inference_timeout: seconds one batch may take (None: no limit); a call over it raises
            :class:`~s2swclip.errors.InferenceTimeout` (after a timeout whose call cannot be
            cancelled, every later call does too).

    Returns:
        :class:`ExportedModel`.

    Raises:
        S2SWError: a missing, incomplete, corrupt or foreign folder (one line).
    """
    if inference_timeout is not None and (isinstance(inference_timeout, bool) or not isinstance(
            inference_timeout, (int, float)) or not math.isfinite(inference_timeout) or inference_timeout <= 0):
        raise S2SWError(f"inference_timeout must be a positive number of seconds, got {inference_timeout!r}",
                        fields=("inference_timeout",))
    manifest = load_manifest(folder, verify_files=verify_files)
    mean, std = list(manifest.input.mean), list(manifest.input.std)
    if not (np.allclose(mean, OPENAI_MEAN, rtol=0, atol=1e-7) and np.allclose(std, OPENAI_STD, rtol=0, atol=1e-7)):
        raise S2SWError(f"model {folder}: the model expects another input normalisation than CLIP's "
                        f"(mean {mean}, std {std}); this version of the runtime only prepares CLIP inputs",
                        fields=("model",))
    return ExportedModel(Path(os.path.expanduser(os.fspath(folder))), manifest, threads=threads,
                         inference_timeout=inference_timeout)
