"""Typed, validated specifications, each declared once.

* :class:`DetectorSpec` -- which detector: what :func:`s2swclip.load_detector`, the Ray workers
  (:class:`~s2swclip.inference.spec.ScorerSpec`) and the CLI build a detector from;
* :class:`RunOptions` -- how a batch run scores and reports (threshold, calibration, heat map,
  overlays, batch, pixel limits): what every engine (:mod:`s2swclip.inference.engine`) takes;
* :class:`ServeSettings` -- the service's options (:func:`s2swclip.serve.app.create_app`).

Each is a frozen, picklable dataclass, checked when it is made: a wrong value raises
:class:`SpecError`, which names the field (``threshold``), never a command-line flag; the CLI
maps fields to its flags (``s2swclip.cli.options.FLAGS``, :meth:`S2SWError.with_flags`). Torch-free.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import S2SWError, check_number
from .model.config import PRECISIONS, PRESETS, DetectorConfig, get_preset
from .viz.heatmap import HEATMAP_SCALES

__all__ = ["DEFAULT_MAX_INFLIGHT_BYTES", "DEFAULT_MAX_INFLIGHT_PIXELS", "DEFAULT_MAX_PIXELS", "MAX_BATCH_WAIT_MS", "DetectorSpec", "RunOptions", "ServeSettings",
           "SpecError", "check_heatmap_scale", "check_threshold"]

#: Largest image accepted (width x height), checked from the header before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
#: Decoded full-resolution pixels held at once by all decoding threads together.
DEFAULT_MAX_INFLIGHT_PIXELS = 64_000_000
#: Request-body bytes the service holds at once, all requests together (s2swclip.serve.limits).
DEFAULT_MAX_INFLIGHT_BYTES = 200_000_000
#: Longest micro-batching wait (s2swclip.serve.batcher.MAX_WAIT_MS).
MAX_BATCH_WAIT_MS = 10_000.0


class SpecError(S2SWError):
    """A field of a spec has a wrong value: ``field`` names it (also in
    :attr:`~s2swclip.errors.S2SWError.fields`), ``problem`` says what is wrong (the message is
    ``"<field> <problem>"``)."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name} {problem}", fields=[field_name])
        self.field = field_name
        self.problem = problem

    def __reduce__(self):  # picklable (Ray sends worker errors back)
        return (SpecError, (self.field, self.problem))


# ------------------------------------------------------------------------------ field checks
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_or_none(name: str, value: Any) -> None:
    if value is not None and not (_is_number(value) and math.isfinite(value)):
        raise SpecError(name, f"must be a finite number, got {value!r}")


