"""The test protocol: a detector on a ``meta.json`` dataset, class by class -> metrics, report,
figures (``s2swclip test``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import S2SWError
from ..progress import progress as make_progress

log = logging.getLogger(__name__)


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
    shots: int | None = None,
    shot_seed: int = 0,
    heatmap_scale: str = "fixed",
) -> dict:
    """Score the test split of ``data_root`` class by class and compute the metrics.

    Pixel metrics use the items that have a mask (normal images and anomalous ones with a mask
    file); image metrics use all items. With ``out_dir`` the report (JSON, CSV) and figures
    (``figures/<class>/*.png`` overlays, ``figures/<class>_roc.png``/``_pr.png``) are written.
    With ``shots``, each class is scored with ``shots`` normal references drawn with
    ``shot_seed`` (:mod:`s2swclip.eval.fewshot`; the detector's references are cleared at the
    end) and the report gains a ``few_shot`` entry.
    The overlays of a class share one colour scale, the range of its maps on the per-layer scale
    (``heatmap_scale="fixed"``; ``"image"``: each map's own range; see
    :mod:`s2swclip.viz.heatmap`), drawn as a colour bar with its values.

    Returns the report dict ``{"dataset", "aupro_method", "classes": {...}, "mean": {...}}``.
    """
    from ..data.dataset import AnomalyDataset
    from ..specs import check_heatmap_scale
    from ..viz.heatmap import image_scale, range_scale
    from .metrics import compute_metrics
    from .report import build_report, write_report

    check_heatmap_scale(heatmap_scale)
    size = int(image_size or det.config.image_size)
    ds = AnomalyDataset(data_root, split="test", image_size=size, classes=classes)
    plan = None
    if shots is not None:  # few-normal-shot protocol
        from .fewshot import describe_few_shot, draw_references

        plan = draw_references(ds, int(shots), int(shot_seed))
    name = dataset_name or Path(data_root).resolve().name
    per_class: dict[str, dict] = {}
    fig_dir = Path(out_dir) / "figures" if out_dir is not None and figures_per_class else None
    total = len(ds) - (sum(map(len, plan.excluded.values())) if plan is not None else 0)
    bar = make_progress(total, f"testing {name}", enabled=progress)
    for cls, idx in ds.class_indices().items():
        if plan is not None:
            idx = plan.use(det, cls, idx)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size,
                                             shuffle=False, num_workers=num_workers)
        labels, scores, has_mask, masks, maps = [], [], [], [], []
        figures = []  # (image, mask, map, target, title) of the first anomalous items, drawn at the end
        for batch in loader:
            out = det.predict(batch["image"])
            labels.append(batch["label"].numpy())
            scores.append(out.image_scores.cpu().numpy())
            has_mask.append(batch["has_mask"].numpy())
            masks.append(batch["mask"].numpy().astype(np.uint8))
            maps.append(out.anomaly_maps.cpu().numpy().astype(np.float32))
            if fig_dir is not None and len(figures) < figures_per_class:
                for i in range(len(batch["label"])):
                    if len(figures) >= figures_per_class or int(batch["label"][i]) != 1:
                        continue
                    target = fig_dir / cls / f"{len(figures):03d}_{Path(batch['path'][i]).stem}.png"
                    figures.append((_denormalise(batch["image"][i]), batch["mask"][i].numpy(),
                                    maps[-1][i], target, f"{cls}: {Path(batch['path'][i]).name}"))
            bar.update(len(batch["label"]))
        labels_a, scores_a = np.concatenate(labels), np.concatenate(scores)
        keep = np.concatenate(has_mask).astype(bool)
        pix_masks = np.concatenate(masks)[keep] if keep.any() else None
        pix_maps = np.concatenate(maps)[keep] if keep.any() else None
        per_class[cls] = compute_metrics(labels_a, scores_a, pix_masks, pix_maps,
                                         aupro_method=aupro_method, pixel=pix_masks is not None,
                                         where=f"{name}/{cls}")
        if figures:
            from ..viz.figures import save_overlay

            map_scale = det.map_scale  # after the class's references are set (few-shot protocol)
            scale = range_scale(maps, map_scale) if heatmap_scale == "fixed" else None
            for image, mask, amap, target, title in figures:
                target.parent.mkdir(parents=True, exist_ok=True)
                save_overlay(image, mask, amap, target, title=title,
                             scale=scale or image_scale(amap, map_scale))
        if fig_dir is not None:
            from .curves import save_curves

            if len(set(labels_a.tolist())) == 2:
                save_curves(labels_a, scores_a, str(fig_dir / cls))
        del masks, maps, pix_masks, pix_maps
    bar.close()
    if plan is not None:
        det.clear_references()
    if not per_class:
        raise S2SWError(f"no test items in {Path(data_root) / 'meta.json'}")
    report = build_report(name, per_class, aupro_method=aupro_method)
    if plan is not None:
        report["few_shot"] = dict(shots=plan.shots, seeds=[plan.seed], **describe_few_shot(det),
                                  references={str(plan.seed): plan.describe()})
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def evaluate_few_shot(det, data_root: str | Path, *, shots: int, seeds: Sequence[int],
                      out_dir: str | Path | None = None, **kwargs) -> dict:
    """:func:`evaluate_dataset` with ``shots`` references per class, once
    per seed; several seeds -> runs in ``out_dir/seed_<S>`` and the combined report (mean, std)
    in ``out_dir``. ``kwargs`` go to ``evaluate_dataset``. The detector's references are cleared
    at the end."""
    from .fewshot import combine_seed_reports
    from .report import write_report

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise S2SWError(f"--shot-seed needs distinct seeds, got {seeds}")
    if len(seeds) == 1:
        return evaluate_dataset(det, data_root, out_dir=out_dir, shots=shots, shot_seed=seeds[0], **kwargs)
    runs = []
    for s in seeds:
        sub = None if out_dir is None else Path(out_dir) / f"seed_{s}"
        runs.append(evaluate_dataset(det, data_root, out_dir=sub, shots=shots, shot_seed=s, **kwargs))
    report = combine_seed_reports(runs, seeds)
    if out_dir is not None:
        write_report(report, str(out_dir))
    return report
