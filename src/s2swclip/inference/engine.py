"""One engine interface: ``engine.run(inputs, out_dir, options)``.

An engine scores inputs (files, folders, globs, manifests; local paths or URIs, see
:mod:`.inputs`) through the one :class:`~.pipeline.InferencePipeline` and writes one row per input
(:data:`~.local.RESULT_FIELDS`, :func:`~.local.result_row`) under ``out_dir``. How it scores and
reports is a :class:`~s2swclip.specs.RunOptions`, the same for every engine; the threshold is
calibrated by :func:`~.calibration.calibrate_folder` in every engine.

* :class:`~.local.LocalEngine` -- this process: ``results.csv``, ``results.json``, overlays;
* :class:`~.ray_engine.RayEngine` -- Ray Data: resumable Parquet shards, overlays.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence

from ..specs import RunOptions

__all__ = ["Engine", "RunOptions"]


class Engine(Protocol):
    """Scores inputs and writes their rows under an output folder."""

    def run(self, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            options: RunOptions = RunOptions()) -> Any:
        """Score ``inputs``, write the rows under ``out_dir``; returns the engine's summary
        (``threshold``, ``calibration``, ``n_scored``, ``n_failed``)."""
