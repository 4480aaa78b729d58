"""Scoring image files: collect inputs, batch them through the detector, write results.

The Python side of ``s2swclip predict``: images, folders or globs in; per-image scores, heatmap
overlays and a CSV/JSON of results out. A corrupt image is reported and skipped; the others are
still scored.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .errors import S2SWError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageResult:
    """One scored (or failed) image."""

    path: str
    name: str = ""  # path relative to the inputs' common folder
    score: float | None = None
    anomalous: bool | None = None
    overlay: str | None = None
    error: str | None = None


def collect_images(inputs: Sequence[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of images.

    Raises :class:`S2SWError` for a path that does not exist or when nothing is found.
    """
    found: list[Path] = []
    for raw in inputs:
        text = os.path.expanduser(str(raw))
        p = Path(text)
        if any(ch in text for ch in "*?["):
            matches = [Path(m) for m in glob.glob(text, recursive=True)]
            found += [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
        elif p.is_dir():
            pattern = "**/*" if recursive else "*"
            found += [m for m in p.glob(pattern) if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
        elif p.is_file():
            found.append(p)
        else:
            raise S2SWError(f"input not found: {p} (pass image files, folders or glob patterns)")
    unique = sorted({f.resolve() for f in found})
    if not unique:
        raise S2SWError(f"no images found in {', '.join(map(str, inputs))} "
                        f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return unique


def _load(path: Path, image_size: int):
    from .data.dataset import load_image, preprocess_image

    img = load_image(path, exif_transpose=True)
    return img, preprocess_image(img, image_size)


def _prefetch(paths: Sequence[Path], size: int, lookahead: int, workers: int):
    """Yield ``(path, (pil, tensor) or None, error or None)`` in input order, decoding up to
    ``lookahead`` files ahead on ``workers`` threads (memory stays bounded)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = iter(paths)
        queue: deque = deque()
        for path in it:
            queue.append((path, pool.submit(_load, path, size)))
            if len(queue) >= lookahead:
                break
        while queue:
            path, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_load, nxt, size)))
            try:
                yield path, fut.result(), None
            except S2SWError as e:
                yield path, None, str(e)


def score_files(
    det,
    paths: Sequence[Path],
    batch_size: int = 8,
    image_size: int | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> Iterator[tuple[Path, object, torch.Tensor | None, torch.Tensor | None, str | None]]:
    """Yield ``(path, pil_image, score, map [S,S], error)`` per file, scoring in batches.

    Files are decoded on background threads while the model runs. Unreadable files yield
    ``error`` (one line) and ``None`` results; they do not stop the run.
    """
    size = int(image_size or det.config.image_size)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc="scoring", unit="img", dynamic_ncols=True)
    pending: list[tuple[Path, object, torch.Tensor]] = []

    def flush():
        if not pending:
            return []
        out = det.predict(torch.stack([t for _, _, t in pending]))
        scores, maps = out.image_scores.cpu(), out.anomaly_maps.cpu()
        rows = [(p, img, scores[i], maps[i], None) for i, (p, img, _) in enumerate(pending)]
        if bar:
            bar.update(len(pending))
        pending.clear()
        return rows

    for path, loaded, err in _prefetch(paths, size, lookahead=2 * batch_size, workers=workers):
        if err is not None:
            yield path, None, None, None, err
            if bar:
                bar.update(1)
            continue
        pending.append((path, *loaded))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()
    if bar:
        bar.close()


def calibrate_threshold(normal_scores: Iterable[float], fpr: float = 0.01) -> float:
    """Threshold flagging at most ``fpr`` of known-good images (decision: score > threshold)."""
    s = np.sort(np.asarray(list(normal_scores), dtype=np.float64))[::-1]
    if s.size == 0:
        raise S2SWError("calibration needs at least one known-good image")
    if not 0.0 <= fpr < 1.0:
        raise S2SWError(f"--fpr must be in [0, 1), got {fpr}")
    k = int(math.floor(fpr * s.size + 1e-9))  # number of good images allowed above threshold
    return float(s[min(k, s.size - 1)])


def overlay_png(pil_image, amap: torch.Tensor, side: int | None = None) -> tuple[bytes, int, int]:
    """Heatmap overlay PNG at the image's aspect ratio, longest side ``side`` (default: S).

    The detector scores the image squashed to S x S; the map [S, S] is stretched back to the
    image's proportions so that the overlay lines up with the original.
    Returns ``(png_bytes, width, height)``.
    """
    from PIL import Image

    from .eval.figures import heatmap_overlay

    side = int(side or amap.shape[-1])
    w0, h0 = pil_image.size
    scale = side / max(w0, h0)
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    m = torch.nn.functional.interpolate(amap[None, None].float(), size=(h, w), mode="bilinear",
                                        align_corners=False)[0, 0]
    rgb = np.asarray(pil_image.convert("RGB").resize((w, h), Image.BICUBIC))
    over = heatmap_overlay(rgb, m.numpy())
    buf = io.BytesIO()
    Image.fromarray(np.asarray(over, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), w, h


def display_names(paths: Sequence[Path]) -> list[str]:
    """Paths relative to their common folder (``crack/000.png``), to tell same-named files apart."""
    if not paths:
        return []
    base = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(base)) for p in paths]


def _safe_name(display: str, used: set[str]) -> str:
    """A flat, sanitised, unique PNG file name for an input shown as ``display``."""
    stem = str(Path(display).with_suffix("")).replace(os.sep, "__")
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[-120:].lstrip(".") or "image"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.png"
    used.add(name)
    return name


def run_predict(
    det,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    threshold: float | None = None,
    calibrate: str | os.PathLike | None = None,
    fpr: float = 0.01,
    batch_size: int = 8,
    overlays: bool = True,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Score ``inputs`` and write ``results.csv``, ``results.json`` and ``overlays/*.png``.

    With ``calibrate`` (a folder of known-good images) the threshold is chosen so that at most
    ``fpr`` of them are flagged; it overrides ``threshold``.

    Returns a summary dict: ``{"threshold", "n_scored", "n_failed", "results": [...]}``.
    """
    from .fileio import atomic_write_bytes

    paths = collect_images(inputs)
    if calibrate is not None:
        good = collect_images([calibrate])
        scores = [float(s) for _, _, s, _, err in score_files(det, good, batch_size) if err is None]
        threshold = calibrate_threshold(scores, fpr)
        if warn:
            warn(f"calibrated threshold {threshold:.6f} on {len(scores)} good images (fpr {fpr})")
    out = Path(out_dir)
    results: list[ImageResult] = []
    used: set[str] = set()
    shown = dict(zip(paths, display_names(paths)))
    for path, img, score, amap, err in score_files(det, paths, batch_size, progress=progress):
        if err is not None:
            if warn:
                warn(f"skipped: {err}")
            results.append(ImageResult(str(path), shown[path], error=err))
            continue
        r = ImageResult(str(path), shown[path], score=float(score))
        if threshold is not None:
            r.anomalous = bool(r.score > threshold)
        if overlays:
            name = _safe_name(shown[path], used)
            atomic_write_bytes(out / "overlays" / name, overlay_png(img, amap)[0])
            r.overlay = str(Path("overlays") / name)
        results.append(r)
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r.path])  # failures were reported as soon as they were read
    rows = [asdict(r) for r in results]
    summary = {"threshold": threshold, "n_scored": sum(r.error is None for r in results),
               "n_failed": sum(r.error is not None for r in results), "results": rows}
    atomic_write_bytes(out / "results.json", json.dumps(summary, indent=2).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ImageResult.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    return summary
