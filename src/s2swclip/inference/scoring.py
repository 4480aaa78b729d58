"""The one scorer base: what the PyTorch detector's scorer
(:class:`~s2swclip.inference.scorers.DetectorScorer`) and an exported model
(:class:`~s2swclip.deploy.runtime.model.ExportedModel`) share, above all their one
:meth:`ScorerBase.describe`. Torch-free (the runtime of exported models derives from it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ScorerBase"]


class ScorerBase:
    """A :class:`~s2swclip.inference.pipeline.Scorer`: ``image_size``, ``map_scale``,
    :meth:`score` and :meth:`describe`. Subclasses give what they know through the hooks:
    :meth:`_provenance` (backbone, weights, prompts, prompts_format), :meth:`_precision`,
    :meth:`_device`, :meth:`_references`, and their own fields (:meth:`_engine_fields`, first;
    :meth:`_extra_fields`, last)."""

    image_size: int
    map_scale: float | None = None

    @property
    def device(self) -> str | None:
        """Where the model runs (``cpu``, ``cuda:0``, an exported model's engine device), or None."""
        return self._device()

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``pixels`` float32 [B, 3, S, S] CLIP-normalised -> (scores [B], maps [B, S, S])."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ hooks
    def _engine_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def _provenance(self) -> dict[str, Any]:
        return {}

    def _precision(self) -> str | None:
        return None

    def _device(self) -> str | None:
        return None

    def _references(self) -> dict[str, Any] | None:
        return None

    def _extra_fields(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """What is loaded, JSON-safe: ``engine`` and the engine's fields, ``backbone``,
        ``weights``, ``prompts``, ``prompts_format``, ``image_size``, ``precision``, ``device``,
        ``untrained_prompts`` (no prompt checkpoint, and the prompts play a part: not references
        only), ``references`` (the few-normal-shot mode in use, or None)."""
        prov = self._provenance()
        refs = self._references()
        references_only = refs is not None and refs["few_shot_weight"] == 1
        return {
            **self._engine_fields(),
            "backbone": prov.get("backbone"),
            "weights": prov.get("weights"),
            "prompts": prov.get("prompts"),
            "prompts_format": prov.get("prompts_format"),
            "image_size": int(self.image_size),
            "precision": self._precision(),
            "device": self._device(),
            "untrained_prompts": prov.get("prompts") is None and not references_only,
            "references": refs,
            **self._extra_fields(),
        }
