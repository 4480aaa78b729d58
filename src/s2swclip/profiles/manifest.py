"""The manifest of a product profile (``profile.json``): what it is, how to score with it, where
it came from. Torch-free.

A manifest is read back from disk, so it is untrusted: :func:`parse_manifest` bounds its size,
parses it as JSON only and checks every field's type and range before anything uses it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from ..errors import S2SWError

# limits of a profiles folder (max_profiles / max_references); torch-free, so the
# command line's parser can show them without loading PyTorch
DEFAULT_MAX_PROFILES = 20
DEFAULT_MAX_REFERENCES = 32

__all__ = ["InvalidName", "OverLimit", "ProfileExists", "ProfileNotFound",
           "FORMAT_TAG", "FORMAT_VERSION", "MANIFEST_NAME", "MAX_MANIFEST_BYTES", "MAX_NAME_LENGTH",
           "check_name", "now_iso", "parse_manifest"]

FORMAT_TAG = "s2swclip-profile"
FORMAT_VERSION = 1
MANIFEST_NAME = "profile.json"
#: Largest manifest read (bytes); a manifest of 1000 references is ~200 kB.
MAX_MANIFEST_BYTES = 1 << 20
MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_IMAGE_FILE = re.compile(r"images/[0-9]{3,6}\.[a-z0-9]{2,5}")


class InvalidName(S2SWError):
    """A profile name that is not allowed (the service answers 400)."""


class ProfileNotFound(S2SWError):
    """No such profile (the service answers 404)."""


class ProfileExists(S2SWError):
    """A profile of that name exists already (409)."""


class OverLimit(S2SWError):
    """More profiles or references than the limits allow (413)."""


def check_name(name: Any, what: str = "profile name") -> str:
    """``name`` if it is a valid profile name, else S2SWError: 1 to 64 ASCII letters, digits,
    ``.``, ``_`` or ``-``, starting with a letter or digit (so no path separators, no ``..``, no
    hidden folders, no control characters)."""
    if not isinstance(name, str):
        raise InvalidName(f"{what} must be a string, got {type(name).__name__}")
    shown = name[:MAX_NAME_LENGTH].encode("ascii", "backslashreplace").decode("ascii")
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidName(f"invalid {what} {shown!r}: use 1 to {MAX_NAME_LENGTH} ASCII letters, digits, '.', '_' "
                        f"or '-', starting with a letter or digit")
    return name


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _bad(where: str, problem: str) -> S2SWError:
    return S2SWError(f"profile manifest {where} is invalid: {problem}")


def _field(where: str, data: dict, key: str, types: tuple, optional: bool = False) -> Any:
    if key not in data:
        if optional:
            return None
        raise _bad(where, f"'{key}' is missing")
    value = data[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise _bad(where, f"'{key}' has the wrong type ({type(value).__name__})")
    return value


def _number(where: str, data: dict, key: str, lo: float, hi: float, optional: bool = False) -> float | None:
    value = _field(where, data, key, (int, float), optional)
    if value is None:
        return None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _bad(where, f"'{key}' must be in [{lo}, {hi}], got {value!r}")
    return float(value)


def _check_calibration(where: str, cal: dict) -> None:
    for key in ("n", "rank", "version"):
        value = _field(where, cal, key, (int,))
        if value < 1:
            raise _bad(where, f"calibration '{key}' must be >= 1")
    _number(where, cal, "fpr", 0.0, 1.0)
    _number(where, cal, "bound", 0.0, 1.0)
    _number(where, cal, "threshold", -1e9, 1e9)


def _check_images(where: str, images: list, count: int) -> None:
    if len(images) != count:
        raise _bad(where, f"{len(images)} image entries for {count} references")
    seen = set()
    for entry in images:
        if not isinstance(entry, dict):
            raise _bad(where, "an image entry is not an object")
        file = _field(where, entry, "file", (str,))
        if not _IMAGE_FILE.fullmatch(file) or file in seen:
            raise _bad(where, f"image file {file[:40]!r} is not a distinct images/NNN.ext name")
        seen.add(file)
        if not _SHA256.fullmatch(_field(where, entry, "sha256", (str,))):
            raise _bad(where, f"image {file} has no valid sha256")
        name = _field(where, entry, "name", (str,))
        if len(name) > 255:
            raise _bad(where, f"image {file} has a name longer than 255 characters")


def _check_exported(where: str, model: dict, refs: dict) -> None:
    """``model`` of a profile on an exported folder: its absolute path, the SHA-256 of its
    ``s2swclip.json``, its image size; ``refs``: the export's references record (count 0: none)."""
    path = _field(where, model, "exported", (str,))
    if not path.startswith("/") or len(path) > 4096 or not path.isprintable():
        raise _bad(where, "model 'exported' must be an absolute folder path")
    if not _SHA256.fullmatch(_field(where, model, "exported_sha256", (str,))):
        raise _bad(where, "model 'exported_sha256' is not a SHA-256 hex digest")
    if _field(where, model, "image_size", (int,)) < 1:
        raise _bad(where, "model 'image_size' must be >= 1")
    count = _field(where, refs, "count", (int,))
    if not 0 <= count <= 100_000:
        raise _bad(where, f"references 'count' {count} is out of range")
    if _field(where, refs, "in_export", (bool,)) is not True:
        raise _bad(where, "references 'in_export' must be true for a profile on an exported model")


