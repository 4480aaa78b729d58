"""What to score: files, folders, glob patterns and manifests expanded into one list of entries.

Rules (the same for every engine):

* a folder contributes every entry, recursively, hidden entries (``.x``) excluded: each is a row,
  scored or skipped with its reason. Entries whose name has a readable image extension
  (:data:`s2swclip.data.images.IMAGE_EXTENSIONS`) are the images; any other file is handed to
  the decoder too (which names the format it found, or reports ``not_an_image``), a FIFO, socket
  or device is reported ``not_a_regular_file`` and never opened. A folder with no image name at
  all is still "no images found" (``images_only=True`` lists image names only: references,
  calibration sets);
* an entry that cannot be used — a broken symbolic link, a file or sub-folder that cannot be
  read — is NOT dropped: it is listed with the reason, and becomes a "skipped" row;
* symbolic links are kept as the user sees them: two links to the same image are two rows,
  each under its own name (paths are made absolute, never resolved);
* a file named explicitly is taken whatever its extension (the decoder decides), except a
  **manifest**: a file ending in ``.txt`` (one path per line; blank lines and lines starting with
  ``#`` are ignored), ``.csv`` (a header row with a ``path`` column) or ``.parquet`` (a string
  column ``path``) contributes the paths it lists, as they are: not checked while listing (a
  missing or unreadable one becomes a row with its error), relative ones taken relative to the
  manifest's own folder;
* a URI (``s3://bucket/prefix/``, ``gs://...``, ``hdfs://...``, ``file://...``) is a file,
  folder, glob pattern or manifest in a store that pyarrow opens (see :mod:`.uris`), with the
  same rules; manifests may list URIs and local paths alike;
* the same path given twice is listed once. Entries are sorted by path.

Torch-free (pyarrow is needed for Parquet manifests and URIs only).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data.images import IMAGE_EXTENSIONS, ImageError, is_image_name
from ..errors import S2SWError, first_line
from .uris import is_uri, list_uri, read_uri_bytes, uri_filesystem

__all__ = ["MANIFEST_EXTENSIONS", "InputEntry", "collect_inputs", "display_names", "is_manifest_name",
           "read_manifest"]

#: File name endings that make an explicitly named file a manifest (a list of paths).
MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")
# manifests read from remote stores are read whole; larger ones: split them
_MAX_REMOTE_MANIFEST_BYTES = 2**30


@dataclass(frozen=True)
class InputEntry:
    """One thing to score: an absolute path (or a URI), and why it cannot be read when that is
    known before decoding (``problem`` is ``None`` otherwise)."""

    path: str
    problem: str | None = None


def _walk(folder: str, out: list[InputEntry], others: list[InputEntry] | None = None) -> None:
    """Depth-first listing of a folder; unreadable sub-folders become entries with a problem;
    entries without an image name go to ``others`` (dropped when it is None)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        out.append(InputEntry(folder, f"cannot list folder {folder}: {first_line(exc)}"))
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        path = os.path.join(folder, e.name)
        try:
            is_dir = e.is_dir()  # follows links: a link to a folder is walked
        except OSError:
            is_dir = False
        if is_dir:
            if e.is_symlink() and _loops(path):
                out.append(InputEntry(path, f"symbolic link loop: {path}"))
                continue
            _walk(path, out, others)
        elif is_image_name(e.name):
            out.append(InputEntry(path, _problem(path)))
        elif others is not None:
            others.append(InputEntry(path, _problem(path)))


def _loops(path: str) -> bool:
    """A link to a folder that contains it (walking it would never end)."""
    target = os.path.realpath(path)
    parent = os.path.realpath(os.path.dirname(path))
    return parent == target or parent.startswith(target + os.sep)


