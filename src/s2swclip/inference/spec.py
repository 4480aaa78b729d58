"""What a scoring worker loads: a small picklable description of a scorer, built where it runs.

The Ray engine does not ship a model to its workers: it ships a :class:`ScorerSpec` (a kind and
a few options, plain data) and each worker calls :meth:`ScorerSpec.build` once. The driver can
ask a spec for the model input size (to decode before any worker exists) and check it cheaply
(:meth:`ScorerSpec.check`) before a cluster is started.

Kinds are registered in :data:`_KINDS`: ``detector`` builds the PyTorch detector with
:func:`s2swclip.model.factory.load_detector` wrapped in a
:class:`~s2swclip.inference.scorers.DetectorScorer`; ``exported`` loads a folder written by
``s2swclip export`` with :func:`s2swclip.deploy.runtime.load_exported` (ONNX Runtime or OpenVINO: the
workers need no torch). Each kind has its own ``build``/``image_size``/``check`` and a
constructor (:meth:`ScorerSpec.detector`, :meth:`ScorerSpec.exported`). Torch-free until a
``detector``'s ``build``/``check`` run; an ``exported`` spec never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from ..errors import S2SWError

__all__ = ["ScorerSpec"]


class _Kind(NamedTuple):
    build: Callable[[dict[str, Any]], Any]
    image_size: Callable[[dict[str, Any]], int]
    check: Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer to build: ``kind`` (a key of :data:`_KINDS`) and its options (name, value)
    pairs, JSON-safe values only."""

    kind: str
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def detector(cls, backbone: str = "ViT-L-14-336", weights: str | None = "openai",
                 prompts: str | os.PathLike | None = None, *, image_size: int | None = None,
                 device: str = "cpu", precision: str = "fp32", preset: str | None = None,
                 cache_dir: str | None = None, reference: str | os.PathLike | None = None,
                 shots: int | None = None, max_pixels: int | None = None, untrained_ok: bool = False,
                 **few_shot: Any) -> ScorerSpec:
        """The PyTorch detector of :func:`s2swclip.model.factory.load_detector` with these arguments.
        ``reference`` (with ``shots``, ``max_pixels``) turns on the few-shot mode in every worker
        (:func:`~s2swclip.inference.references.apply_references`); ``few_shot`` holds the
        detector's few-shot options (``few_shot_weight``, ``coreset``...). Local files (prompts,
        weights, a backbone config, references, the cache) are made absolute: workers may run in
        another folder."""
        opts = {"backbone": _abs_if_file(backbone), "weights": _abs_if_file(weights),
                "prompts": _abs_if_file(prompts), "image_size": None if image_size is None else int(image_size),
                "device": str(device), "precision": precision, "preset": preset,
                "cache_dir": None if cache_dir is None else os.path.abspath(os.path.expanduser(cache_dir))}
        if reference is not None:  # only what is used is recorded: a resumed run compares these
            opts.update(reference=_abs_if_file(reference), shots=shots, max_pixels=max_pixels)
        if untrained_ok:
            opts["untrained_ok"] = True
        if few_shot:
            opts["few_shot"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in few_shot.items()))
        return cls("detector", tuple(sorted(opts.items())))

    @classmethod
    def exported(cls, model_dir: str | os.PathLike) -> ScorerSpec:
        """A model exported by ``s2swclip export`` (:func:`s2swclip.deploy.runtime.load_exported`, on the
        CPU, torch-free). The folder is made absolute, and the SHA-256 of its ``s2swclip.json``
        (which lists every model file's SHA-256) is recorded, so that a resumed run with a model
        exported again into the same folder is told apart (None when the folder has no manifest:
        :meth:`check` says what is wrong)."""
        from ..deploy.runtime.manifest import MANIFEST_NAME, file_record

        folder = os.path.abspath(os.path.expanduser(os.fspath(model_dir)))
        manifest = os.path.join(folder, MANIFEST_NAME)
        digest = file_record(manifest)["sha256"] if os.path.isfile(manifest) else None
        return cls("exported", (("manifest_sha256", digest), ("model", folder)))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.options)

    def replace(self, **options: Any) -> ScorerSpec:
        return ScorerSpec(self.kind, tuple(sorted({**self.settings, **options}.items())))

    def _kind(self) -> _Kind:
        try:
            return _KINDS[self.kind]
        except KeyError:
            raise ValueError(f"unknown scorer kind {self.kind!r}; known: {', '.join(_KINDS)}") from None

    def image_size(self) -> int:
        """S, the model input side, without building anything."""
        return self._kind().image_size(self.settings)

    def check(self) -> None:
        """Cheap checks of what a user can get wrong (files, names), before any worker starts.
        Raises :class:`S2SWError`."""
        self._kind().check(self.settings)

    def build(self):
        """The scorer (a :class:`~s2swclip.inference.pipeline.Scorer`); called once per worker."""
        return self._kind().build(self.settings)

    def describe(self) -> dict[str, Any]:
        """JSON-safe: what runs will be compared on when resuming."""
        return {"kind": self.kind, **self.settings}


