"""Datasets: the ``meta.json`` reader, builders for the public datasets, synthetic data.

Names are imported lazily so that ``from s2swclip.data import build_meta`` does not import
torch; :class:`AnomalyDataset` and the preprocessing helpers load it on first use.
"""

_EXPORTS = {
    "AnomalyDataset": "dataset",
    "OPENAI_MEAN": "dataset",
    "OPENAI_STD": "dataset",
    "load_image": "dataset",
    "load_mask": "dataset",
    "preprocess_image": "dataset",
    "preprocess_mask": "dataset",
    "read_meta": "dataset",
    "to_rgb": "dataset",
    "BUILDERS": "builders",
    "build_meta": "builders",
    "write_meta": "builders",
    "summarize_meta": "builders",
    "build_mvtec_style": "builders",
    "generate_dataset": "synthetic",
    "render_sample": "synthetic",
    "SYNTHETIC_CLASSES": "synthetic",
    "DEFECT_TYPES": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 's2swclip.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
