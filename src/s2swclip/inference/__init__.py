"""Inference: one pipeline (decode -> preprocess -> batch -> score -> records) and its engines.

* :mod:`.inputs` — files, folders, globs, manifests -> entries (unreadable ones reported, not
  dropped); :mod:`.uris` — the same for ``s3://``, ``gs://``, ... through pyarrow;
* :mod:`.pipeline` — :class:`InferencePipeline`, :class:`Decoder`, :class:`ScoredImage`,
  overlays (torch-free);
* :mod:`.scorers` — the PyTorch detector as a scorer; :mod:`.spec` — a scorer described as
  plain data, built where it runs (Ray workers);
* :mod:`.calibration` — conformal thresholds from known-good images;
* :mod:`.local` — the local engine of ``s2swclip predict`` (results.csv/json, overlays) and the
  row every engine writes;
* :mod:`.ray_engine` — ``predict --engine ray`` on Ray Data; :mod:`.shards` — its resumable
  Parquet output.
"""