def _abs_if_file(value):
    if value is None:
        return None
    path = os.path.expanduser(os.fspath(value))
    return os.path.abspath(path) if os.path.exists(path) else str(value)


# --------------------------------------------------------------------------------------- detector
def _detector_build(o: dict[str, Any]):
    from ..model.factory import load_detector
    from .scorers import DetectorScorer

    det = load_detector(o["backbone"], o["weights"], o["prompts"], image_size=o["image_size"],
                        device=o["device"], precision=o["precision"], preset=o["preset"],
                        cache_dir=o["cache_dir"], untrained_ok=o.get("untrained_ok", False),
                        **dict(o.get("few_shot", ())))
    if o.get("reference") is not None:
        from .references import apply_references

        apply_references(det, o["reference"], shots=o.get("shots"), max_pixels=o.get("max_pixels"))
    return DetectorScorer(det)


def _detector_image_size(o: dict[str, Any]) -> int:
    from ..model.config import DetectorConfig, get_preset

    if o["image_size"] is not None:
        return int(o["image_size"])
    config = DetectorConfig()
    if o["preset"] is not None:
        config = config.replace(**get_preset(o["preset"]).test)
    return int(config.image_size)


def _detector_check(o: dict[str, Any]) -> None:
    from ..model.factory import PRECISIONS
    from ..model.checkpoint import load_prompts
    from ..model.weights import resolve_model_config

    if o["precision"] not in PRECISIONS:
        raise S2SWError(f"invalid precision {o['precision']!r}: choose one of {', '.join(PRECISIONS)}")
    resolve_model_config(o["backbone"])
    weights = o["weights"]
    if weights is not None and not os.path.isfile(weights) and (
            os.path.splitext(weights)[1] in (".pt", ".pth", ".bin", ".safetensors") or os.sep in weights):
        raise S2SWError(f"weights file not found: {weights} (pass an existing file, a pretrained tag "
                        f"such as 'openai', or none for random weights)")
    if o["prompts"] is not None:
        load_prompts(o["prompts"])


# --------------------------------------------------------------------------------------- exported
def _exported_build(o: dict[str, Any]):
    from ..deploy.runtime import load_exported
    from ..deploy.runtime.manifest import MANIFEST_NAME, file_record

    model = load_exported(o["model"])
    if file_record(os.path.join(o["model"], MANIFEST_NAME))["sha256"] != o["manifest_sha256"]:
        raise S2SWError(f"--model {o['model']} changed since this run was planned (exported again?); "
                        f"run the command again")
    return model


def _exported_image_size(o: dict[str, Any]) -> int:
    from ..deploy.runtime.manifest import read_manifest

    return int(read_manifest(o["model"], verify_files=False)["image_size"])


def _exported_check(o: dict[str, Any]) -> None:
    from ..deploy.runtime.manifest import read_manifest

    if o.get("device", "cpu") != "cpu":
        raise S2SWError(f"--model {o['model']} runs on the CPU (ONNX Runtime / OpenVINO): give its workers no GPUs")
    read_manifest(o["model"])  # sizes and SHA-256 of every model file


_KINDS: dict[str, _Kind] = {
    "detector": _Kind(_detector_build, _detector_image_size, _detector_check),
    "exported": _Kind(_exported_build, _exported_image_size, _exported_check),
}
