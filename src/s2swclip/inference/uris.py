"""Inputs given as URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``, ...), through pyarrow's
filesystems.

A string ``scheme://...`` is a URI; anything else is a local path. URIs are listed and read with
:mod:`pyarrow.fs` (installed by ``pip install 's2swclip[ray]'``), which picks credentials up
from the environment the usual way for each store. URIs are taken literally: no
percent-decoding, no query options (configure the store through its environment variables).

A URI's filesystem is created once per ``scheme://authority`` and process (creating an S3
filesystem may query the bucket's region). Files are read whole, at most
:data:`MAX_REMOTE_BYTES`; Pillow then decodes from memory. Torch-free.

A URI that cannot be used is an :class:`~s2swclip.data.images.ImageError` (so an
:class:`~s2swclip.errors.S2SWError` for an input named on the command line, and a row with its
error for an entry of a manifest): ``unsupported_uri`` for a scheme pyarrow does not know (or
no pyarrow), ``unreadable`` for a store that cannot be opened or reached.
:func:`unreachable_stores` checks each store of a run's entries once, before any is read, so
that a store that cannot be reached costs one warning and one attempt, not one per entry.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import re
from functools import lru_cache
from typing import Iterable

from ..data.images import ImageError, is_image_name
from ..errors import S2SWError, first_line

__all__ = ["MAX_REMOTE_BYTES", "is_uri", "list_uri", "read_uri_bytes", "store_of", "unreachable_stores",
           "uri_filesystem"]

log = logging.getLogger(__name__)

#: entries of a store tried before it is declared unreachable (one entry alone may be denied)
STORE_PROBES = 2

#: Largest remote file read (bytes): the whole file is held in memory while it is decoded.
MAX_REMOTE_BYTES = 256 * 2**20

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: object) -> bool:
    """True for a string ``scheme://...`` (a URI), False for a local path."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def _pyarrow_fs():
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ImageError("unsupported_uri", "reading URIs (s3://, gs://, hdfs://, ...) needs pyarrow: "
                                            "pip install 's2swclip[ray]'") from None
    return pafs


def _split(uri: str) -> tuple[str, str, str]:
    """``scheme://authority/rest`` -> (scheme, authority, rest)."""
    scheme, tail = uri.split("://", 1)
    authority, _, rest = tail.partition("/")
    return scheme.lower(), authority, rest


@lru_cache(maxsize=32)
def _root(scheme: str, authority: str):
    """(filesystem, whether its paths start with the authority) for ``scheme://authority``."""
    pafs = _pyarrow_fs()
    try:
        fs, path = pafs.FileSystem.from_uri(f"{scheme}://{authority}/")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/... for unusable URIs
        reason = first_line(exc)
        if "Unrecognized filesystem type" in reason:
            raise ImageError("unsupported_uri", f"unsupported URI scheme {scheme}:// (pyarrow reads s3://, gs://, "
                                                f"hdfs://, file://, ...): {scheme}://{authority}/") from None
        raise ImageError("unreadable", f"cannot open {scheme}://{authority}/ with pyarrow: {reason}") from None
    return fs, path.rstrip("/") == authority


def store_of(uri: str) -> str:
    """The store of a URI: ``scheme://authority`` (``s3://bucket``, ``hdfs://host:port``)."""
    scheme, authority, _ = _split(uri)
    return f"{scheme}://{authority}"


def uri_filesystem(uri: str):
    """``(pyarrow filesystem, path in it)`` for a URI. Raises :class:`ImageError` (an
    S2SWError) ``unsupported_uri`` when pyarrow is missing or does not know the scheme,
    ``unreadable`` when the store cannot be opened."""
    scheme, authority, rest = _split(uri)
    fs, with_authority = _root(scheme, authority)
    return fs, (f"{authority}/{rest}" if with_authority else f"/{rest}")