def _problem(path: str) -> str | None:
    """Why an image entry cannot be read, when it can be told without decoding."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link: {path} -> {os.readlink(path)}"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


# ------------------------------------------------------------------------------------ manifests
def is_manifest_name(path: str | os.PathLike) -> bool:
    """True when a file named explicitly is a manifest (see :data:`MANIFEST_EXTENSIONS`)."""
    return os.fspath(path).lower().endswith(MANIFEST_EXTENSIONS)


def _resolve(entry: str, manifest: str) -> str:
    """A manifest's entry as an absolute path or a URI (relative: to the manifest's folder)."""
    if is_uri(entry):
        return entry
    if is_uri(manifest):
        if entry.startswith("/"):
            raise S2SWError(f"manifest {manifest} lists the absolute local path {entry}: a remote "
                            f"manifest lists URIs or paths relative to itself")
        head, _, tail = manifest.rpartition("/")
        return f"{head}/{posixpath.normpath(entry)}"
    entry = os.path.expanduser(entry)
    return os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(manifest)), entry))


def _open_text(manifest: str):
    """The manifest as a text stream (UTF-8, BOM skipped); local files are streamed."""
    if is_uri(manifest):
        try:
            data = read_uri_bytes(manifest, _MAX_REMOTE_MANIFEST_BYTES, what="manifest")
        except ImageError as e:
            raise S2SWError(str(e)) from None
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    try:
        return open(manifest, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise S2SWError(f"cannot read manifest {manifest}: {first_line(exc)}") from None


def _manifest_paths(manifest: str) -> list[str]:
    kind = os.path.splitext(manifest.lower())[1]
    if kind == ".parquet":
        return _parquet_paths(manifest)
    with _open_text(manifest) as text:
        try:
            if kind == ".txt":
                lines = (line.strip() for line in text)
                return [line for line in lines if line and not line.startswith("#")]
            reader = csv.DictReader(text)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise S2SWError(f"manifest {manifest} has no 'path' column (its header: "
                                f"{', '.join(reader.fieldnames or []) or 'empty'}); add a header row "
                                f"with 'path'")
            return [row["path"].strip() for row in reader if (row["path"] or "").strip()]
        except UnicodeDecodeError as exc:
            raise S2SWError(f"manifest {manifest} is not UTF-8 text ({exc.reason}); write one path "
                            f"per line in UTF-8") from None
        except csv.Error as exc:
            raise S2SWError(f"manifest {manifest} is not valid CSV ({first_line(exc)})") from None
        except OSError as exc:
            raise S2SWError(f"cannot read manifest {manifest}: {first_line(exc)}") from None


def _parquet_paths(manifest: str) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise S2SWError(f"reading the Parquet manifest {manifest} needs pyarrow: "
                        f"pip install 's2swclip[ray]'") from None
    try:
        if is_uri(manifest):
            fs, path = uri_filesystem(manifest)
            pf = pq.ParquetFile(fs.open_input_file(path))
        else:
            pf = pq.ParquetFile(manifest)
        if "path" not in pf.schema_arrow.names:
            raise S2SWError(f"manifest {manifest} has no 'path' column (its columns: "
                            f"{', '.join(pf.schema_arrow.names)})")
        column = pf.read(columns=["path"]).column("path")
    except (OSError, pa.ArrowException) as exc:
        raise S2SWError(f"cannot read the Parquet manifest {manifest}: {first_line(exc)}") from None
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise S2SWError(f"manifest {manifest}: column 'path' holds {column.type}, not text")
    return [p.strip() for p in column.to_pylist() if p is not None and p.strip()]


def read_manifest(manifest: str | os.PathLike) -> list[InputEntry]:
    """The entries a manifest lists (see the module docstring), in its order, unchecked.

    Raises :class:`S2SWError` for an unreadable manifest, a CSV/Parquet one without a ``path``
    column, and one that lists nothing.
    """
    manifest = os.fspath(manifest)
    paths = [_resolve(p, manifest) for p in _manifest_paths(manifest)]
    if not paths:
        raise S2SWError(f"manifest {manifest} lists no paths (text: one path per line; CSV or "
                        f"Parquet: a 'path' column)")
    return [InputEntry(p) for p in paths]


# ---------------------------------------------------------------------------------- collection
def _collect_uri(uri: str) -> list[InputEntry]:
    listed = list_uri(uri)
    if listed is None:
        raise S2SWError(f"input not found: {uri}")
    if listed == [uri] and is_manifest_name(uri) and not any(ch in uri for ch in "*?["):
        return read_manifest(uri)
    return [InputEntry(u) for u in listed]


def collect_inputs(inputs: Sequence[str | os.PathLike], *, images_only: bool = False) -> list[InputEntry]:
    """Expand files, folders, glob patterns and manifests (local or URIs) into a sorted list of
    :class:`InputEntry`.

    ``images_only``: a local folder contributes only the entries with an image name (the
    default: every entry, see the module docstring).

    Raises :class:`S2SWError` for an input that does not exist, and when nothing at all is
    found (problem entries count as found: they are reported, not ignored; entries of a folder
    without an image name do not).
    """
    found: list[InputEntry] = []
    others: list[InputEntry] | None = None if images_only else []
    for raw in inputs:
        if is_uri(raw):
            found.extend(_collect_uri(raw))
            continue
        text = os.path.expanduser(str(raw))
        if any(ch in text for ch in "*?["):
            for m in sorted(glob.glob(text, recursive=True)):
                m = os.path.abspath(m)
                if os.path.isdir(m):
                    continue
                if is_image_name(m):
                    found.append(InputEntry(m, _problem(m)))
        elif os.path.isdir(text):
            _walk(os.path.abspath(text), found, others)
        elif os.path.isfile(text) and is_manifest_name(text):
            found.extend(read_manifest(text))
        elif os.path.lexists(text):
            p = os.path.abspath(text)
            found.append(InputEntry(p, _problem(p)))
        else:
            raise S2SWError(f"input not found: {text} (pass image files, folders, glob patterns or "
                            f"manifests: .txt, .csv, .parquet)")
    unique = {e.path: e for e in found}
    if not unique:
        besides = f"; {len(others)} other file(s) there, e.g. {others[0].path}" if others else ""
        raise S2SWError(f"no images found in {', '.join(map(str, inputs))} "
                        f"(looked for {len(IMAGE_EXTENSIONS)} image formats: .png, .jpg, .bmp, .tif, "
                        f".webp, .gif, ...{besides})")
    unique.update({e.path: e for e in others or [] if e.path not in unique})
    return [unique[p] for p in sorted(unique)]


def _name_key(path: str) -> str:
    """A URI as a POSIX path (``s3://b/k`` -> ``/s3/b/k``) for naming."""
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return posixpath.normpath(f"/{scheme}/{rest}")
    return path


def display_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Paths relative to their common folder (``crack/000.png``), to tell same-named files
    apart; a single file keeps its base name. URIs are named like paths (``prefix/000.png``)."""
    if not paths:
        return []
    texts = [os.fspath(p) for p in paths]
    if any(is_uri(t) for t in texts):
        keys = [_name_key(t) for t in texts]
        parents = [posixpath.dirname(k) for k in keys]
        base = posixpath.commonpath(parents) if len(set(parents)) > 1 else parents[0]
        return [posixpath.relpath(k, base) for k in keys]
    parents = [os.path.dirname(t) for t in texts]
    base = os.path.commonpath(parents) if len(set(parents)) > 1 else parents[0]
    return [str(Path(os.path.relpath(t, base))) for t in texts]
