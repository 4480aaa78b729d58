"""The test protocol: a detector on a ``meta.json`` dataset, class by class -> metrics, report,
figures (``s2swclip test``).

A protocol variant plugs in as an :class:`EvalHook`: it may set per-class state on the detector
and choose the items a class is scored on, and it adds its own entry to the report. The
few-normal-shot protocol is one (:class:`s2swclip.eval.fewshot.FewShotHook`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..errors import S2SWError
from ..progress import progress as make_progress

log = logging.getLogger(__name__)


class EvalHook(Protocol):
    """What a protocol variant adds to :func:`evaluate_dataset` (a class, not a callback list:
    one hook per run, its steps called in this order)."""

    name: str  # the report key of its entry

    def start(self, det, dataset) -> int:
        """Before any class: prepare (e.g. draw references); returns how many test items will
        not be scored (for the progress bar)."""

    def before_class(self, det, cls: str, indices: list[int]) -> list[int]:
        """Set ``cls``'s state on ``det``; returns the test indices to score."""

    def finish(self, det) -> None:
        """After the last class (also after a failure): undo what the hook set on ``det``."""

    def describe(self, det) -> dict[str, Any]:
        """The hook's entry of the report."""


@dataclass
class _ClassOutputs:
    """What one class's items gave: labels, scores, masks and maps, figures to draw."""

    labels: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    has_mask: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    figures: list[tuple] = field(default_factory=list)  # (image, mask, map, target, title)


