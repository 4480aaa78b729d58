"""Training feature cache: the frozen image encoder runs once per image, not once per epoch.

Only the prompts are trained; the CLIP image encoder is frozen and a training image is only
resized and normalised, so its backbone outputs (the global feature and the patch features of the
selected layers) are the same in every epoch. ``train(..., cache_features=DIR | "memory")`` stores
them the first time an image is seen and reads them back in later epochs.

Exactness. :meth:`S2SWDetector.encode_image` on a batch is not bit for bit the same as on each of
its images alone: BLAS picks its kernels by matrix size, and on CPU the global feature of an image
differs in the last bit between batch sizes 1 and 8. Training therefore encodes images ONE AT A
TIME, cached or not (:func:`encode_per_image`), so an image's features never depend on its batch
neighbours; the cache holds exactly those tensors, and a run with an ``fp32`` cache ends with the
same prompts, bit for bit, as a run without one (whether the cache was cold, warm, or filled by
another run). An ``fp16`` cache rounds every image's features to float16 in every epoch (also
when they were just computed), so its runs are reproducible too, but differ slightly from fp32
runs; the training-state fingerprint records it.

Keys. Entries live in ``DIR/<run key>/`` (``manifest.json`` says what that key covers, for
people; it is never read back). The run key hashes everything that determines the features: the
vision tower's architecture (its module description) and the bytes of all its weights (so a tag, a
file and a random seed are all covered by content), the backbone-adaptation options that change
image features (``feature_layers``, ``dpam_layers``, ``layer_aliasing``, ``global_ln_post``), the
precision, the device kind, the library versions (s2swclip, torch, open_clip), the image size and
the dataset's preprocessing (with Pillow's version), and the entry dtype. An image's entry is named
by the hash of the run key and the SHA-256 of the image file's bytes, read in the same go as the
bytes that are decoded. A changed image, option or weight is therefore a different name, never a
stale entry. Training hyper-parameters (learning rate, loss weights, epochs, batch size; the seed
too, unless the weights are random, since those are drawn with it) are not part of the key: runs
of a sweep share one cache.

Storage. One safetensors file per image, ``DIR/<run key>/<k[:2]>/<k>.safetensors``: tensors
``global`` [C] and ``patch.<i>`` [N, C] for each DISTINCT patch tensor (with faithful layer
aliasing that is one, not four), metadata: format, entry key, the layer-to-tensor map and a
CRC-32 of the tensor bytes. Each file is written atomically (:mod:`s2swclip.fileio`) by a
background thread, so a crashed run leaves only complete entries. ``"memory"`` keeps the entries
in this process instead (small sets).

Untrusted entries (:mod:`.cache_entries`). A cache folder may be shared with other runs and users, so an entry is
validated before use: bounded size, safetensors parsed without unpickling anything, format, key,
layer map, tensor names, dtypes and shapes, the checksum and finiteness. An entry that fails is
never used: a warning names it and the image's features are recomputed and the entry rewritten.
Entries and shard folders are opened without following symbolic links and without blocking (a
FIFO, socket, device or folder in an entry's place is refused from ``fstat``, never read), so a
planted link cannot make reads or writes leave the cache and a planted FIFO cannot hang training;
an entry whose place is taken by a folder or link is not stored (a warning names it), the others are.
(The checksum catches accidental corruption; someone who may write to the folder can still plant
wrong features with a valid checksum; give the folder the permissions you would give the
training data.)

Workers. With data-loader workers the workers read and hash the image file, read and validate
its entry and decode the image only on a miss; the main process runs the encoder on the misses
and hands new entries to the writer thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import torch

from ..arrays import available_memory
from ..errors import S2SWError, first_line
from ..fileio import atomic_write_at, check_output_dir, read_regular_file
from .cache_entries import (_ENTRY_ERRNOS, _TORCH_DTYPES, ENTRY_FORMAT, ENTRY_VERSION, BadEntry, EntryFiles,  # noqa: F401
                            Layout, _crc32)

logger = logging.getLogger(__name__)

#: entry dtypes: fp32 (exact; the default) and fp16 (half the space; slightly different prompts)
CACHE_DTYPES = ("fp32", "fp16")
MEMORY = "memory"
#: bump when the arithmetic of S2SWBackbone.encode_image or of encode_per_image changes
ENCODING_VERSION = 1
_SPACE_RESERVE = 64 << 20  # left free on the disk (or in memory) besides the cache's estimate
_MAX_PENDING_WRITES = 32
Features = tuple[torch.Tensor, list[torch.Tensor]]
"""(global [B, C], one [B, N, C] per feature layer; aliased layers are the same object)."""


# ------------------------------------------------------------------------------------ tensors
def encode_per_image(det, images: torch.Tensor) -> Features:
    """Frozen image features of a batch, computed ONE image at a time (see the module docstring).

    Args:
        det: the detector.
        images: [B, 3, S, S] CLIP-normalised (any device).

    Returns:
        ``(global [B, C], patches)`` as :meth:`S2SWDetector.encode_image` returns them, on the
        detector's device, float32; aliased layers are one tensor object.
    """
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
    images = images.to(det.device, torch.float32)
    encoded = [det.encode_image(images[i:i + 1]) for i in range(images.shape[0])]
    layers = layer_map(encoded[0][1])
    return join_features([g[0] for g, _ in encoded], [[d[0] for d in distinct_of(p)] for _, p in encoded], layers)


def layer_map(patches: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """For each feature layer, the index of its tensor among the distinct ones (first-seen order)."""
    index: dict[int, int] = {}
    return tuple(index.setdefault(id(p), len(index)) for p in patches)


def distinct_of(patches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The distinct tensors of ``patches`` in :func:`layer_map` order."""
    seen: dict[int, torch.Tensor] = {}
    for p in patches:
        seen.setdefault(id(p), p)
    return list(seen.values())


