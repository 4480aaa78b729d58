"""A profile's runtime state and scoring with it on the shared backbone.

A loaded :class:`Profile` is immutable: its bank tensors, few-shot weight and threshold never
change after it is built. Updating a profile builds a new :class:`Profile` (version + 1) and
swaps the reference held by :class:`LiveProfiles` under a lock, so a request that took a
profile scores with exactly that bank and reports exactly that version, whatever happens
meanwhile. Scoring never touches the detector's own references (``det.references``): the bank
is passed to :meth:`~s2swclip.model.detector.S2SWDetector.fuse_few_shot`, so any number of
profiles share one detector (one backbone in memory, no reload when switching).

Memory per profile is its bank: ``K * G^2 * C * L * b`` bytes for K references at a G x G token
grid, C feature dimensions, L few-shot layers and b bytes per value
(:func:`bank_bytes_per_reference`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["LiveProfiles", "Profile", "ProfileScorer", "bank_bytes_per_reference", "calibrated_manifest"]


def calibrated_manifest(m: dict, scorer, pixels: list, fpr: float, batch_size: int, progress=None) -> dict:
    """The manifest ``m`` with the threshold calibrated on known-good images: ``pixels`` (their
    model inputs, ``[3, S, S]`` each) are scored by ``scorer`` in batches of ``batch_size`` and
    the threshold is their split-conformal quantile for false-positive rate ``fpr``
    (:func:`~s2swclip.inference.calibration.conformal_threshold`); ``progress(stage, done,
    total)`` is told after each batch. The record goes under ``calibration``."""
    from ..inference.calibration import conformal_threshold

    scores: list[float] = []
    for start in range(0, len(pixels), batch_size):
        scores.extend(scorer.score(np.stack(pixels[start:start + batch_size]))[0].tolist())
        if progress is not None:
            progress("calibration", min(len(pixels), start + batch_size), len(pixels))
    result = conformal_threshold(scores, fpr)
    log.info("profile %s: %s", m["name"], result.describe())
    return dict(m, threshold=result.threshold,
                calibration={"n": result.n, "fpr": result.fpr, "bound": result.bound, "rank": result.rank,
                             "threshold": result.threshold, "flagged": result.flagged, "version": m["version"]})


def bank_bytes_per_reference(image_size: int, patch_size: int, embed_dim: int, layers: int,
                             bytes_per_value: int = 4) -> int:
    """Bytes one reference image adds to a bank (no coreset): one row of ``embed_dim`` values
    per patch token, ``(image_size // patch_size)^2`` tokens, for each of ``layers`` layers."""
    return (image_size // patch_size) ** 2 * embed_dim * layers * bytes_per_value


@dataclass(frozen=True)
class Profile:
    """A loaded profile (see the module docstring).

    Attributes:
        name, version: which profile, which build of it.
        manifest: its validated ``profile.json``.
        banks: one [M_l, C] tensor of unit rows per few-shot layer, on the detector's device.
        layers, stream, image_size: how the bank was built (the detector's settings).
        few_shot_weight: weight of the few-shot map and score (1: references only).
        threshold: flag scores above this (None: no decision).
    """

    name: str
    version: int
    manifest: dict = field(repr=False)
    banks: tuple = field(repr=False)
    layers: tuple[int, ...]
    stream: str
    image_size: int
    few_shot_weight: float
    threshold: float | None

    @property
    def num_references(self) -> int:
        return int(self.manifest["references"]["count"])

    @property
    def nbytes(self) -> int:
        """Memory held by the bank, in bytes."""
        return sum(b.numel() * b.element_size() for b in self.banks)

    def summary(self) -> dict[str, Any]:
        """The JSON-safe description shown by ``profile list`` and ``GET /v1/profiles``."""
        m = self.manifest
        return {"name": self.name, "version": self.version, "references": self.num_references,
                "few_shot_weight": self.few_shot_weight, "threshold": self.threshold,
                "calibration": m.get("calibration"), "created": m["created"], "updated": m["updated"],
                "bank_bytes": self.nbytes}


class ProfileScorer:
    """Scores with one profile on a shared detector (a :class:`~s2swclip.inference.pipeline.Scorer`).

    Thread-safe as far as the detector is: nothing is written to it."""

    def __init__(self, detector, profile: Profile):
        self.detector = detector
        self.profile = profile
        self.image_size = int(profile.image_size)

    @property
    def threshold(self) -> float | None:
        """The profile's threshold (what ``predict`` uses when none is given)."""
        return self.profile.threshold

    @property
    def map_scale(self) -> float:
        """``(1 - w) * L + w``, the fused map's bound (see ``S2SWDetector.map_scale``)."""
        w = self.profile.few_shot_weight
        return (1.0 - w) * len(self.detector.config.feature_layers) + w

    @torch.inference_mode()
    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, det = self.profile, self.detector
        images = torch.from_numpy(np.ascontiguousarray(pixels))
        if images.shape[-1] != p.image_size:
            raise ValueError(f"profile {p.name} was built at {p.image_size} px, these images are {images.shape[-1]} px")
        out = det(images, few_shot_layers=p.layers, few_shot_stream=p.stream)
        pred = det.fuse_few_shot(out, list(p.banks), p.image_size, weight=p.few_shot_weight)
        return (pred.image_scores.detach().float().cpu().numpy(),
                pred.anomaly_maps.detach().float().cpu().numpy())

    def describe(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "profile_version": self.profile.version}


class LiveProfiles:
    """The profiles a process serves: name -> :class:`Profile`, swapped atomically.

    ``get`` returns the current object; ``put``/``remove`` replace it under a lock. A
    :class:`Profile` is never mutated, so a reader holds a consistent bank for as long as it
    keeps the reference."""

    def __init__(self, profiles: dict[str, Profile] | None = None):
        self._lock = threading.Lock()
        self._profiles: dict[str, Profile] = dict(profiles or {})

    def get(self, name: str) -> Profile | None:
        with self._lock:
            return self._profiles.get(name)

    def put(self, profile: Profile, *, unless_newer: bool = False) -> None:
        """Serve ``profile``; ``unless_newer``: not if a later version of it is served already
        (one loaded from disk meanwhile)."""
        with self._lock:
            old = self._profiles.get(profile.name)
            if not (unless_newer and old is not None and old.version > profile.version):
                self._profiles[profile.name] = profile

    def remove(self, name: str) -> None:
        with self._lock:
            self._profiles.pop(name, None)

    def all(self) -> list[Profile]:
        with self._lock:
            return sorted(self._profiles.values(), key=lambda p: p.name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._profiles)
