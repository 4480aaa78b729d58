"""Shared test helpers (importable as ``helpers``: pytest's pythonpath includes tests/)."""

import torch


def make_images(n, size, seed=0):
    """[n, 3, size, size] standard-normal images (already 'normalised'), reproducible."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
