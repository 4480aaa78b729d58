"""Profiles whose model is an exported folder (``profile create NAME --model EXPORT_DIR``).

An export's few-shot references are constants of its scoring head, fixed at export
(``s2swclip export --reference DIR``): such a profile has no bank and no images of its own. Its
manifest records the folder (absolute path), the SHA-256 of its ``s2swclip.json`` (which lists
every model file's SHA-256, as :meth:`~s2swclip.inference.spec.ScorerSpec.exported` takes it),
the export's image size and references record (``in_export: true``), and a threshold (the
export's recorded one unless another is given or calibrated).

Loading verifies the export (the runtime checks every model file's digest) and that its manifest
still has the recorded SHA-256: a folder exported again or edited is refused naming the profile.
Profiles on the same folder share one loaded :class:`~s2swclip.deploy.runtime.ExportedModel`
(:class:`ExportedModels`, keyed by path and digest).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from ..errors import S2SWError
from .manifest import FORMAT_TAG, FORMAT_VERSION, OverLimit, ProfileExists, check_name, now_iso
from .runtime import Profile, calibrated_manifest

__all__ = ["ExportedModels", "ExportedProfileScorer", "calibrate", "create", "is_exported", "load",
           "model_label", "profile_of", "refuse_add"]

log = logging.getLogger(__name__)


def is_exported(m: dict) -> bool:
    """Whether manifest ``m`` is a profile on an exported model folder."""
    return "exported" in m["model"]


def model_label(m: dict) -> str:
    """What ``profile list`` shows as the model of manifest ``m``."""
    model = m["model"]
    return f"export {model['exported']}" if is_exported(m) else str(model["backbone"])


def refuse_add(name: str, m: dict) -> None:
    """S2SWError when profile ``name`` (manifest ``m``) is on an exported model: good images
    cannot be added to it."""
    if is_exported(m):
        raise S2SWError(f"profile {name!r} uses the exported model {m['model']['exported']}, whose references "
                        f"are fixed in the export: export the model again with the new references and make a new "
                        f"profile on that export")


def _manifest_digest(folder: str) -> str | None:
    from ..deploy.runtime.manifest import MANIFEST_NAME, file_record

    try:
        return file_record(os.path.join(folder, MANIFEST_NAME))["sha256"]
    except OSError:
        return None


class ExportedModels:
    """The exported models loaded for a store's profiles: one per (folder, manifest SHA-256)."""

    def __init__(self, inference_timeout: float | None = 300.0):
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], Any] = {}
        self.inference_timeout = inference_timeout
        self.loads = 0  # how many folders were loaded (verified) so far

    def get(self, name: str, m: dict, image_size: int | None = None):
        """The loaded export of profile ``name`` (manifest ``m``), verified on its first load;
        S2SWError naming the profile when the folder is missing, corrupt, or not the one recorded,
        or (``image_size``) when it scores another input size than the caller decodes."""
        from ..deploy.runtime import load_exported

        folder, digest = m["model"]["exported"], m["model"]["exported_sha256"]
        if image_size is not None and image_size != m["model"]["image_size"]:
            raise S2SWError(f"profile {name!r}: its exported model {folder} scores {m['model']['image_size']} px "
                            f"images, this service {image_size} px")
        actual = _manifest_digest(folder)  # every time: a folder exported again is told apart
        if actual != digest:
            problem = "has no readable s2swclip.json" if actual is None else "was exported again or edited"
            raise S2SWError(f"profile {name!r}: its exported model {folder} {problem} since the profile was made "
                            f"(s2swclip.json SHA-256 differs): make the profile again on it")
        with self._lock:
            model = self._models.get((folder, digest))
            if model is None:
                try:
                    model = load_exported(folder, inference_timeout=self.inference_timeout)
                except S2SWError as e:
                    raise S2SWError(f"profile {name!r}: {e}") from None
                self._models[(folder, digest)] = model
                self.loads += 1
            return model