def parse_manifest(data: bytes, where: str, max_references: int) -> dict:
    """Parse and validate manifest bytes read from ``where``; returns the manifest dict.

    Raises S2SWError naming ``where`` and the field at fault."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise _bad(where, f"{len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(where, "not valid UTF-8 JSON") from None
    if not isinstance(m, dict):
        raise _bad(where, "not a JSON object")
    if m.get("format") != FORMAT_TAG:
        raise _bad(where, f"no '{FORMAT_TAG}' format tag")
    if m.get("format_version") != FORMAT_VERSION:
        raise _bad(where, f"format version {str(m.get('format_version'))[:20]!r}; this s2swclip reads "
                          f"{FORMAT_VERSION} (update s2swclip)")
    check_name(_field(where, m, "name", (str,)))
    if _field(where, m, "version", (int,)) < 1:
        raise _bad(where, "'version' must be >= 1")
    for key in ("created", "updated"):
        _field(where, m, key, (str,))
    model = _field(where, m, "model", (dict,))
    _number(where, m, "few_shot_weight", 0.0, 1.0)
    _number(where, m, "threshold", -1e9, 1e9, optional=True)
    cal = _field(where, m, "calibration", (dict,), optional=True)
    if cal is not None:
        _check_calibration(where, cal)
    if "exported" in model:  # an exported model folder (profiles.exported): its references are in the export
        _check_exported(where, model, _field(where, m, "references", (dict,)))
        if _field(where, m, "images", (list,)):
            raise _bad(where, "a profile on an exported model has no images")
        return m
    for key in ("backbone", "weights_fingerprint", "few_shot_stream"):
        _field(where, model, key, (str,))
    _field(where, model, "prompts", (str,), optional=True)
    digest = _field(where, model, "prompts_sha256", (str,), optional=True)
    if digest is not None and not _SHA256.fullmatch(digest):
        raise _bad(where, "model 'prompts_sha256' is not a SHA-256 hex digest")
    if _field(where, model, "image_size", (int,)) < 1:
        raise _bad(where, "model 'image_size' must be >= 1")
    layers = _field(where, model, "few_shot_layers", (list,))
    if not layers or not all(type(x) is int for x in layers):
        raise _bad(where, "model 'few_shot_layers' must be a list of layer numbers")
    refs = _field(where, m, "references", (dict,))
    count = _field(where, refs, "count", (int,))
    if not 1 <= count <= max_references:
        raise _bad(where, f"{count} references, the limit is 1..{max_references}")
    if _field(where, refs, "file", (str,)) != "references.safetensors":
        raise _bad(where, "references 'file' must be references.safetensors")
    if not _SHA256.fullmatch(_field(where, refs, "sha256", (str,))):
        raise _bad(where, "references 'sha256' is not a SHA-256 hex digest")
    _check_images(where, _field(where, m, "images", (list,)), count)
    return m
