"""Inference: one pipeline (decode -> preprocess -> batch -> score -> records) and its engines.

* :mod:`.inputs` — files, folders, globs, manifests -> entries (unreadable ones reported, not
  dropped); :mod:`.uris` — the same for ``s3://``, ``gs://``, ... through pyarrow;
* :mod:`.pipeline` — :class:`InferencePipeline`, :class:`Decoder`, :class:`ScoredImage`,
  overlays (torch-free);
* :mod:`.scoring` — the one scorer base (``describe()``); :mod:`.scorers` — the PyTorch detector
  as a scorer; :mod:`.spec` — a scorer described as plain data (a
  :class:`~s2swclip.specs.DetectorSpec` or an exported folder), built where it runs (Ray workers);
* :mod:`.calibration` — conformal thresholds from known-good images (every engine's);
* :mod:`.engine` — the ``Engine`` protocol: ``engine.run(inputs, out_dir, RunOptions)``;
* :mod:`.local` — :class:`~.local.LocalEngine` (results.csv/json, overlays) and the row every
  engine writes;
* :mod:`.ray_engine` — :class:`~.ray_engine.RayEngine` on Ray Data; :mod:`.ray_cluster` — its Ray
  session; :mod:`.shards` — its resumable Parquet output.
"""
