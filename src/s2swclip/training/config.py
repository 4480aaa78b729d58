"""Training hyper-parameters (``docs/method.md`` §1.3, §8) and how a run resolves them from a preset.

The detector's own hyper-parameters and the presets live in :mod:`s2swclip.model.config`.
Errors name the fields (``batch_size``); the command line maps them to its flags
(:meth:`s2swclip.errors.S2SWError.with_flags`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Callable

from ..errors import S2SWError
from ..model.config import get_preset


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; defaults: protocol A (trained on VisA).

    Values are checked on construction: a user's mistake (``batch_size=0``, a NaN ``lr``) is an
    :class:`S2SWError` naming the field. Numbers are stored as plain Python ``int``/``float``
    (``betas`` as a tuple), so the config is JSON-serialisable.
    """

    epochs: int = 10
    batch_size: int = 8
    image_size: int = 400
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 111
    alpha: float = 1.0  # weight of the generic family's pixel loss
    beta: float = 0.03  # weight of the pairwise image term
    random_pair_prob: float = 0.2
    pairwise_hinge: bool = False  # True: the paper's max(0, 1-d)^2/2 instead of the code's (1-d)^2/2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            self._set(name, _checked_int(self, name, minimum=1))
        self._set("seed", _checked_int(self, "seed", minimum=0, maximum=2**63 - 2))
        self._set("lr", _checked_float(self, "lr", "a finite number > 0", lambda x: x > 0))
        for name in ("alpha", "beta"):
            self._set(name, _checked_float(self, name, "a finite number >= 0", lambda x: x >= 0))
        self._set("random_pair_prob", _checked_float(self, "random_pair_prob", "a number in [0, 1]",
                                                     lambda x: 0 <= x <= 1))
        betas = self.betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(_is_real(b) and 0 <= b < 1 for b in betas)):
            raise S2SWError(f"betas must be two numbers in [0, 1) (Adam's moment decay rates), got {betas!r}",
                            fields=["betas"])
        self._set("betas", (float(betas[0]), float(betas[1])))
        if not isinstance(self.pairwise_hinge, bool):
            raise S2SWError(f"pairwise_hinge must be True or False, got {self.pairwise_hinge!r}",
                            fields=["pairwise_hinge"])

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


def resolve_train_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A preset's values (``visa-to-all`` by default), then explicit non-None overrides; every
    value is checked (an :class:`S2SWError` names the field)."""
    values = dict(get_preset(preset or "visa-to-all").train)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise S2SWError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**values)


def check_count(value: Any, name: str, optional: bool = False) -> None:
    """Refuse ``value`` unless it is an integer >= 0 (or None with ``optional``), naming ``name``."""
    if optional and value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise S2SWError(f"{name} must be an integer >= 0, got {value!r}", fields=[name])


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _checked_int(cfg: TrainConfig, name: str, minimum: int, maximum: int | None = None) -> int:
    value = getattr(cfg, name)
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum
            or (maximum is not None and value > maximum)):
        what = "a positive integer" if minimum == 1 and maximum is None else (
            f"an integer in [{minimum}, {maximum}]")
        raise S2SWError(f"{name} must be {what}, got {value!r}", fields=[name])
    return int(value)


def _checked_float(cfg: TrainConfig, name: str, what: str, ok: Callable[[float], bool]) -> float:
    value = getattr(cfg, name)
    if not _is_real(value) or not ok(value):
        raise S2SWError(f"{name} must be {what}, got {value!r}", fields=[name])
    return float(value)
