"""The entry files of the training feature cache (:mod:`.feature_cache`): layout, encoding,
validation, and reading and writing them without following links or blocking.

A cache folder may be shared with other runs and users, so an entry is untrusted: it is opened
with ``O_NOFOLLOW | O_NONBLOCK`` in a shard folder reached without following links, only a regular
file is read (``fstat``), its size is bounded and everything in it is checked before use.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import first_line
from ..fileio import NotRegularFileError, atomic_write_at, open_folder_beneath, read_regular_file

ENTRY_FORMAT = "s2swclip-image-features"
ENTRY_VERSION = 1
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_HEADER_BYTES = 1 << 14  # an entry's safetensors header is a few hundred bytes
# write errors that concern one entry (its name or shard folder is taken by a folder, a link, a
# file), not the cache: that entry is not stored, the others still are
_ENTRY_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST})


@dataclass(frozen=True)
class Layout:
    """What each image's entry holds.

    Attributes:
        embed_dim: C. tokens: N = (S / patch)^2 + 1. layers: per feature layer, the index of its
        distinct patch tensor. dtype: ``fp32`` or ``fp16``.
    """

    embed_dim: int
    tokens: int
    layers: tuple[int, ...]
    dtype: str

    @property
    def distinct(self) -> int:
        return max(self.layers) + 1

    @property
    def tensor_bytes(self) -> int:
        itemsize = torch.empty((), dtype=_TORCH_DTYPES[self.dtype]).element_size()
        return itemsize * self.embed_dim * (1 + self.distinct * self.tokens)

    @property
    def entry_bytes(self) -> int:
        """Bytes of one entry file (the tensors plus a header of at most a few hundred bytes)."""
        return self.tensor_bytes + 512


class BadEntry(Exception):
    """A cache entry that must not be used (the message says why)."""


# ------------------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class EntryFiles:
    """Reads and writes the entry files of one run key (picklable: data-loader workers use it).

    ``root`` is ``DIR/<run key>``; ``None`` for a memory cache (nothing on disk).
    """

    root: Path | None
    key: str
    layout: Layout

    def entry_key(self, file_digest: str) -> str:
        """The entry name of an image whose file has SHA-256 ``file_digest``."""
        return hashlib.sha256(f"{self.key}:{file_digest}".encode()).hexdigest()

    def path(self, entry: str) -> Path:
        return self.root / entry[:2] / f"{entry}.safetensors"

    def encode(self, entry: str, glob: torch.Tensor, distinct: Sequence[torch.Tensor]) -> bytes:
        """The safetensors bytes of an entry (tensors already in the layout's dtype, on CPU)."""
        from safetensors.torch import save

        tensors = {"global": glob.contiguous(), **{f"patch.{k}": d.contiguous() for k, d in enumerate(distinct)}}
        meta = {"format": ENTRY_FORMAT, "version": str(ENTRY_VERSION), "entry": entry,
                "layers": json.dumps(list(self.layout.layers)), "crc32": str(_crc32(tensors))}
        return save(tensors, metadata=meta)

    def folder(self, entry: str | None = None, create: bool = False) -> int:
        """A descriptor of the run-key folder (or of ``entry``'s shard folder in it), reached
        without following links below the cache folder (:func:`open_folder_beneath`)."""
        if create:
            self.root.parent.mkdir(parents=True, exist_ok=True)
        return open_folder_beneath(self.root.parent, [self.root.name] + ([entry[:2]] if entry else []),
                                   create=create)

    def read(self, entry: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
        """The entry's ``(global [C], distinct patch tensors)`` in the layout's dtype; None when
        there is none; :class:`BadEntry` when there is one that must not be used (a link, a FIFO,
        a folder, ... is never opened for reading; nothing here blocks)."""
        limit = self.layout.tensor_bytes + _HEADER_BYTES
        try:
            dir_fd = self.folder(entry)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BadEntry(f"is in a shard folder that is a symbolic link or not a folder ({first_line(e)})") from None
        try:
            data = read_regular_file(f"{entry}.safetensors", limit, follow_links=False, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except NotRegularFileError as e:
            raise BadEntry(f"is {e.kind}, not a regular file") from None
        except OSError as e:
            raise BadEntry(f"cannot be read ({first_line(e)})") from None
        finally:
            os.close(dir_fd)
        if len(data) > limit:
            raise BadEntry(f"is larger than an entry of this cache ({limit} bytes)")
        return self.decode(entry, data)

    def write(self, entry: str, data: bytes) -> None:
        """Store an entry atomically, in a shard folder reached without following links."""
        dir_fd = self.folder(entry, create=True)
        try:
            atomic_write_at(dir_fd, f"{entry}.safetensors", data)
        finally:
            os.close(dir_fd)

    def decode(self, entry: str, data: bytes) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Validate and parse entry bytes (see the module docstring); :class:`BadEntry` if unusable."""
        from safetensors.torch import load

        lay = self.layout
        try:
            n = int.from_bytes(data[:8], "little")
            if len(data) < 8 or n > _HEADER_BYTES or 8 + n > len(data):
                raise ValueError("bad header length")
            meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
            tensors = load(data)
        except Exception:  # noqa: BLE001 - whatever the parser says, it is not a usable entry
            raise BadEntry("is not a safetensors file (truncated or corrupt)") from None
        if meta.get("format") != ENTRY_FORMAT or meta.get("version") != str(ENTRY_VERSION):
            raise BadEntry("is not an s2swclip feature entry of this version")
        if meta.get("entry") != entry:
            raise BadEntry("belongs to another image or configuration (its recorded key differs)")
        if meta.get("layers") != json.dumps(list(lay.layers)):
            raise BadEntry("has another layer layout")
        names = {"global", *(f"patch.{k}" for k in range(lay.distinct))}
        if set(tensors) != names:
            raise BadEntry(f"holds tensors {sorted(tensors)}, expected {sorted(names)}")
        want = _TORCH_DTYPES[lay.dtype]
        for name, t in tensors.items():
            shape = (lay.embed_dim,) if name == "global" else (lay.tokens, lay.embed_dim)
            if t.dtype != want or tuple(t.shape) != shape:
                raise BadEntry(f"{name} is {t.dtype} {tuple(t.shape)}, expected {want} {shape}")
        if meta.get("crc32") != str(_crc32(tensors)):
            raise BadEntry("fails its checksum (corrupted)")
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            raise BadEntry("holds NaN or infinite values")
        return tensors["global"], tuple(tensors[f"patch.{k}"] for k in range(lay.distinct))

    def count(self) -> int:
        """Entry files present (for the space estimate)."""
        if self.root is None or not self.root.is_dir():
            return 0
        total = 0
        for sub in os.scandir(self.root):
            if sub.is_dir(follow_symlinks=False) and len(sub.name) == 2:
                total += sum(1 for e in os.scandir(sub.path) if e.name.endswith(".safetensors"))
        return total


def _crc32(tensors: dict[str, torch.Tensor]) -> int:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return crc
