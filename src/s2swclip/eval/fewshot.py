"""The few-normal-shot test protocol (``s2swclip test --shots K --shot-seed S [S ...]``).

For each class, K normal images are drawn (seeded) as the detector's references, and the class
is scored with them (the standard few-shot protocol of WinCLIP and its successors):

* from the class's normal images of the ``train`` split of ``meta.json``;
* when the dataset has no train split (or the class has no normal image there), from the
  class's normal test images, which are then excluded from the evaluation.

The draw for a class depends only on the seed and the class name (``numpy.random.default_rng(
[seed, crc32(class)])``, K of the candidates in ``meta.json`` order without replacement), so a
run is reproducible and adding classes does not change the others' references. The report
records the shots, the seeds and every reference file; with several seeds each run has its own
folder (``seed_<S>/``) and the combined report holds the mean over seeds and their sample
standard deviation.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import S2SWError
from .metrics import METRIC_KEYS

log = logging.getLogger(__name__)

__all__ = ["FewShotHook", "ReferencePlan", "draw_references", "combine_seed_reports", "describe_few_shot",
           "format_few_shot"]


@dataclass
class ReferencePlan:
    """The references of every class for one seed.

    Attributes:
        shots: K.
        seed: the seed of the draw.
        sources: ``{class: (dataset holding the references, [its indices])}``.
        excluded: ``{class: set of test-split indices not to evaluate}`` (references drawn from
            the test split).
        evaluated: ``{class: number of test items scored}``, filled by :meth:`use`.
    """

    shots: int
    seed: int
    sources: dict[str, tuple[Any, list[int]]]
    excluded: dict[str, set[int]]
    evaluated: dict[str, int] = field(default_factory=dict)

    def use(self, det, cls: str, indices: Sequence[int]) -> list[int]:
        """Set ``cls``'s references on ``det``; returns the test indices left to evaluate."""
        ds, idx = self.sources[cls]
        det.set_references(torch.stack([ds[i]["image"] for i in idx]))
        keep = [i for i in indices if i not in self.excluded.get(cls, ())]
        if not keep:
            raise S2SWError(f"class {cls}: no test image left to evaluate after taking {self.shots} "
                            f"references from its normal test images; lower shots", fields=["shots"])
        self.evaluated[cls] = len(keep)
        return keep

    def describe(self) -> dict[str, Any]:
        """``{class: {"split", "files", "evaluated"}}`` (files as written in meta.json)."""
        out = {}
        for cls, (ds, idx) in self.sources.items():
            out[cls] = {"split": ds.split, "files": [ds.items[i]["img_path"] for i in idx],
                        "evaluated": self.evaluated.get(cls)}
        return out


def _draw(candidates: list[int], shots: int, seed: int, cls: str) -> list[int]:
    rng = np.random.default_rng([int(seed), zlib.crc32(cls.encode("utf-8"))])
    picked = rng.choice(len(candidates), size=shots, replace=False)
    return [candidates[int(i)] for i in sorted(picked.tolist())]


def draw_references(test_ds, shots: int, seed: int) -> ReferencePlan:
    """Draw ``shots`` normal references per class of ``test_ds`` (an
    :class:`~s2swclip.data.dataset.AnomalyDataset` of the test split) as described above."""
    from ..data.dataset import AnomalyDataset, read_meta

    if shots < 1 or seed < 0:
        raise S2SWError(f"shots must be >= 1 and the seed >= 0, got {shots} and {seed}", fields=["shots"])
    train_split = read_meta(test_ds.meta_path).get("train", {})
    present = [c for c in test_ds.classes if c in train_split]
    train_ds = (AnomalyDataset(test_ds.root, "train", test_ds.image_size, present, test_ds.meta_path)
                if present else None)
    sources, excluded = {}, {}
    for cls in test_ds.classes:
        train_normals = ([i for i in train_ds.indices_of(cls) if train_ds.items[i]["anomaly"] == 0]
                         if train_ds is not None and cls in present else [])
        if train_normals:
            ds, candidates = train_ds, train_normals
        else:
            ds = test_ds
            candidates = [i for i in test_ds.indices_of(cls) if test_ds.items[i]["anomaly"] == 0]
            log.info("class %s: no normal train images, references drawn from its normal test images "
                     "(excluded from the evaluation)", cls)
        if len(candidates) < shots:
            raise S2SWError(f"class {cls} has {len(candidates)} normal {ds.split} image(s) in "
                            f"{test_ds.meta_path}, fewer than shots {shots}; lower shots", fields=["shots"])
        picked = _draw(candidates, shots, seed, cls)
        sources[cls] = (ds, picked)
        if ds is test_ds:
            excluded[cls] = set(picked)
    return ReferencePlan(shots, seed, sources, excluded)