class ExportedProfileScorer:
    """Scores with a profile on an exported model (a :class:`~s2swclip.inference.pipeline.Scorer`):
    the export's scores and maps, the profile's threshold."""

    def __init__(self, model, profile: Profile):
        self.model = model
        self.profile = profile
        self.image_size = int(model.image_size)
        self.map_scale = model.map_scale

    @property
    def threshold(self) -> float | None:
        return self.profile.threshold

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.score(pixels)

    def describe(self) -> dict[str, Any]:
        return {**self.model.describe(), "profile": self.profile.name, "profile_version": self.profile.version}


def profile_of(m: dict) -> Profile:
    """The :class:`Profile` of an exported-model manifest (no bank)."""
    return Profile(m["name"], m["version"], m, (), (), "", int(m["model"]["image_size"]),
                   float(m["few_shot_weight"]), m.get("threshold"))


def load(store, name: str, m: dict) -> Profile:
    """Profile ``name`` (manifest ``m``) ready to score: its export verified (and loaded, once)."""
    size = None if store.detector is None else int(store.detector.config.image_size)
    store.exports.get(name, m, size)
    return profile_of(m)


def _record(folder: str) -> tuple[dict, dict, float | None]:
    """(model record, references record, recorded threshold) of the export in ``folder``."""
    from ..deploy.runtime.manifest import load_manifest

    path = os.path.abspath(os.path.expanduser(folder))
    digest = _manifest_digest(path)
    man = load_manifest(path)  # every model file's digest checked; its errors name the model field
    if digest is None or _manifest_digest(path) != digest:
        raise S2SWError(f"model {folder}: its s2swclip.json changed while it was read", fields=("model",))
    refs = man.references or {}
    model = {"exported": path, "exported_sha256": digest, "image_size": int(man.image_size), "format": man.format,
             "precision": man.precision, "backbone": (man.provenance or {}).get("backbone")}
    references = {"in_export": True, "count": int(refs.get("count", 0)), "few_shot_weight": refs.get("few_shot_weight"),
                  "sha256": refs.get("sha256")}
    return model, references, man.threshold


def create(store, name: str, folder: str, *, threshold: float | None = None, calibration_images=(),
           fpr: float = 0.01, progress=None) -> Profile:
    """A new profile (version 1) on the exported model in ``folder``: its threshold is
    ``threshold``, else calibrated from ``calibration_images``, else the export's recorded one."""
    check_name(name)
    model, references, recorded = _record(folder)
    size = model["image_size"]
    cal = store._decode(calibration_images, "calibration image", size=size) if calibration_images else []
    with store._locked():
        if name in store.names():
            raise ProfileExists(f"profile {name!r} already exists under {store.root}: choose another name")
        if len(store.names()) >= store.max_profiles:
            raise OverLimit(f"{store.root} holds {store.max_profiles} profiles already, as many as max_profiles "
                            f"allows; delete one first", fields=("max_profiles",))
        stamp = now_iso()
        weight = references["few_shot_weight"] if references["count"] else 0.0
        m = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "name": name, "version": 1, "created": stamp,
             "updated": stamp, "model": model, "few_shot_weight": float(weight),
             "threshold": float(threshold) if threshold is not None else recorded, "calibration": None,
             "references": references, "images": []}
        if cal:
            m = _with_calibration(store, m, cal, fpr, progress)
        return store._commit(m, None, [])


def calibrate(store, name: str, images, fpr: float, progress=None):
    """The next version of exported-model profile ``name`` with the threshold calibrated from
    ``images`` scored by the export; (profile, calibration)."""
    from ..inference.calibration import Calibration

    with store._locked():
        m = store.show(name)
        cal = store._decode(images, "calibration image", size=int(m["model"]["image_size"]))
        m = _with_calibration(store, dict(m, version=m["version"] + 1, updated=now_iso()), cal, fpr, progress)
        profile = store._commit(m, None, [])
    c = m["calibration"]
    return profile, Calibration(c["threshold"], c["n"], c["fpr"], c["rank"], c["bound"], c["flagged"])


def _with_calibration(store, m: dict, cal, fpr: float, progress=None) -> dict:
    """``m`` calibrated on the decoded good images ``cal`` with the profile's export."""
    return calibrated_manifest(m, store.exports.get(m["name"], m), [d.pixels for d in cal], fpr,
                               store.batch_size, progress)