def _denormalise(image: torch.Tensor) -> np.ndarray:
    """[3,S,S] CLIP-normalised -> uint8 [S,S,3]."""
    from ..data.images import OPENAI_MEAN, OPENAI_STD

    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    rgb = (image.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (rgb * 255 + 0.5).astype(np.uint8)


def evaluate_dataset(
    det,
    data_root: str | Path,
    *,
    dataset_name: str | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
    classes: Sequence[str] | None = None,
    aupro_method: str = "exact",
    out_dir: str | Path | None = None,
    figures_per_class: int = 0,
    progress: bool = True,
    num_workers: int = 0,
    heatmap_scale: str = "fixed",
    hook: EvalHook | None = None,
) -> dict:
    """Score the test split of ``data_root`` class by class and compute the metrics.

    Pixel metrics use the items that have a mask (normal images and anomalous ones with a mask
    file); image metrics use all items. With ``out_dir`` the report (JSON, CSV) and figures
    (``figures/<class>/*.png`` overlays, ``figures/<class>_roc.png``/``_pr.png``) are written.
    With a ``hook`` (e.g. :class:`~s2swclip.eval.fewshot.FewShotHook`: each class scored with
    normal references drawn per class; the detector's references are cleared at the end) the
    report gains the hook's entry (``few_shot``).
    The overlays of a class share one colour scale, the range of its maps on the per-layer scale
    (``heatmap_scale="fixed"``; ``"image"``: each map's own range; see
    :mod:`s2swclip.viz.heatmap`), drawn as a colour bar with its values.

    Returns the report dict ``{"dataset", "aupro_method", "classes": {...}, "mean": {...}}``.
    """
    from ..data.dataset import AnomalyDataset
    from ..specs import check_heatmap_scale
    from .metrics import compute_metrics
    from .report import build_report, write_report

    check_heatmap_scale(heatmap_scale)
    ds = AnomalyDataset(data_root, split="test", image_size=int(image_size or det.config.image_size),
                        classes=classes)
    name = dataset_name or Path(data_root).resolve().name
    fig_dir = Path(out_dir) / "figures" if out_dir is not None and figures_per_class else None
    per_class: dict[str, dict] = {}
    try:
        skipped = hook.start(det, ds) if hook is not None else 0
        bar = make_progress(len(ds) - skipped, f"testing {name}", enabled=progress)
        for cls, idx in ds.class_indices().items():
            if hook is not None:
                idx = hook.before_class(det, cls, idx)
            outs = _score_class(det, ds, idx, cls, batch_size=batch_size, num_workers=num_workers,
                                fig_dir=fig_dir, figures=figures_per_class, bar=bar)
            labels, scores = np.concatenate(outs.labels), np.concatenate(outs.scores)
            keep = np.concatenate(outs.has_mask).astype(bool)
            pix_masks = np.concatenate(outs.masks)[keep] if keep.any() else None
            pix_maps = np.concatenate(outs.maps)[keep] if keep.any() else None
            per_class[cls] = compute_metrics(labels, scores, pix_masks, pix_maps, aupro_method=aupro_method,
                                             pixel=pix_masks is not None, where=f"{name}/{cls}")
            del pix_masks, pix_maps
            _draw_class(det, outs, heatmap_scale)
            if fig_dir is not None and len(set(labels.tolist())) == 2:
                from .curves import save_curves

                save_curves(labels, scores, str(fig_dir / cls))
            del outs
        bar.close()
        entry = hook.describe(det) if hook is not None else None
    finally:
        if hook is not None:
            hook.finish(det)
    if not per_class:
        raise S2SWError(f"no test items in {Path(data_root) / 'meta.json'}")
    report = build_report(name, per_class, aupro_method=aupro_method)
    if hook is not None:
        report[hook.name] = entry
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _score_class(det, ds, indices: list[int], cls: str, *, batch_size: int, num_workers: int,
                 fig_dir: Path | None, figures: int, bar) -> _ClassOutputs:
    """Score ``cls``'s items; keep the first ``figures`` anomalous ones to draw (with ``fig_dir``)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, indices), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    outs = _ClassOutputs()
    for batch in loader:
        out = det.predict(batch["image"])
        outs.labels.append(batch["label"].numpy())
        outs.scores.append(out.image_scores.cpu().numpy())
        outs.has_mask.append(batch["has_mask"].numpy())
        outs.masks.append(batch["mask"].numpy().astype(np.uint8))
        outs.maps.append(out.anomaly_maps.cpu().numpy().astype(np.float32))
        if fig_dir is not None:
            for i in range(len(batch["label"])):
                if len(outs.figures) >= figures or int(batch["label"][i]) != 1:
                    continue
                path = Path(batch["path"][i])
                target = fig_dir / cls / f"{len(outs.figures):03d}_{path.stem}.png"
                outs.figures.append((_denormalise(batch["image"][i]), batch["mask"][i].numpy(),
                                     outs.maps[-1][i], target, f"{cls}: {path.name}"))
        bar.update(len(batch["label"]))
    return outs


def _draw_class(det, outs: _ClassOutputs, heatmap_scale: str) -> None:
    """Save the class's overlays, on one colour scale (``fixed``) or each on its own (``image``)."""
    if not outs.figures:
        return
    from ..viz.figures import save_overlay
    from ..viz.heatmap import image_scale, range_scale

    map_scale = det.map_scale  # after the class's references are set (few-shot protocol)
    scale = range_scale(outs.maps, map_scale) if heatmap_scale == "fixed" else None
    for image, mask, amap, target, title in outs.figures:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_overlay(image, mask, amap, target, title=title, scale=scale or image_scale(amap, map_scale))


def evaluate_few_shot(det, data_root: str | Path, *, shots: int, seeds: Sequence[int],
                      out_dir: str | Path | None = None, **kwargs) -> dict:
    """:func:`evaluate_dataset` with ``shots`` references per class (a
    :class:`~s2swclip.eval.fewshot.FewShotHook`), once per seed; several seeds -> runs in
    ``out_dir/seed_<S>`` and the combined report (mean, std) in ``out_dir``. ``kwargs`` go to
    ``evaluate_dataset``. The detector's references are cleared at the end."""
    from .fewshot import FewShotHook, combine_seed_reports
    from .report import write_report

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise S2SWError(f"seeds must be one or more distinct seeds, got {seeds}", fields=["seeds"])
    if len(seeds) == 1:
        return evaluate_dataset(det, data_root, out_dir=out_dir, hook=FewShotHook(shots, seeds[0]), **kwargs)
    runs = []
    for s in seeds:
        sub = None if out_dir is None else Path(out_dir) / f"seed_{s}"
        runs.append(evaluate_dataset(det, data_root, out_dir=sub, hook=FewShotHook(shots, s), **kwargs))
    report = combine_seed_reports(runs, seeds)
    if out_dir is not None:
        write_report(report, str(out_dir))
    return report