def split_features(features: Features) -> list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
    """A batch's features as per-image entries ``(global [C], distinct patch tensors ([N, C], ...))``."""
    glob, patches = features
    distinct = distinct_of(patches)
    return [(glob[i], tuple(d[i] for d in distinct)) for i in range(glob.shape[0])]


def join_features(globs: Sequence[torch.Tensor], distinct: Sequence[Sequence[torch.Tensor]],
                  layers: Sequence[int]) -> Features:
    """Stack per-image entries (``globs[i]`` [C], ``distinct[i][k]`` [N, C]) into a batch's
    :data:`Features`; layers mapped to the same distinct tensor get the same object."""
    stacked = [torch.stack([d[k] for d in distinct]) for k in range(max(layers) + 1)]
    return torch.stack(list(globs)), [stacked[k] for k in layers]


def probe_layout(det, image_size: int, dtype: str) -> Layout:
    """The :class:`Layout` of ``det``'s features at ``image_size``, from one patch-sized forward."""
    p = det.backbone.patch_size
    glob, patches = det.encode_image(torch.zeros(1, 3, p, p, device=det.device))
    return Layout(int(glob.shape[-1]), (image_size // p) ** 2 + 1, layer_map(patches), dtype)


# ---------------------------------------------------------------------------------------- keys
def run_key(det, dataset, dtype: str) -> tuple[str, dict[str, Any]]:
    """The run key (hex SHA-256) and the description it hashes (see the module docstring)."""
    import open_clip

    from .. import __version__

    visual = det.backbone.clip.visual
    h = hashlib.sha256()
    for name, t in visual.state_dict().items():  # parameters and buffers, in module order
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    device = {"type": det.device.type}
    if det.device.type == "cuda":
        device.update(name=torch.cuda.get_device_name(det.device),
                      capability=list(torch.cuda.get_device_capability(det.device)))
    c = det.config
    description = {
        "format": ENTRY_FORMAT, "entry_version": ENTRY_VERSION, "encoding_version": ENCODING_VERSION,
        "encoding": "one image at a time",
        "versions": {"s2swclip": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__},
        "vision_tower": hashlib.sha256(repr(visual).encode()).hexdigest(),
        "vision_weights": h.hexdigest(),
        "options": {"feature_layers": list(c.feature_layers), "dpam_layers": c.dpam_layers,
                    "layer_aliasing": c.layer_aliasing, "global_ln_post": c.global_ln_post},
        "precision": c.precision, "device": device,
        "preprocessing": dataset.preprocessing, "dtype": dtype,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return key, description


# ------------------------------------------------------------------------------- loader side
class CachedImages(torch.utils.data.Dataset):
    """A deterministic dataset's samples with the image replaced by its cached features when
    there are any (runs in data-loader workers).

    Each sample is the dataset's (see :class:`~s2swclip.data.dataset.AnomalyDataset`) plus
    ``entry`` (the entry name), and either ``features`` (a disk hit), nothing (a memory hit: the
    entry name is in ``known``) or ``image`` (a miss; ``problem`` says why when an entry was
    there but unusable).
    """

    def __init__(self, dataset, files: EntryFiles, known: frozenset[str] = frozenset()):
        self.dataset = dataset
        self.files = files
        self.known = known

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        ds = self.dataset
        path = ds.resolve(ds.items[index]["img_path"])
        try:
            data = read_regular_file(path)  # never blocks on a FIFO planted as an image
        except OSError:
            return ds.sample(index)  # the dataset's own one-line error for a missing/unreadable file
        entry = self.files.entry_key(hashlib.sha256(data).hexdigest())
        features, problem = None, None
        if self.files.root is not None:
            try:
                features = self.files.read(entry)
            except BadEntry as e:
                problem = f"{self.files.path(entry)} {e}"
        hit = features is not None or (self.files.root is None and entry in self.known)
        sample = ds.sample(index, image=False if hit else data)
        sample.update(entry=entry, features=features, problem=problem)
        return sample


def collate_cached(samples: list[dict]) -> dict:
    """Batch :class:`CachedImages` samples: ``mask`` [B, S, S], ``label`` [B], ``entry`` [B]
    names, ``image`` {position: [3, S, S]} (misses), ``features`` {position: entry tensors}
    (disk hits), ``problem`` [B] (None or why an entry was not used)."""
    return {"mask": torch.stack([s["mask"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples]),
            "entry": [s["entry"] for s in samples],
            "image": {i: s["image"] for i, s in enumerate(samples) if "image" in s},
            "features": {i: s["features"] for i, s in enumerate(samples) if s["features"] is not None},
            "problem": [s["problem"] for s in samples]}


# ------------------------------------------------------------------------------- main process
class FeatureCache:
    """The training loop's view of the cache (see :func:`open_feature_cache`)."""

    def __init__(self, files: EntryFiles, description: dict[str, Any], where: str):
        self.files = files
        self.layout = files.layout
        self.description = description
        self.where = where
        self.memory: dict[str, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] | None = (
            {} if files.root is None else None)
        self._writer = None if files.root is None else ThreadPoolExecutor(1, thread_name_prefix="s2sw-cache")
        self._pending: list[Future] = []
        self._write_failed = False
        self._reported: set[str] = set()

    @property
    def dtype(self) -> str:
        return self.layout.dtype

    def dataset(self, dataset) -> CachedImages:
        """``dataset`` for the data loader (use :func:`collate_cached`); call :meth:`begin_epoch`
        before iterating it each epoch."""
        self._wrapped = CachedImages(dataset, self.files)
        return self._wrapped

    def begin_epoch(self) -> None:
        """Let this epoch's workers (created when the loader is iterated) know the memory entries."""
        if self.memory is not None:
            self._wrapped.known = frozenset(self.memory)

    def features(self, det, batch: dict) -> tuple[Features, int]:
        """The batch's features on the detector's device, and how many came from the cache.

        Misses are encoded one image at a time, rounded to the cache dtype (fp16: also now, so
        every epoch sees the same values) and stored.
        """
        rows: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = dict(batch["features"])
        for pos, problem in enumerate(batch["problem"]):
            if problem is not None and problem not in self._reported:
                self._reported.add(problem)
                logger.warning("feature cache entry %s; recomputing it", problem)
        if self.memory is not None:
            for pos, entry in enumerate(batch["entry"]):
                if pos not in batch["image"] and entry in self.memory:
                    rows[pos] = self.memory[entry]
        missing = sorted(batch["image"])
        if set(rows) | set(missing) != set(range(len(batch["entry"]))):
            raise RuntimeError("feature cache: a sample has neither an image nor features")
        hits = len(batch["entry"]) - len(missing)
        if missing:
            computed = encode_per_image(det, torch.stack([batch["image"][p] for p in missing]))
            self._check(*computed)
            want = _TORCH_DTYPES[self.dtype]
            for pos, (g, distinct) in zip(missing, split_features(computed)):
                g = g.detach().to("cpu", want).clone()
                distinct = tuple(d.detach().to("cpu", want).clone() for d in distinct)
                if not (torch.isfinite(g).all() and all(torch.isfinite(d).all() for d in distinct)):
                    raise S2SWError(f"image features overflow {self.dtype} in the feature cache; use "
                                    f"cache_dtype fp32", fields=["cache_dtype"])
                rows[pos] = (g, distinct)
                self._store(batch["entry"][pos], g, distinct)
        ordered = [rows[p] for p in range(len(batch["entry"]))]
        glob, patches = join_features([r[0] for r in ordered], [r[1] for r in ordered], self.layout.layers)
        moved = {id(p): p.to(det.device, torch.float32) for p in patches}
        return (glob.to(det.device, torch.float32), [moved[id(p)] for p in patches]), hits

    def _check(self, glob: torch.Tensor, patches: list[torch.Tensor]) -> None:
        lay = self.layout
        if (glob.shape[-1] != lay.embed_dim or layer_map(patches) != lay.layers
                or any(tuple(p.shape[1:]) != (lay.tokens, lay.embed_dim) for p in patches)):
            raise RuntimeError("feature cache: the encoder's output does not match the probed layout")

    def _store(self, entry: str, glob: torch.Tensor, distinct: tuple[torch.Tensor, ...]) -> None:
        if self.memory is not None:
            self.memory[entry] = (glob, distinct)
            return
        if self._write_failed:
            return
        while len(self._pending) >= _MAX_PENDING_WRITES:
            self._pending.pop(0).result()
        self._pending.append(self._writer.submit(self._write, entry, glob, distinct))

    def _write(self, entry: str, glob: torch.Tensor, distinct: tuple[torch.Tensor, ...]) -> None:
        try:
            self.files.write(entry, self.files.encode(entry, glob, distinct))
        except OSError as e:
            if e.errno in _ENTRY_ERRNOS:  # this entry's name or shard is taken by something else
                if entry in self._reported:
                    return
                self._reported.add(entry)
                logger.warning("feature cache entry %s cannot be stored (%s: a folder, link or other file is in "
                               "the way); its features are recomputed when needed", self.files.path(entry),
                               first_line(e))
            elif not self._write_failed:
                self._write_failed = True
                logger.warning("cannot write feature cache entries to %s (%s); training goes on, "
                               "recomputing the features that were not stored", self.where, first_line(e))

    def flush(self) -> None:
        """Wait until every entry handed to the writer is on disk (or failed)."""
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown()


def open_feature_cache(location: str | os.PathLike, dtype: str, det, dataset) -> tuple[FeatureCache, str]:
    """Set up the cache for training ``det`` on ``dataset``; returns it and a one-line summary
    of its expected size (per image and total) and the space left.

    Args:
        location: a folder, or ``"memory"``.
        dtype: ``fp32`` or ``fp16`` (entries' dtype).

    Raises :class:`S2SWError` (naming ``cache_features`` / ``cache_dtype``) when the dataset
    is not deterministic, the folder cannot be used, or the disk (memory) lacks the space.
    """
    if dtype not in CACHE_DTYPES:
        raise S2SWError(f"invalid cache_dtype {dtype!r}: choose one of {', '.join(CACHE_DTYPES)}",
                        fields=["cache_dtype"])
    if not getattr(dataset, "deterministic", False):
        raise S2SWError(f"cache_features needs a deterministic data pipeline, but {type(dataset).__name__} "
                        f"does not declare one, random augmentation perhaps; train without cache_features",
                        fields=["cache_features"])
    layout = probe_layout(det, dataset.image_size, dtype)
    key, description = run_key(det, dataset, dtype)
    n = len(dataset)
    if str(location) == MEMORY:
        files, where = EntryFiles(None, key, layout), "memory"
        present, free = 0, available_memory()
    else:
        folder = check_output_dir(location, "cache_features")
        files, where = EntryFiles(folder / key[:32], key, layout), str(folder)
        existing = files.root
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        try:
            present, free = files.count(), shutil.disk_usage(existing).free
        except OSError as e:
            raise S2SWError(f"cannot use cache_features {folder}: {first_line(e)}; choose another folder",
                            fields=["cache_features"]) from None
    per = layout.entry_bytes
    need = per * max(0, n - present)
    summary = (f"feature cache ({where}, {dtype}): {per / 1e6:.2f} MB per image, {per * n / 1e9:.3f} GB for "
               f"{n} images; {present} entries already there, {need / 1e9:.3f} GB to add"
               + ("" if free is None else f", {free / 1e9:.1f} GB free"))
    if free is not None and need + _SPACE_RESERVE > free:
        place = "memory" if files.root is None else f"the disk of {where}"
        raise S2SWError(f"cache_features {where}: the cache needs {need / 1e9:.3f} GB more but {place} has only "
                        f"{free / 1e9:.3f} GB free; free some space or choose another folder; set cache_dtype "
                        f"fp16 to halve the size; or train without cache_features",
                        fields=["cache_features", "cache_dtype"])
    if files.root is not None:
        try:
            dir_fd = files.folder(create=True)
            try:
                atomic_write_at(dir_fd, "manifest.json", (json.dumps(description, indent=2, sort_keys=True)
                                                          + "\n").encode())
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise S2SWError(f"cannot write to cache_features {where}: {first_line(e)}; choose another folder",
                            fields=["cache_features"]) from None
    return FeatureCache(files, description, where), summary


