"""Few-normal-shot mode: a memory bank of reference patch features and the map made from it.

A handful of known-good images of the product (the *references*) sharpen the maps, with or
without trained prompts (the idea of WinCLIP's few-shot branch and of PatchCore's memory bank):

* **Bank.** For the K reference images, the patch features (class token excluded) of the
  few-shot layers, L2-normalised, one ``[M, C]`` matrix per layer (``M = K * G * G`` tokens,
  fewer with a coreset). The features are those the backbone computes anyway during the forward
  pass (:meth:`~s2swclip.model.backbone.S2SWBackbone.encode_image` with ``extra_layers``),
  after ``ln_post`` and the projection, like the zero-shot patch features.
* **Which features.** Default: layers 6/12/18/24 of the *original* (plain) stream, each layer's
  own features. The zero-shot features are the DPAM stream, which (with the released code's
  layer aliasing) is the same last-layer tensor for all four layers: V-V attention makes
  tokens agree with similar tokens, which is what text matching needs, but it blurs the local
  detail that nearest-neighbour matching between images relies on. The plain stream keeps that
  detail at every depth: early layers match texture, late layers parts (the multi-layer choice
  of WinCLIP/PatchCore). ``few_shot_stream="dpam"`` uses per-layer DPAM features instead
  (never aliased).
* **Map.** For each query token and layer ``0.5 * (1 - max_j cos(q, bank_j))`` (half the
  smallest cosine distance, in [0, 1]; 0 for a token that appears in a reference), averaged over
  the layers. The detector resizes and smooths it exactly like the zero-shot map.
* **Search.** Exact nearest neighbour: one matrix product per (query chunk, bank chunk) with a
  running maximum, chunks sized so that no similarity block exceeds ``max_elements`` entries
  (:data:`SIMILARITY_CHUNK_ELEMENTS`, 64 MiB in float32), on the bank's device and in its dtype.
* **Coreset.** For large K, greedy k-center subsampling (PatchCore): starting from the first
  token, repeatedly keep the token farthest from everything kept so far, until a fraction of the
  layer's tokens is kept. Distances are computed on a fixed Gaussian random projection to
  :data:`CORESET_PROJECTION_DIM` dimensions (as PatchCore does, for speed); the kept tokens keep
  their full features. Every token then lies within the k-center radius of a kept one, so the map
  changes little while memory and search time shrink by the fraction.

This module is pure tensors, except :func:`save_bank` / :func:`load_bank` (safetensors only; a
loaded file is untrusted and fully validated).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import S2SWError, first_line
from .portable import portable

__all__ = [
    "FEW_SHOT_STREAMS",
    "CORESET_PROJECTION_DIM",
    "SIMILARITY_CHUNK_ELEMENTS",
    "bank_tokens",
    "greedy_coreset",
    "coreset_size",
    "nearest_similarity",
    "few_shot_token_map",
    "ReferenceBank",
    "BankFile",
    "save_bank",
    "load_bank",
]

#: Streams the few-shot features can come from (``plain``: the original stream).
FEW_SHOT_STREAMS = ("plain", "dpam")
#: Dimension of the random projection the coreset selection measures distances in.
CORESET_PROJECTION_DIM = 128
#: Largest similarity block (entries) one matrix product of the search may produce.
SIMILARITY_CHUNK_ELEMENTS = 1 << 24

FORMAT_TAG = "s2swclip-references"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------- bank tensors
def bank_tokens(features: Tensor) -> Tensor:
    """The bank rows of one layer: patch tokens (class token dropped), L2-normalised, flattened.

    Args:
        features: [K, N, C] features of the K reference images (token 0 the class token).

    Returns:
        [K * (N - 1), C] unit rows, same dtype and device.
    """
    if features.dim() != 3 or features.shape[1] < 2:
        raise ValueError(f"expected reference features [K, N, C] with N >= 2, got {tuple(features.shape)}")
    patches = features[:, 1:]
    patches = patches / patches.norm(dim=-1, keepdim=True)
    return patches.reshape(-1, patches.shape[-1])


def coreset_size(rows: int, fraction: float) -> int:
    """Rows kept by a coreset of ``fraction`` of ``rows``: ``ceil(fraction * rows)``, at least 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"coreset fraction must be in (0, 1], got {fraction!r}")
    return max(1, min(rows, math.ceil(fraction * rows)))