def _int_at_least(name: str, value: Any, low: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not (_is_number(value) and int(value) == value and value >= low):
        raise SpecError(name, f"must be an integer >= {low}, got {value!r}")


def _number_at_least(name: str, value: Any, low: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value >= low):
        raise SpecError(name, f"must be a finite number >= {low:g}, got {value!r}")


def _choice(name: str, value: Any, choices, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in choices:
        raise SpecError(name, f"must be one of {', '.join(choices)}, got {value!r}")


def _in_interval(name: str, value: Any, low: float, high: float, *, open_low: bool, open_high: bool) -> None:
    if value is None:
        return
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:  # no brackets: a clause of the message ends at ')' (S2SWError.with_flags)
        shown = f"{'>' if open_low else '>='} {low:g} and {'<' if open_high else '<='} {high:g}"
        raise SpecError(name, f"must be a number {shown}, got {value!r}")


def check_threshold(value: Any) -> None:
    """A decision threshold: None or a finite number (:class:`SpecError` naming ``threshold``)."""
    _finite_or_none("threshold", value)


def check_heatmap_scale(value: Any) -> None:
    """A heat-map colour scale, one of :data:`~s2swclip.viz.heatmap.HEATMAP_SCALES`."""
    _choice("heatmap_scale", value, HEATMAP_SCALES)


def _number(name: str, value: Any, *bounds: float, **options: Any) -> None:
    """:func:`~s2swclip.errors.check_number`, as a :class:`SpecError`."""
    try:
        check_number(name, value, *bounds, **options)
    except S2SWError as e:
        raise SpecError(name, str(e)[len(name) + 1:]) from None


def _path_or_none(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


# ------------------------------------------------------------------------------ the detector
@dataclass(frozen=True)
class DetectorSpec:
    """Which detector to build (see :func:`s2swclip.model.factory.load_detector` for the
    meaning of the fields; ``reference``/``shots``/``max_pixels``: the few-normal-shot mode's
    reference images, read like query images (``max_references``: refuse more images than this,
    None: the default limit); ``few_shot_weight``/``coreset``: its options,
    None for the detector's defaults; ``options``: any other
    :class:`~s2swclip.model.config.DetectorConfig` field as sorted ``(name, value)`` pairs)."""

    backbone: str = "ViT-L-14-336"
    weights: str | None = "openai"
    prompts: str | None = None
    image_size: int | None = None
    device: str = "cpu"
    precision: str = "fp32"
    preset: str | None = None
    cache_dir: str | None = None
    reference: str | None = None
    shots: int | None = None
    max_pixels: int | None = None
    max_references: int | None = None
    few_shot_weight: float | None = None
    coreset: float | None = None
    untrained_ok: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("backbone", "weights", "prompts", "cache_dir", "reference"):
            object.__setattr__(self, name, _path_or_none(getattr(self, name)))
        object.__setattr__(self, "device", str(self.device))
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        object.__setattr__(self, "options", tuple((k, tuple(v) if isinstance(v, list) else v)
                                                  for k, v in self.options))
        _int_at_least("image_size", self.image_size, optional=True)
        _choice("precision", self.precision, PRECISIONS)
        _choice("preset", self.preset, tuple(PRESETS), optional=True)
        _int_at_least("shots", self.shots, optional=True)
        _int_at_least("max_pixels", self.max_pixels, optional=True)
        _int_at_least("max_references", self.max_references, optional=True)
        _in_interval("few_shot_weight", self.few_shot_weight, 0, 1, open_low=False, open_high=False)
        _in_interval("coreset", self.coreset, 0, 1, open_low=True, open_high=False)
        known = {f.name for f in fields(DetectorConfig)}
        for name, _ in self.options:
            if name not in known:
                raise SpecError("options", f"has an unknown detector option {name!r}")

    def replace(self, **changes: Any) -> DetectorSpec:
        return replace(self, **changes)

    def input_size(self) -> int:
        """S, the model input side (the ``image_size``, else the preset's, else 518), without
        building anything."""
        if self.image_size is not None:
            return int(self.image_size)
        config = DetectorConfig()
        if self.preset is not None:
            config = config.replace(**get_preset(self.preset).test)
        return int(config.image_size)

    def detector_options(self) -> dict[str, Any]:
        """The :class:`~s2swclip.model.config.DetectorConfig` options this spec sets."""
        opts = dict(self.options)
        if self.few_shot_weight is not None:
            opts["few_shot_weight"] = self.few_shot_weight
        if self.coreset is not None:
            opts["coreset"] = self.coreset
        return opts

    def load_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`s2swclip.model.factory.load_detector` for this spec."""
        return dict(backbone=self.backbone, weights=self.weights, prompts=self.prompts,
                    image_size=self.image_size, device=self.device, precision=self.precision,
                    preset=self.preset, cache_dir=self.cache_dir, untrained_ok=self.untrained_ok,
                    **self.detector_options())

    def absolute(self) -> DetectorSpec:
        """The same spec with its local files (backbone config, weights, prompts, references,
        the cache) made absolute: workers may run in another folder."""
        cache = None if self.cache_dir is None else os.path.abspath(os.path.expanduser(self.cache_dir))
        return replace(self, backbone=_abs_if_file(self.backbone), weights=_abs_if_file(self.weights),
                       prompts=_abs_if_file(self.prompts), reference=_abs_if_file(self.reference),
                       cache_dir=cache)

    def model_files(self) -> dict[str, str]:
        """The local files the model is built from, by field (``backbone`` when it is a config
        file, ``weights``, ``prompts``; ``reference`` when it is one file): what a content
        digest is taken of."""
        out = {}
        for name in ("backbone", "weights", "prompts", "reference"):
            value = getattr(self, name)
            if value is not None and os.path.isfile(os.path.expanduser(value)):
                out[name] = os.path.expanduser(value)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-safe: the fields; the few-shot ones only when they are set."""
        d = asdict(self)
        d["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}
        for name in ("reference", "shots", "max_pixels", "max_references", "few_shot_weight", "coreset"):
            if d[name] is None:
                d.pop(name)
        if not self.options:
            d.pop("options")
        if not self.untrained_ok:
            d.pop("untrained_ok")
        return d


def _abs_if_file(value: str | None) -> str | None:
    if value is None:
        return None
    path = os.path.expanduser(value)
    return os.path.abspath(path) if os.path.exists(path) else value


# ------------------------------------------------------------------------------ a batch run
@dataclass(frozen=True)
class RunOptions:
    """How a batch run scores and reports; the same for every engine.

    Attributes:
        threshold: flag images scoring above it (None: no decision); ``calibrate_dir``
            overrides it.
        calibrate_dir: folder of known-good images: the threshold becomes their split-conformal
            quantile for false-positive rate ``fpr`` (:mod:`s2swclip.inference.calibration`).
        heatmap_scale: ``fixed`` (one colour scale for the run) or ``image`` (each map's own).
        overlays: write heat-map overlays.
        batch_size: images per scorer call.
        max_pixels: refuse larger images (width x height, from the header); None: no limit.
        max_inflight_pixels: decoded full-resolution pixels held at once.
        progress: show a progress bar.
        scale_window: maps that set a ``fixed`` scale without a threshold (local engine).
        decode_workers: the pipeline's decoding and overlay threads (local engine; None: see
            :func:`~s2swclip.inference.pipeline.default_workers`).
        model_streams: batches the model scores at once (local engine; None: the scorer's
            default, see :func:`~s2swclip.inference.pipeline.default_model_streams`).
    """

    threshold: float | None = None
    calibrate_dir: str | None = None
    fpr: float = 0.01
    heatmap_scale: str = "fixed"
    overlays: bool = True
    batch_size: int = 8
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_inflight_pixels: int = DEFAULT_MAX_INFLIGHT_PIXELS
    progress: bool = True
    scale_window: int = 32
    decode_workers: int | None = None
    model_streams: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibrate_dir", _path_or_none(self.calibrate_dir))
        check_threshold(self.threshold)
        _in_interval("fpr", self.fpr, 0, 1, open_low=True, open_high=True)
        check_heatmap_scale(self.heatmap_scale)
        _int_at_least("batch_size", self.batch_size)
        _int_at_least("max_pixels", self.max_pixels, optional=True)
        _int_at_least("max_inflight_pixels", self.max_inflight_pixels)
        _int_at_least("scale_window", self.scale_window)
        _int_at_least("decode_workers", self.decode_workers, optional=True)
        _int_at_least("model_streams", self.model_streams, optional=True)

    def replace(self, **changes: Any) -> RunOptions:
        return replace(self, **changes)


# ------------------------------------------------------------------------------ the service
@dataclass(frozen=True)
class ServeSettings:
    """The service's options (:func:`s2swclip.serve.app.create_app`).

    Attributes:
        threshold: decision threshold (``anomalous = score > threshold``); None: no decision.
        save_dir: write uploads, overlays and ``results.jsonl`` here; None: write nothing.
        save_max_bytes: most bytes ``save_dir`` may hold (its existing content included).
        max_batch, batch_wait_ms, queue_size: micro-batching.
        max_upload_bytes: largest request body; max_pixels: largest image (width x height).
        max_inflight_pixels: decoded full-resolution pixels held at once by all requests.
        max_inflight_bytes: request-body bytes held at once by all requests (more: 503, see
            :mod:`s2swclip.serve.limits`); at least ``max_upload_bytes``.
        decode_threads: files decoded at the same time, across all requests.
        upload_idle_timeout_s, upload_total_timeout_s: stalled or too slow uploads get 408.
        warmup: run one dummy batch when the app starts (the first real request is not slow).
        heatmap_scale: ``fixed``: overlays centred on the request's threshold, the whole
            [0, 1] scale without one; ``image``: each map's own range.
    """

    threshold: float | None = None
    save_dir: str | None = None
    save_max_bytes: int | None = None
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    queue_size: int = 64
    max_upload_bytes: int = 20_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_inflight_pixels: int = DEFAULT_MAX_INFLIGHT_PIXELS
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    decode_threads: int = 2
    upload_idle_timeout_s: float = 30.0
    upload_total_timeout_s: float = 300.0
    warmup: bool = False
    heatmap_scale: str = "fixed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "save_dir", _path_or_none(self.save_dir))
        check_threshold(self.threshold)
        for name in ("max_batch", "queue_size", "max_upload_bytes", "max_pixels", "max_inflight_pixels",
                     "max_inflight_bytes", "decode_threads"):
            _number(name, getattr(self, name), 1, integer=True)
        _int_at_least("save_max_bytes", self.save_max_bytes, optional=True)
        _number("batch_wait_ms", self.batch_wait_ms, 0, MAX_BATCH_WAIT_MS)
        _number("upload_idle_timeout_s", self.upload_idle_timeout_s, 0, 3600, lo_open=True)
        _number("upload_total_timeout_s", self.upload_total_timeout_s, 0, 86_400, lo_open=True)
        if int(self.max_inflight_bytes) < int(self.max_upload_bytes):
            raise S2SWError(f"max_inflight_bytes ({int(self.max_inflight_bytes)}) must be at least max_upload_bytes "
                            f"({int(self.max_upload_bytes)}): the body budget must hold one largest upload",
                            fields=["max_inflight_bytes", "max_upload_bytes"])
        check_heatmap_scale(self.heatmap_scale)

    def describe_limits(self) -> dict[str, Any]:
        """The serving limits, JSON-safe (``GET /v1/model``)."""
        out: dict[str, Any] = {name: int(getattr(self, name)) for name in (
            "max_batch", "queue_size", "max_upload_bytes", "max_pixels", "max_inflight_pixels", "max_inflight_bytes")}
        out["batch_wait_ms"] = float(self.batch_wait_ms)
        out["save_max_bytes"] = None if self.save_max_bytes is None else int(self.save_max_bytes)
        return out
