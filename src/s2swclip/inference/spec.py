"""What a scoring worker loads: a small picklable description of a scorer, built where it runs.

The Ray engine does not ship a model to its workers: it ships a :class:`ScorerSpec` (typed, plain
data) and each worker calls :meth:`ScorerSpec.build` once. The driver can ask a spec for the model
input size (to decode before any worker exists), check it cheaply (:meth:`ScorerSpec.check`)
before a cluster is started, and take the content digests of every model input
(:meth:`ScorerSpec.digests`) that a resumed run is compared on.

Two kinds: :class:`DetectorScorerSpec` (:meth:`ScorerSpec.detector`) holds a
:class:`~s2swclip.specs.DetectorSpec` and builds the PyTorch detector with :func:`build_detector`
wrapped in a :class:`~s2swclip.inference.scorers.DetectorScorer`; :class:`ExportedScorerSpec`
(:meth:`ScorerSpec.exported`) loads a folder written by ``s2swclip export`` with
:func:`s2swclip.deploy.runtime.load_exported` (ONNX Runtime or OpenVINO: the workers need no
torch). Torch-free until a detector is built or checked.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import S2SWError
from ..specs import DetectorSpec

__all__ = ["DetectorScorerSpec", "ExportedScorerSpec", "ScorerSpec", "build_detector", "detector_digests"]


class ScorerSpec:
    """A scorer to build where it runs (base of the two kinds; use the constructors)."""

    kind = ""
    device = "cpu"

    @staticmethod
    def detector(backbone: str | os.PathLike | DetectorSpec = "ViT-L-14-336", weights: str | os.PathLike | None = "openai",
                 prompts: str | os.PathLike | None = None, **fields: Any) -> DetectorScorerSpec:
        """The PyTorch detector of a :class:`~s2swclip.specs.DetectorSpec` (given, or made of
        these arguments: its fields; few-shot options other than ``few_shot_weight`` and
        ``coreset`` go to its ``options``). Local files are made absolute: workers may run in
        another folder."""
        if isinstance(backbone, DetectorSpec):
            return DetectorScorerSpec(backbone.absolute())
        known = set(DetectorSpec.__dataclass_fields__)
        options = {k: fields.pop(k) for k in list(fields) if k not in known}
        spec = DetectorSpec(backbone, weights, prompts, options=tuple(sorted(options.items())), **fields)
        return DetectorScorerSpec(spec.absolute())

    @staticmethod
    def exported(model_dir: str | os.PathLike, *, inference_timeout: float | None = 300.0) -> ExportedScorerSpec:
        """A model exported by ``s2swclip export`` (:func:`s2swclip.deploy.runtime.load_exported`, on the
        CPU, torch-free). The folder is made absolute, and the SHA-256 of its ``s2swclip.json``
        (which lists every model file's SHA-256) is recorded, so that a resumed run with a model
        exported again into the same folder is told apart (None when the folder has no manifest:
        :meth:`check` says what is wrong). ``inference_timeout``: seconds one batch may take in
        each worker's runtime (None: no limit; see :func:`~s2swclip.deploy.runtime.load_exported`);
        not part of the run's identity."""
        from ..deploy.runtime.manifest import MANIFEST_NAME, file_record

        folder = os.path.abspath(os.path.expanduser(os.fspath(model_dir)))
        manifest = os.path.join(folder, MANIFEST_NAME)
        digest = file_record(manifest)["sha256"] if os.path.isfile(manifest) else None
        return ExportedScorerSpec(folder, digest, inference_timeout=inference_timeout)

    def replace(self, **changes: Any) -> ScorerSpec:  # pragma: no cover - overridden
        raise NotImplementedError

    def image_size(self) -> int:
        """S, the model input side, without building anything."""
        raise NotImplementedError

    def check(self) -> None:
        """Cheap checks of what a user can get wrong (files, names), before any worker starts.
        Raises :class:`S2SWError`."""
        raise NotImplementedError

    def build(self):
        """The scorer (a :class:`~s2swclip.inference.pipeline.Scorer`); called once per worker."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-safe: what runs will be compared on when resuming."""
        raise NotImplementedError

    def digests(self) -> dict[str, str]:
        """SHA-256 of the content of every model input, by name (``prompts``, ``weights``,
        ``backbone`` (a config file), ``reference``; ``manifest`` of an exported model)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class DetectorScorerSpec(ScorerSpec):
    """The PyTorch detector of ``detector`` (a :class:`~s2swclip.specs.DetectorSpec`)."""

    spec: DetectorSpec
    kind = "detector"

    @property
    def device(self) -> str:  # type: ignore[override]
        return self.spec.device

    def replace(self, **changes: Any) -> DetectorScorerSpec:
        return DetectorScorerSpec(self.spec.replace(**changes))

    def image_size(self) -> int:
        return self.spec.input_size()

    def check(self) -> None:
        from ..model.checkpoint import load_prompts
        from ..model.weights import resolve_model_config

        o = self.spec
        resolve_model_config(o.backbone)
        weights = o.weights
        if weights is not None and not os.path.isfile(weights) and (
                os.path.splitext(weights)[1] in (".pt", ".pth", ".bin", ".safetensors") or os.sep in weights):
            raise S2SWError(f"weights file not found: {weights} (pass an existing file, a pretrained tag "
                            f"such as 'openai', or none for random weights)")
        if o.prompts is not None:
            load_prompts(o.prompts)

    def build(self):
        from .scorers import DetectorScorer

        return DetectorScorer(build_detector(self.spec))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.spec.describe()}

    def digests(self) -> dict[str, str]:
        return detector_digests(self.spec)


def build_detector(spec: DetectorSpec):
    """The detector of ``spec``: :func:`~s2swclip.model.factory.load_detector`, then its
    references (:func:`~s2swclip.inference.references.apply_references`) when it has some. The
    one way the CLI, the API and the Ray workers build a detector."""
    from ..model.factory import load_detector

    det = load_detector(**spec.load_kwargs())
    if spec.reference is not None:
        from .references import apply_references

        limit = {} if spec.max_references is None else {"max_references": spec.max_references}
        apply_references(det, spec.reference, shots=spec.shots, max_pixels=spec.max_pixels, **limit)
    return det


def detector_digests(spec: DetectorSpec) -> dict[str, str]:
    """SHA-256 of the content of the local files ``spec`` is built from (see
    :meth:`ScorerSpec.digests`); references in a folder (or a glob): one digest of the digests
    of the images used, in their order."""
    from ..deploy.runtime.manifest import file_record

    out = {name: file_record(path)["sha256"] for name, path in spec.model_files().items()}
    if spec.reference is not None and "reference" not in out:
        from .inputs import collect_inputs

        entries = collect_inputs([spec.reference])
        if spec.shots is not None:
            entries = entries[:spec.shots]
        h = hashlib.sha256()
        for e in entries:
            if e.problem is None and os.path.isfile(e.path):
                h.update(bytes.fromhex(file_record(e.path)["sha256"]))
        out["reference"] = h.hexdigest()
    return out


# --------------------------------------------------------------------------------------- exported
@dataclass(frozen=True)
class ExportedScorerSpec(ScorerSpec):
    """A folder written by ``s2swclip export`` and the SHA-256 of its manifest when planned."""

    model: str
    manifest_sha256: str | None
    device: str = "cpu"  # type: ignore[assignment]
    inference_timeout: float | None = field(default=300.0, compare=False)
    kind = "exported"

    def replace(self, **changes: Any) -> ExportedScorerSpec:
        return replace(self, **changes)

    def image_size(self) -> int:
        from ..deploy.runtime.manifest import load_manifest

        return load_manifest(self.model, verify_files=False).image_size

    def check(self) -> None:
        from ..deploy.runtime.manifest import read_manifest

        if self.device != "cpu":
            raise S2SWError(f"model {self.model} runs on the CPU, in ONNX Runtime or OpenVINO: give its workers "
                            f"no GPUs, gpus_per_worker 0", fields=["model", "gpus_per_worker"])
        read_manifest(self.model)  # sizes and SHA-256 of every model file

    def build(self):
        from ..deploy.runtime import load_exported

        model = load_exported(self.model, inference_timeout=self.inference_timeout)
        if self.digests().get("manifest") != self.manifest_sha256:
            raise S2SWError(f"model {self.model} changed since this run was planned, exported again perhaps; "
                            f"run the command again", fields=["model"])
        return model

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "manifest_sha256": self.manifest_sha256}

    def digests(self) -> dict[str, str]:
        from ..deploy.runtime.manifest import MANIFEST_NAME, file_record

        path = os.path.join(self.model, MANIFEST_NAME)
        return {"manifest": file_record(path)["sha256"]} if os.path.isfile(path) else {}