def greedy_coreset(points: Tensor, n: int, *, projection_dim: int | None = None, seed: int = 0) -> Tensor:
    """Greedy k-center selection (PatchCore's coreset): indices of ``n`` rows of ``points``.

    Start with row 0; then repeatedly add the row whose squared Euclidean distance to its nearest
    selected row is largest (the first such row on ties), updating every row's nearest distance
    with the newly selected one. O(n * M * D) time, O(M) extra memory.

    Args:
        points: [M, C] rows (any float dtype; distances are computed in float32 or wider).
        n: number of rows to select, 1 <= n <= M.
        projection_dim: when given and smaller than C, distances are measured on
            ``points @ R`` with ``R`` a [C, projection_dim] Gaussian matrix scaled by
            ``1 / sqrt(projection_dim)`` (seeded by ``seed``, on CPU, so the choice is
            reproducible on every device).
        seed: seed of the projection.

    Returns:
        [n] int64 indices in selection order (distinct), on ``points``' device.
    """
    if points.dim() != 2 or points.shape[0] < 1:
        raise ValueError(f"expected points [M, C] with M >= 1, got {tuple(points.shape)}")
    m, c = points.shape
    if not 1 <= n <= m:
        raise ValueError(f"cannot select {n} of {m} rows")
    x = points if points.dtype in (torch.float32, torch.float64) else points.float()
    if projection_dim is not None and projection_dim < c:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(c, projection_dim, generator=gen, dtype=torch.float32) / math.sqrt(projection_dim)
        x = x @ proj.to(x.device, x.dtype)
    sq = (x * x).sum(dim=1)  # [M]
    chosen = torch.empty(n, dtype=torch.long, device=x.device)
    chosen[0] = 0
    nearest = (sq + sq[0] - 2 * (x @ x[0])).clamp_(min=0)
    for i in range(1, n):
        j = int(torch.argmax(nearest))
        chosen[i] = j
        nearest = torch.minimum(nearest, (sq + sq[j] - 2 * (x @ x[j])).clamp_(min=0))
    return chosen


