"""Inference: one pipeline (decode -> preprocess -> batch -> score -> records) and its engines.

* :mod:`.inputs` — files, folders, globs -> entries (unreadable ones reported, not dropped);
* :mod:`.pipeline` — :class:`InferencePipeline`, :class:`ScoredImage`, overlays (torch-free);
* :mod:`.scorers` — the PyTorch detector as a scorer;
* :mod:`.calibration` — conformal thresholds from known-good images;
* :mod:`.local` — the local engine of ``s2swclip predict`` (results.csv/json, overlays).
"""