def _to_uri(uri: str, fs_path: str) -> str:
    """The URI of ``fs_path`` in the filesystem of ``uri``."""
    scheme, authority, _ = _split(uri)
    _, with_authority = _root(scheme, authority)
    return f"{scheme}://{fs_path}" if with_authority else f"{scheme}://{authority}{fs_path}"


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _glob_match(pattern: list[str], parts: list[str]) -> bool:
    """Shell-style match of path segments; ``**`` matches any number of segments."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


def list_uri(uri: str) -> list[str] | None:
    """What a URI input stands for, as file URIs (sorted):

    * a glob pattern (``*``, ``?``, ``[``): the files it matches that have an image extension;
    * a folder (prefix): every file under it with an image extension, hidden entries excluded;
    * a file: ``[uri]`` itself.

    Returns None when nothing exists at ``uri`` (and it is not a pattern).
    """
    pafs = _pyarrow_fs()
    fs, path = uri_filesystem(uri)
    if any(ch in uri for ch in "*?["):
        parts = path.split("/")
        fixed = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
        base = "/".join(parts[:fixed]) or "/"
        infos = _select(fs, pafs, base, uri)
        pattern = parts[fixed:]
        found = [i.path for i in infos if is_image_name(i.path)
                 and _glob_match(pattern, posixpath.relpath(i.path, base).split("/"))]
        return sorted(_to_uri(uri, p) for p in found)
    info = _info(fs, path, uri)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.Directory:
        base = path.rstrip("/")
        infos = _select(fs, pafs, base, uri)
        return sorted(_to_uri(uri, i.path) for i in infos
                      if is_image_name(i.path) and not _hidden(posixpath.relpath(i.path, base)))
    return [uri]


def _info(fs, path: str, uri: str):
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise S2SWError(f"cannot read {uri}: {first_line(exc)}") from None


def _select(fs, pafs, base: str, uri: str):
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise S2SWError(f"cannot list {uri}: {first_line(exc)}") from None
    return [i for i in infos if i.type == pafs.FileType.File]


def _probe(uri: str) -> ImageError | None:
    """Why the store of ``uri`` cannot be used, judged from ``uri`` alone (None: it answered)."""
    try:
        fs, path = uri_filesystem(uri)
        fs.get_file_info(path)  # a missing file is an answer; a store that cannot be reached raises
    except ImageError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - pyarrow's OSError/ArrowException for a store out of reach
        reason = first_line(exc)
        return ImageError("unreadable", f"cannot reach {store_of(uri)}/: {reason}")
    return None


def unreachable_stores(paths: Iterable[str]) -> dict[str, ImageError]:
    """The stores (``scheme://authority``, see :func:`store_of`) of the URIs among ``paths``
    that cannot be used, with why. Each store is tried once, on up to :data:`STORE_PROBES` of
    its entries (it counts as unreachable when none of them gets an answer), and one warning
    is logged per store that cannot be used, naming how many entries it holds."""
    entries: dict[str, list[str]] = {}
    for p in paths:
        if is_uri(p):
            entries.setdefault(store_of(p), []).append(p)
    out: dict[str, ImageError] = {}
    for store, uris in entries.items():
        err = None
        for uri in uris[:STORE_PROBES]:
            err = _probe(uri)
            if err is None or err.code == "unsupported_uri":  # an answer, or the same for every entry
                break
        if err is not None:
            out[store] = err
            log.warning("%s; its %d input(s) are rows with error_code %s, not read", err, len(uris), err.code)
    return out


def read_uri_bytes(uri: str, max_bytes: int = MAX_REMOTE_BYTES, what: str = "image") -> bytes:
    """The content of a remote file, at most ``max_bytes``.

    Raises:
        ImageError: ``missing`` (nothing there), ``unreadable`` (a folder, too large, a read
            error), ``empty``.
        S2SWError: pyarrow missing, store cannot be opened.
    """
    pafs = _pyarrow_fs()
    fs, path = uri_filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ImageError("missing", f"{what} file not found: {uri}")
        if info.type == pafs.FileType.Directory:
            raise ImageError("unreadable", f"{what} path is a folder, not a file: {uri}")
        if info.size is not None and info.size > max_bytes:
            raise ImageError("unreadable", f"{what} file {uri} is {info.size:,} bytes, more than the limit "
                                           f"of {max_bytes:,} bytes for remote files")
        if info.size == 0:
            raise ImageError("empty", f"{what} file is empty: {uri}")
        with fs.open_input_stream(path) as f:
            data = f.read(max_bytes + 1)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow: OSError, ArrowInvalid (a malformed path), ...
        reason = first_line(exc)
        raise ImageError("unreadable", f"cannot read {what} file {uri}: {reason}") from None
    if len(data) > max_bytes:
        raise ImageError("unreadable", f"{what} file {uri} is more than the limit of {max_bytes:,} bytes "
                                       f"for remote files")
    return data
