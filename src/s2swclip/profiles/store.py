"""Product profiles on disk: one folder per profile under a root, versions switched atomically.

Layout of ``ROOT/NAME/``::

    current.json            {"version": 3, "folder": "v000003"}: the pointer, the only file rewritten
    v000003/profile.json    the manifest (:mod:`.manifest`)
    v000003/references.safetensors   the bank (``det.save_references`` format)
    v000003/images/000.png  the good images it was built from, bytes as uploaded
    v000002/...             the previous version (kept until the next change)

A change builds the next version complete in a hidden temporary folder beside the others,
renames it into place and then replaces ``current.json`` atomically
(:func:`s2swclip.fileio.atomic_write_text`): a crash at any point leaves the old or the new
profile, never a mix (a half-built folder is never pointed at; leftovers are removed at the next
change). Changes are serialised by a lock (a thread lock and, on POSIX, ``flock`` on
``ROOT/.lock``, so a CLI run and a service on the same root do not interleave).

Every file read back is untrusted: the pointer and manifest are bounded JSON, validated; the bank
is validated by :func:`~s2swclip.model.references.load_bank` and must match the detector; the
images must have the SHA-256 the manifest records. A profile that fails is reported by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..data.images import ImageError, PixelBudget, decode_for_model
from ..errors import S2SWError, first_line
from ..fileio import atomic_write_bytes, atomic_write_text
from ..inference.calibration import Calibration
from ..model.references import ReferenceBank, save_bank
from . import exported
from .manifest import (DEFAULT_MAX_PROFILES, DEFAULT_MAX_REFERENCES,  # noqa: F401 (re-exported)
                       FORMAT_TAG, FORMAT_VERSION, MANIFEST_NAME, MAX_MANIFEST_BYTES, OverLimit, ProfileExists,
                       ProfileNotFound, check_name, now_iso, parse_manifest)
from .runtime import Profile, ProfileScorer, calibrated_manifest

__all__ = ["DEFAULT_MAX_PROFILES", "DEFAULT_MAX_REFERENCES", "GoodImage", "ProfileStore"]

log = logging.getLogger(__name__)

POINTER = "current.json"
_VERSION_FOLDER = re.compile(r"v([0-9]{6})")
_MAX_POINTER_BYTES = 4096
#: ``progress(stage, done, total)``: called while a bank is built (stage ``"bank"``) and the
#: calibration images are scored (``"calibration"``).
Progress = Callable[[str, int, int], None]


@dataclass
class GoodImage:
    """A known-good image as given: its (client) file name, shown only, and its bytes."""

    name: str
    data: bytes


@dataclass
class _Decoded:
    name: str
    data: bytes
    pixels: np.ndarray
    ext: str


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_label(name: str) -> str:
    """A client file name as a printable label (it is never used as a path)."""
    return "".join(c if c.isprintable() else "?" for c in str(name))[:255] or "image"


class ProfileStore:
    """Create, list, show, change and load the profiles under ``root`` for ``detector``.

    Args:
        root: the profiles root (created when missing).
        detector: the :class:`~s2swclip.model.detector.S2SWDetector` whose backbone builds and
            scores every bank (its few-shot layers, stream, image size and weights are recorded);
            None for the operations that read manifests only (``names``, ``show``, ``summaries``,
            ``delete``).
        max_profiles: most profiles the root may hold.
        max_references: most good images per profile.
        max_pixels: largest image accepted (width x height, from the header).
        budget: decoded pixels in flight (shared with a service's decoding), optional.
    """

    def __init__(self, root: str | os.PathLike, detector=None, *, max_profiles: int = DEFAULT_MAX_PROFILES,
                 max_references: int = DEFAULT_MAX_REFERENCES, max_pixels: int | None = 40_000_000,
                 budget: PixelBudget | None = None, batch_size: int = 8):
        for field, value in (("max_profiles", max_profiles), ("max_references", max_references)):
            if int(value) < 1:
                raise S2SWError(f"{field} must be at least 1, got {value}", fields=(field,))
        self.root = Path(os.path.expanduser(os.fspath(root)))
        if self.root.exists() and not self.root.is_dir():
            raise S2SWError(f"profiles {self.root} is a file, not a folder", fields=("profiles",))
        self.root.mkdir(parents=True, exist_ok=True)
        self.detector = detector
        self.max_profiles, self.max_references = int(max_profiles), int(max_references)
        self.max_pixels, self.budget, self.batch_size = max_pixels, budget, int(batch_size)
        self._lock = threading.RLock()
        self._prompts_digest: tuple[str | None, str | None] = (None, None)
        self._siblings: dict = {}  # prompts SHA-256 -> detector sharing the backbone
        self.exports = exported.ExportedModels()  # the exported models of profiles on one (profiles.exported)

    # ---------------------------------------------------------------------------- locking
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows: the thread lock only
                yield
                return
            with open(self.root / ".lock", "a+b") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ---------------------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Names of the profile folders that have a pointer (complete profiles), sorted."""
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                if (Path(entry.path) / POINTER).is_file():
                    out.append(entry.name)
        return out

    def _current(self, name: str) -> tuple[int, Path]:
        """(version, folder) the pointer of profile ``name`` names; S2SWError when missing/invalid."""
        check_name(name)
        pointer = self.root / name / POINTER
        try:
            with open(pointer, "rb") as f:
                data = f.read(_MAX_POINTER_BYTES + 1)
        except FileNotFoundError:
            raise ProfileNotFound(f"no profile named {name!r} under {self.root}") from None
        try:
            p = json.loads(data.decode("utf-8"))
            version, folder = p["version"], p["folder"]
            ok = (type(version) is int and isinstance(folder, str) and _VERSION_FOLDER.fullmatch(folder)
                  and int(folder[1:]) == version and len(data) <= _MAX_POINTER_BYTES)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            ok = False
        if not ok:
            raise S2SWError(f"profile {name!r}: its pointer {pointer} is invalid (not written by s2swclip)")
        return version, self.root / name / folder

    def current_version(self, name: str) -> int:
        """The version the pointer of profile ``name`` names (its manifest is not read)."""
        return self._current(name)[0]

    def show(self, name: str) -> dict:
        """The validated manifest of profile ``name`` (its current version)."""
        return self._show(name)[0]

    def _show(self, name: str) -> tuple[dict, Path]:
        """(manifest, folder) of the current version, from one reading of the pointer."""
        version, folder = self._current(name)
        m = self._read_manifest(name, folder)
        if m["version"] != version or m["name"] != name:
            raise S2SWError(f"profile {name!r}: manifest {folder / MANIFEST_NAME} says "
                            f"{m['name']!r} version {m['version']}, the pointer version {version}")
        return m, folder

    def _read_manifest(self, name: str, folder: Path) -> dict:
        path = folder / MANIFEST_NAME
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as e:
            raise S2SWError(f"profile {name!r}: cannot read {path}: {first_line(e)}") from None
        return parse_manifest(data, str(path), self.max_references)

    def load(self, name: str) -> Profile:
        """Profile ``name`` verified and ready to score: manifest valid, bank valid and made with
        this detector's backbone, weights and settings, image hashes as recorded."""
        m, folder = self._show(name)  # one pointer read: another process may switch it meanwhile
        if exported.is_exported(m):
            return exported.load(self, name, m)
        if self.detector is None:
            raise ValueError("loading a profile needs the detector")
        self.detector_for(name, m)
        for entry in m["images"]:
            path = folder / entry["file"]
            try:
                digest = _sha256(path.read_bytes())
            except OSError as e:
                raise S2SWError(f"profile {name!r}: cannot read {path}: {first_line(e)}") from None
            if digest != entry["sha256"]:
                raise S2SWError(f"profile {name!r}: {path} does not have the SHA-256 its manifest records")
        try:
            f = self.detector.read_references(folder / "references.safetensors")
        except S2SWError as e:
            raise S2SWError(f"profile {name!r}: {e}") from None
        if f.num_references != m["references"]["count"]:
            raise S2SWError(f"profile {name!r}: its bank holds {f.num_references} references, the manifest "
                            f"{m['references']['count']}")
        return Profile(name, m["version"], m, tuple(f.banks), f.layers, f.stream, f.image_size,
                       float(m["few_shot_weight"]), m.get("threshold"))

    def summaries(self) -> tuple[list[dict], dict[str, str]]:
        """What ``profile list`` shows, from the manifests alone (no detector needed): one row
        per valid profile, and ``{name: problem}`` for those whose pointer or manifest is not."""
        rows, problems = [], {}
        for name in self.names():
            try:
                m = self.show(name)
            except S2SWError as e:
                problems[name] = str(e)
                continue
            rows.append({"name": name, "version": m["version"], "references": m["references"]["count"],
                         "few_shot_weight": m["few_shot_weight"], "threshold": m.get("threshold"),
                         "calibration": m.get("calibration"), "backbone": exported.model_label(m),
                         "created": m["created"], "updated": m["updated"]})
        return rows, problems

    def load_all(self) -> tuple[dict[str, Profile], dict[str, str]]:
        """Every profile that loads, and ``{name: problem}`` for those that do not (each is
        logged as a warning and skipped; the others serve)."""
        loaded, problems = {}, {}
        for name in self.names():
            try:
                loaded[name] = self.load(name)
            except S2SWError as e:
                problems[name] = str(e)
                log.warning("skipping profile %s: %s", name, e)
        return loaded, problems

    # --------------------------------------------------------------------------- changing
    def create(self, name: str, images: Sequence[GoodImage], *, few_shot_weight: float | None = None,
               threshold: float | None = None, calibration_images: Sequence[GoodImage] = (),
               fpr: float = 0.01, progress: Progress | None = None) -> Profile:
        """A new profile from its good images (version 1); optionally calibrated from other
        good images at false-positive rate ``fpr`` (else ``threshold``, or none)."""
        check_name(name)
        weight = self._weight(few_shot_weight)
        if (self.root / name / POINTER).exists():  # checked again under the lock
            raise ProfileExists(f"profile {name!r} already exists under {self.root}: choose another name, or add "
                                f"references to it")
        decoded = self._decode(images, "good image")
        cal = self._decode(calibration_images, "calibration image") if calibration_images else []
        banks = self._encode(decoded, progress)
        with self._locked():
            if (self.root / name / POINTER).exists():
                raise ProfileExists(f"profile {name!r} already exists under {self.root}: choose another name, or add "
                                f"references to it")
            if len(self.names()) >= self.max_profiles:
                raise OverLimit(f"{self.root} holds {self.max_profiles} profiles already, as many as max_profiles "
                                f"allows; delete one first", fields=("max_profiles",))
            stamp = now_iso()
            m = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "name": name, "version": 1,
                 "created": stamp, "updated": stamp, "model": self._model_record(), "few_shot_weight": weight,
                 "threshold": None if threshold is None else float(threshold), "calibration": None}
            files = self._image_files(decoded)
            m["images"] = [e for e, _ in files]
            if cal:
                m = self._with_calibration(m, banks, cal, fpr, progress)
            return self._commit(m, banks, files)

    def add_references(self, name: str, images: Sequence[GoodImage], progress: Progress | None = None) -> Profile:
        """The next version of ``name`` with ``images`` added to its bank (a calibration made
        before stays, marked ``stale``: recalibrate)."""
        exported.refuse_add(name, self.show(name))
        decoded = self._decode(images, "good image")
        with self._locked():
            old = self.load(name)
            total = old.num_references + len(decoded)
            if total > self.max_references:
                raise OverLimit(f"profile {name!r} has {old.num_references} references; {len(decoded)} more make "
                                f"{total}, more than max_references {self.max_references}", fields=("max_references",))
            if self.detector.config.coreset is None:  # the bank of K + n images is the two banks' rows
                banks = [torch.cat([a, b]) for a, b in zip(old.banks, self._encode(decoded, progress))]
            else:  # a coreset is chosen from all tokens at once
                banks = self._encode(self._stored_images(name, old.manifest) + decoded)
            m = dict(old.manifest, version=old.version + 1, updated=now_iso())
            if m.get("calibration"):
                m["calibration"] = dict(m["calibration"], stale=True)
            files = self._image_files(decoded, start=old.num_references)
            m["images"] = list(old.manifest["images"]) + [e for e, _ in files]
            return self._commit(m, banks, self._stored_files(name, old.manifest) + files)

    def calibrate(self, name: str, images: Sequence[GoodImage], fpr: float = 0.01,
                  progress: Progress | None = None) -> tuple[Profile, Calibration]:
        """The next version of ``name`` with its threshold from the split-conformal quantile of
        ``images``' scores (good images not among its references) at false-positive rate ``fpr``."""
        if exported.is_exported(self.show(name)):
            return exported.calibrate(self, name, images, fpr, progress)
        cal = self._decode(images, "calibration image")
        with self._locked():
            old = self.load(name)
            m = dict(old.manifest, version=old.version + 1, updated=now_iso())
            m = self._with_calibration(m, list(old.banks), cal, fpr, progress)
            profile = self._commit(m, list(old.banks), self._stored_files(name, old.manifest))
        c = m["calibration"]
        return profile, Calibration(c["threshold"], c["n"], c["fpr"], c["rank"], c["bound"], c["flagged"])

    def delete(self, name: str) -> None:
        """Remove profile ``name``: its folder is renamed away at once (atomic), then deleted."""
        with self._locked():
            self._current(name)
            trash = self.root / f".deleted-{name}-{secrets.token_hex(4)}"
            os.rename(self.root / name, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # ---------------------------------------------------------------------------- helpers
    def _weight(self, w: float | None) -> float:
        if w is None:  # without trained prompts the zero-shot half would be noise: references only
            trained = self.detector.provenance.get("prompts") is not None
            return float(self.detector.config.few_shot_weight) if trained else 1.0
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise S2SWError(f"few-shot weight must be a number in [0, 1], got {w!r}")
        return float(w)

    def _prompts_sha256(self) -> str | None:
        """SHA-256 of the detector's prompt checkpoint file (None: untrained prompts), cached."""
        path = self.detector.provenance.get("prompts")
        if path is None:
            return None
        if self._prompts_digest[0] != path:
            try:
                with open(path, "rb") as f:
                    self._prompts_digest = (path, hashlib.file_digest(f, "sha256").hexdigest())
            except OSError as e:
                raise S2SWError(f"cannot read the prompt checkpoint {path}: {first_line(e)}") from None
        return self._prompts_digest[1]

    def detector_for(self, name: str, m: dict):
        """The detector that scores profile ``name`` (manifest ``m``): the store's, or, for a
        profile that uses the zero-shot branch (weight < 1) with other prompts, a detector with
        its prompts sharing the store's backbone (built once per prompt file; the file must still
        have the SHA-256 recorded)."""
        model = m["model"]
        digest = model.get("prompts_sha256")
        if m["few_shot_weight"] >= 1 or digest == self._prompts_sha256():
            return self.detector
        path = model.get("prompts")
        if path is None or digest is None:
            ours = self.detector.provenance.get("prompts")
            raise S2SWError(f"profile {name!r} was made with untrained prompts, this detector uses {ours}: "
                            f"rebuild the profile")
        siblings = self._siblings
        if digest not in siblings:
            from ..model.factory import with_prompts

            try:
                with open(path, "rb") as f:
                    actual = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as e:
                raise S2SWError(f"profile {name!r}: its prompts {path} cannot be read: {first_line(e)}") from None
            if actual != digest:
                raise S2SWError(f"profile {name!r}: its prompts {path} changed since it was made (SHA-256 differs)")
            siblings[digest] = with_prompts(self.detector, path)
        return siblings[digest]

    def scorer(self, profile: Profile) -> ProfileScorer:
        """The scorer of ``profile`` on the shared backbone (:meth:`detector_for`) or its export."""
        if exported.is_exported(profile.manifest):
            return exported.ExportedProfileScorer(self.exports.get(profile.name, profile.manifest), profile)
        return ProfileScorer(self.detector_for(profile.name, profile.manifest), profile)

    def _model_record(self) -> dict:
        det, c = self.detector, self.detector.config
        return {"backbone": str(det.provenance.get("backbone")), "weights": det.provenance.get("weights"),
                "weights_fingerprint": det.weights_fingerprint(), "prompts": det.provenance.get("prompts"),
                "prompts_sha256": self._prompts_sha256(),
                "image_size": int(c.image_size), "few_shot_layers": list(c.few_shot_layers),
                "few_shot_stream": c.few_shot_stream, "coreset": c.coreset, "precision": c.precision}

    def _decode(self, images: Sequence[GoodImage], what: str, size: int | None = None) -> list[_Decoded]:
        if not images:
            raise S2SWError(f"no {what}s given: a profile needs at least one")
        if len(images) > self.max_references:
            raise OverLimit(f"{len(images)} {what}s, more than max_references {self.max_references}",
                            fields=("max_references",))
        out = []
        for img in images:
            label = _safe_label(img.name)
            try:
                d = decode_for_model(bytes(img.data), size or self.detector.config.image_size, preview_side=1,
                                     max_pixels=self.max_pixels, budget=self.budget)
            except ImageError as e:
                raise S2SWError(f"{what} {label!r} unusable: {e}") from None
            ext = d.format if re.fullmatch(r"[a-z0-9]{2,5}", d.format or "") else "img"
            out.append(_Decoded(label, bytes(img.data), d.pixels, ext))
        return out

    def _encode(self, decoded: Sequence[_Decoded], progress: Progress | None = None) -> list[torch.Tensor]:
        """The bank of ``decoded``; ``progress("bank", done, total)`` after each batch."""
        pixels = torch.from_numpy(np.stack([d.pixels for d in decoded]))
        if self.detector.config.coreset is not None:  # chosen from all tokens at once
            return self.detector.reference_banks(pixels, batch_size=self.batch_size)
        parts = []
        for start in range(0, len(decoded), self.batch_size):
            parts.append(self.detector.reference_banks(pixels[start:start + self.batch_size],
                                                       batch_size=self.batch_size))
            if progress is not None:
                progress("bank", min(len(decoded), start + self.batch_size), len(decoded))
        return [torch.cat(layer) for layer in zip(*parts)]

    def _image_files(self, decoded: Sequence[_Decoded], start: int = 0) -> list[tuple[dict, bytes]]:
        return [({"file": f"images/{start + i:03d}.{d.ext}", "name": d.name, "sha256": _sha256(d.data)}, d.data)
                for i, d in enumerate(decoded)]

    def _stored_files(self, name: str, manifest: dict) -> list[tuple[dict, bytes]]:
        folder = self._current(name)[1]
        return [(e, (folder / e["file"]).read_bytes()) for e in manifest["images"]]

    def _stored_images(self, name: str, manifest: dict) -> list[_Decoded]:
        return self._decode([GoodImage(e["name"], data) for e, data in self._stored_files(name, manifest)],
                            "stored image")

    def _with_calibration(self, m: dict, banks: list, cal: Sequence[_Decoded], fpr: float,
                          progress: Progress | None = None) -> dict:
        c = self.detector.config
        profile = Profile(m["name"], m["version"], m, tuple(banks), tuple(c.few_shot_layers), c.few_shot_stream,
                          int(c.image_size), float(m["few_shot_weight"]), None)
        m = calibrated_manifest(m, self.scorer(profile), [d.pixels for d in cal], fpr, self.batch_size, progress)
        return dict(m, calibration=dict(m["calibration"], images_sha256=[_sha256(d.data) for d in cal]))

    def _commit(self, m: dict, banks: list, files: list[tuple[dict, bytes]]) -> Profile:
        """Write version ``m['version']`` of profile ``m['name']`` and switch to it (lock held);
        ``banks`` None: a profile on an exported model (no bank)."""
        name, version = m["name"], m["version"]
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        self._remove_leftovers(folder)  # the lock is held: any half-built or orphan version is a crash's
        self._prune(folder, keep={f"v{version - 1:06d}", f"v{version - 2:06d}"})
        tmp = folder / f".tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for entry, data in files:
                atomic_write_bytes(tmp / entry["file"], data)
            if banks is not None:
                m = self._save_bank(tmp / "references.safetensors", m, banks, len(files))
            atomic_write_text(tmp / MANIFEST_NAME, json.dumps(m, indent=2) + "\n")
            target = folder / f"v{version:06d}"
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(folder / POINTER, json.dumps({"version": version, "folder": target.name}) + "\n")
        self._prune(folder, keep={target.name, f"v{version - 1:06d}"})
        log.info("profile %s: version %d written under %s", name, version, target)
        if banks is None:
            return exported.profile_of(m)
        c = self.detector.config
        return Profile(name, version, m, tuple(banks), tuple(c.few_shot_layers), c.few_shot_stream,
                       int(c.image_size), float(m["few_shot_weight"]), m.get("threshold"))

    def _save_bank(self, path: Path, m: dict, banks: list, count: int) -> dict:
        det, c = self.detector, self.detector.config
        bank = ReferenceBank()
        bank.set([b.detach().cpu().contiguous() for b in banks], layers=c.few_shot_layers, stream=c.few_shot_stream,
                 num_references=count, image_size=c.image_size, coreset=c.coreset)
        save_bank(path, bank, backbone=str(det.provenance.get("backbone")),
                  weights_fingerprint=det.weights_fingerprint(), meta={"profile": m["name"], "version": m["version"]})
        return dict(m, references={"file": path.name, "count": count, "sha256": _sha256(path.read_bytes())})

    @staticmethod
    def _remove_leftovers(folder: Path) -> None:
        """Half-built versions of a crashed change (nobody else is building one: the lock is held)."""
        for entry in folder.iterdir():
            if entry.name.startswith(".tmp-") and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    @staticmethod
    def _prune(folder: Path, keep: set[str]) -> None:
        for entry in folder.iterdir():
            if _VERSION_FOLDER.fullmatch(entry.name) and entry.name not in keep and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