def nearest_similarity(queries: Tensor, bank: Tensor, *, max_elements: int = SIMILARITY_CHUNK_ELEMENTS) -> Tensor:
    """Largest dot product of every query row with the bank (cosine similarity for unit rows).

    Exact: one matrix product per (query chunk, bank chunk), a running maximum over bank chunks;
    chunks are sized so that no product exceeds ``max_elements`` entries. Computed in the bank's
    dtype on the bank's device (queries are cast to it).

    Args:
        queries: [Q, C].
        bank: [M, C], M >= 1.
        max_elements: bound of one similarity block (entries).

    Returns:
        [Q] float32.
    """
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1] or bank.shape[0] < 1:
        raise ValueError(f"expected queries [Q, C] and a bank [M, C] with M >= 1, got "
                         f"{tuple(queries.shape)} and {tuple(bank.shape)}")
    q = queries.to(bank.device, bank.dtype)
    m = bank.shape[0]
    bank_chunk = max(1, min(m, max_elements))

    def search(qc: Tensor) -> Tensor:
        best = None
        for b0 in range(0, m, bank_chunk):
            sim = (qc @ bank[b0:b0 + bank_chunk].t()).amax(dim=1)
            best = sim if best is None else torch.maximum(best, sim)
        return best.float()

    if portable():  # export: the query rows (batch x tokens) are dynamic, so no loop over them
        return search(q)
    query_chunk = max(1, max_elements // bank_chunk)
    out = torch.empty(q.shape[0], dtype=torch.float32, device=bank.device)
    for start in range(0, q.shape[0], query_chunk):
        qc = q[start:start + query_chunk]
        out[start:start + qc.shape[0]] = search(qc)
    return out


def few_shot_token_map(features: Sequence[Tensor], banks: Sequence[Tensor], *,
                       max_elements: int = SIMILARITY_CHUNK_ELEMENTS) -> Tensor:
    """Few-shot anomaly value of every patch token: mean over layers of ``0.5 * (1 - max cos)``.

    Args:
        features: one [B, N, C] tensor per layer (token 0, the class token, is ignored).
        banks: one [M_l, C] bank of unit rows per layer, same order.
        max_elements: similarity block bound (see :func:`nearest_similarity`).

    Returns:
        [B, N - 1] float32 in [0, 1] (clamped against rounding), on the banks' device.
    """
    if len(features) != len(banks) or not banks:
        raise ValueError(f"{len(features)} feature layers for {len(banks)} banks")
    total = None
    for f, bank in zip(features, banks):
        patches = f[:, 1:]
        b, n, c = patches.shape
        unit = patches / patches.norm(dim=-1, keepdim=True)
        sim = nearest_similarity(unit.reshape(b * n, c), bank, max_elements=max_elements)
        value = (0.5 * (1 - sim)).clamp_(0, 1).reshape(b, n)
        total = value if total is None else total + value
    return total / len(banks)


# --------------------------------------------------------------------------------- the module
class ReferenceBank(nn.Module):
    """The per-layer banks as non-persistent buffers (they follow ``.to()``/``.half()`` of the
    detector, never enter its ``state_dict``), with what they were built from.

    Attributes:
        layers: 1-based backbone layers of the banks (empty when no references are set).
        stream: ``"plain"`` or ``"dpam"``.
        num_references: K (0: no references).
        image_size: side S of the reference images (None when empty).
        coreset: coreset fraction used, or None.
    """

    def __init__(self):
        super().__init__()
        self.layers: tuple[int, ...] = ()
        self.stream = "plain"
        self.num_references = 0
        self.image_size: int | None = None
        self.coreset: float | None = None

    def set(self, banks: Sequence[Tensor], *, layers: Sequence[int], stream: str, num_references: int,
            image_size: int, coreset: float | None) -> None:
        """Replace the banks (one [M_l, C] tensor of unit rows per layer)."""
        if len(banks) != len(layers) or not banks:
            raise ValueError(f"{len(banks)} banks for layers {tuple(layers)}")
        self.clear()
        for layer, bank in zip(layers, banks):
            self.register_buffer(f"layer_{int(layer)}", bank, persistent=False)
        self.layers = tuple(int(x) for x in layers)
        self.stream, self.num_references = stream, int(num_references)
        self.image_size, self.coreset = int(image_size), coreset

    def clear(self) -> None:
        """Drop the banks (frees their memory)."""
        for layer in self.layers:
            delattr(self, f"layer_{layer}")
        self.layers, self.num_references, self.image_size, self.coreset = (), 0, None, None

    @property
    def banks(self) -> list[Tensor]:
        """The [M_l, C] banks in layer order."""
        return [getattr(self, f"layer_{layer}") for layer in self.layers]

    @property
    def nbytes(self) -> int:
        """Memory held by the banks, in bytes."""
        return sum(b.numel() * b.element_size() for b in self.banks)

    def token_map(self, features: Sequence[Tensor]) -> Tensor:
        """[B, N - 1] few-shot token values for the [B, N, C] features of :attr:`layers`."""
        return few_shot_token_map(features, self.banks)

    def extra_repr(self) -> str:
        if not self.num_references:
            return "no references"
        return (f"references={self.num_references}, layers={self.layers}, stream={self.stream!r}, "
                f"rows={[b.shape[0] for b in self.banks]}, coreset={self.coreset}")


# ------------------------------------------------------------------------------------- files
@dataclass
class BankFile:
    """What a references file holds (validated by :func:`load_bank`)."""

    banks: list[Tensor]  # [M_l, C] per layer, CPU, dtype as stored
    layers: tuple[int, ...]
    stream: str
    num_references: int
    image_size: int
    coreset: float | None
    backbone: str
    weights_fingerprint: str
    meta: dict[str, Any]


def save_bank(path: str | os.PathLike, bank: ReferenceBank, *, backbone: str, weights_fingerprint: str,
              meta: dict[str, Any] | None = None) -> None:
    """Write ``bank`` as a safetensors file (tensors ``layer_<l>``, JSON-valued metadata),
    atomically."""
    from safetensors.torch import save

    from ..fileio import atomic_write_bytes

    if not bank.num_references:
        raise ValueError("no references to save")
    tensors = {f"layer_{layer}": b.detach().cpu().contiguous() for layer, b in zip(bank.layers, bank.banks)}
    metadata = {
        "format": FORMAT_TAG, "format_version": str(FORMAT_VERSION),
        "backbone": json.dumps(backbone), "weights_fingerprint": json.dumps(weights_fingerprint),
        "image_size": json.dumps(bank.image_size), "layers": json.dumps(list(bank.layers)),
        "stream": json.dumps(bank.stream), "num_references": json.dumps(bank.num_references),
        "coreset": json.dumps(bank.coreset), "meta": json.dumps(meta or {}),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_NORM_TOLERANCE = 2e-2  # bf16 rows are unit to ~3 significant digits


def _invalid(path: Path, problem: str) -> S2SWError:
    return S2SWError(f"references file {path} is invalid: {problem}")


def _meta_value(path: Path, metadata: dict[str, str], key: str) -> Any:
    if key not in metadata:
        raise _invalid(path, f"its metadata lacks '{key}' (write it with det.save_references)")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise _invalid(path, f"its '{key}' metadata is not valid JSON") from None


def _int_value(path: Path, key: str, value: Any, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise _invalid(path, f"'{key}' must be an integer >= {minimum}, got {str(value)[:40]!r}")
    return value


def load_bank(path: str | os.PathLike, *, embed_dim: int, patch_size: int, num_layers: int) -> BankFile:
    """Read and validate a references file written by :func:`save_bank`.

    The file is untrusted: only tensors are read (safetensors), the metadata must have the
    expected keys and types, the tensors the recorded layers, 2 dimensions, ``embed_dim``
    columns, a floating dtype, at most ``num_references * (image_size // patch_size)^2`` rows
    (checked from the header, before any tensor is read), finite unit rows. Every problem is an
    :class:`S2SWError` naming the file.

    Args:
        path: the file.
        embed_dim: feature width C of the backbone the bank is for.
        patch_size: its patch size (bounds the row count).
        num_layers: its number of vision layers (bounds the layer numbers).
    """
    from safetensors import safe_open

    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise S2SWError(f"references file not found: {path} (write one with det.save_references, or pass "
                        f"a folder of images)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            head = _bank_metadata(path, f.metadata() or {}, patch_size, num_layers)
            expected = [f"layer_{x}" for x in head["layers"]]
            if sorted(f.keys()) != sorted(expected):
                raise _invalid(path, f"it holds tensors {sorted(f.keys())[:6]}, expected {expected}")
            _check_bank_shapes(path, f, expected, head, patch_size, embed_dim)
            banks = [f.get_tensor(name) for name in expected]
    except S2SWError:
        raise
    except Exception as e:  # safetensors reports a bad file in several types
        raise S2SWError(f"cannot read references file {path}: not a valid safetensors file "
                        f"({first_line(e)})") from None
    for name, bank in zip(expected, banks):
        if not bool(torch.isfinite(bank).all()):
            raise _invalid(path, f"{name} holds NaN or infinite values")
        norms = bank.float().norm(dim=1)
        if float((norms - 1).abs().max()) > _NORM_TOLERANCE:
            raise _invalid(path, f"{name} rows are not unit vectors (norms {float(norms.min()):.3g}.."
                                 f"{float(norms.max()):.3g})")
    coreset = head["coreset"]
    return BankFile(banks, tuple(head["layers"]), head["stream"], head["k"], head["image_size"],
                    None if coreset is None else float(coreset), head["backbone"], head["fingerprint"],
                    head["meta"])


def _bank_metadata(path: Path, metadata: dict[str, str], patch_size: int, num_layers: int) -> dict[str, Any]:
    """The validated header of the references file ``path`` (its safetensors metadata): format
    tag and version, backbone, weights fingerprint, image size, image count, layers, stream,
    coreset, meta. Every problem is an :class:`S2SWError` naming the file and the key."""
    if metadata.get("format") != FORMAT_TAG:
        raise S2SWError(f"{path} is not a references file: a safetensors file without the "
                        f"'{FORMAT_TAG}' format tag (write one with det.save_references)")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise _invalid(path, f"format version {str(version)[:20]!r}; this s2swclip reads version "
                             f"{FORMAT_VERSION} (update s2swclip)")
    backbone = _meta_value(path, metadata, "backbone")
    fingerprint = _meta_value(path, metadata, "weights_fingerprint")
    if not isinstance(backbone, str) or not isinstance(fingerprint, str):
        raise _invalid(path, "'backbone' and 'weights_fingerprint' must be strings")
    image_size = _int_value(path, "image_size", _meta_value(path, metadata, "image_size"), patch_size)
    k = _int_value(path, "num_references", _meta_value(path, metadata, "num_references"), 1)
    layers = _meta_value(path, metadata, "layers")
    if (not isinstance(layers, list) or not layers or len(set(map(str, layers))) != len(layers)
            or not all(type(x) is int and 1 <= x <= num_layers for x in layers)):
        raise _invalid(path, f"'layers' must be distinct layer numbers in 1..{num_layers}, "
                             f"got {str(layers)[:60]}")
    stream = _meta_value(path, metadata, "stream")
    if stream not in FEW_SHOT_STREAMS:
        raise _invalid(path, f"'stream' must be one of {', '.join(FEW_SHOT_STREAMS)}, got {str(stream)[:20]!r}")
    coreset = _meta_value(path, metadata, "coreset")
    if coreset is not None and (type(coreset) not in (int, float) or not 0 < coreset <= 1):
        raise _invalid(path, f"'coreset' must be null or a fraction in (0, 1], got {str(coreset)[:20]!r}")
    meta = _meta_value(path, metadata, "meta")
    if not isinstance(meta, dict):
        raise _invalid(path, "'meta' must be a JSON object")
    return dict(backbone=backbone, fingerprint=fingerprint, image_size=image_size, k=k, layers=layers,
                stream=stream, coreset=coreset, meta=meta)


def _check_bank_shapes(path: Path, f, names: Sequence[str], head: dict[str, Any], patch_size: int,
                       embed_dim: int) -> None:
    """The declared image count must be what the tensors hold: K * G^2 patch rows (a coreset
    keeps ceil(fraction * K * G^2)) of ``embed_dim`` floats, checked from the header of the open
    safetensors file ``f`` before any tensor data is read."""
    k, image_size, coreset = head["k"], head["image_size"], head["coreset"]
    tokens = k * (image_size // patch_size) ** 2
    rows = tokens if coreset is None else coreset_size(tokens, float(coreset))
    for name in names:
        sl = f.get_slice(name)
        shape, dtype = sl.get_shape(), sl.get_dtype()
        if dtype not in _FLOAT_DTYPES:
            raise _invalid(path, f"{name} has dtype {dtype}, expected one of {', '.join(_FLOAT_DTYPES)}")
        if len(shape) != 2 or shape[1] != embed_dim or shape[0] != rows:
            raise _invalid(path, f"{name} has shape {list(shape)}, expected [{rows}, {embed_dim}]: "
                                 f"{k} references at {image_size} px"
                                 + ("" if coreset is None else f", coreset {coreset:g}")
                                 + " (the declared num_references does not match the tensors)")