class FewShotHook:
    """The few-normal-shot protocol as a hook of :func:`s2swclip.eval.protocol.evaluate_dataset`:
    draws ``shots`` references per class with ``seed`` (:func:`draw_references`), sets each
    class's on the detector before it is scored, clears them at the end and describes them in the
    report's ``few_shot`` entry."""

    name = "few_shot"

    def __init__(self, shots: int, seed: int) -> None:
        self.shots, self.seed = int(shots), int(seed)
        self.plan: ReferencePlan | None = None

    def start(self, det, dataset) -> int:
        self.plan = draw_references(dataset, self.shots, self.seed)
        return sum(map(len, self.plan.excluded.values()))

    def before_class(self, det, cls: str, indices: list[int]) -> list[int]:
        return self.plan.use(det, cls, indices)

    def finish(self, det) -> None:
        if self.plan is not None:
            det.clear_references()

    def describe(self, det) -> dict[str, Any]:
        return dict(shots=self.shots, seeds=[self.seed], **describe_few_shot(det),
                    references={str(self.seed): self.plan.describe()})


def describe_few_shot(det) -> dict[str, Any]:
    """The few-shot settings of ``det`` for a report."""
    c = det.config
    return {"few_shot_weight": float(c.few_shot_weight), "layers": list(c.few_shot_layers),
            "stream": c.few_shot_stream, "coreset": c.coreset}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def combine_seed_reports(reports: Sequence[dict], seeds: Sequence[int]) -> dict:
    """One report from runs with different seeds: per class and for the mean row, the mean over
    seeds (``classes``, ``mean``) and the sample standard deviation (``std``)."""
    from .report import build_report

    first = reports[0]
    classes, std_classes = {}, {}
    for cls in first["classes"]:
        stats = {k: _mean_std([r["classes"][cls][k] for r in reports]) for k in METRIC_KEYS}
        classes[cls] = {k: v[0] for k, v in stats.items()}
        std_classes[cls] = {k: v[1] for k, v in stats.items()}
    report = build_report(first["dataset"], classes, aupro_method=first["aupro_method"])
    # the mean row: mean and spread over seeds of each run's class mean
    report["std"] = {"classes": std_classes,
                     "mean": {k: _mean_std([r["mean"][k] for r in reports])[1] for k in METRIC_KEYS}}
    report["few_shot"] = dict(first["few_shot"], seeds=[int(s) for s in seeds],
                              references={str(s): r["few_shot"]["references"][str(s)]
                                          for s, r in zip(seeds, reports)})
    return report


def format_few_shot(report: dict) -> str:
    """One line about the references, and with several seeds the mean row as mean ± std."""
    fs = report["few_shot"]
    line = (f"few-shot: {fs['shots']} reference image(s) per class, seed(s) {' '.join(map(str, fs['seeds']))}, "
            f"weight {fs['few_shot_weight']}, layers {fs['layers']} ({fs['stream']} stream)"
            + (f", coreset {fs['coreset']}" if fs.get("coreset") else ""))
    if "std" not in report:
        return line
    cells = []
    for k in METRIC_KEYS:
        m, s = report["mean"][k], report["std"]["mean"][k]
        if m is not None:
            cells.append(f"{k} {100 * m:.1f} ± {100 * s:.1f}")
    return line + f"\nmean over {len(fs['seeds'])} seeds ± sample std (in %): " + ", ".join(cells)
