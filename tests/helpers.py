"""Shared test helpers (importable as ``helpers``: pytest's pythonpath includes tests/)."""

import math

import numpy as np
import torch


def make_images(n, size, seed=0):
    """[n, 3, size, size] standard-normal images (already 'normalised'), reproducible."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def write_png(path, seed=0, size=(96, 80)):
    """A random RGB PNG of ``size`` (width, height) at ``path``, reproducible."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def run_cli(capsys, *argv):
    """Run ``s2swclip`` in this process: (exit code, stdout, stderr)."""
    from s2swclip.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    """A user error: exit status 2, exactly one ``error:`` line holding every needle, no traceback."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def user_error(capsys, argv, *needles):
    """Run ``s2swclip argv`` and check that it is a user error (see :func:`assert_user_error`)."""
    code, _, err = run_cli(capsys, *argv)
    assert_user_error(code, err, *needles)


def rounding_tolerance(dtype, n=1, scale=1.0, factor=4.0):
    """Absolute tolerance for comparing two *different* computations of the same quantity.

    Two forms of one computation (a convolution and an explicit sum, two kernels, two runtimes)
    round differently: each of the ``n`` terms of a sum carries a relative rounding error of at
    most ``eps(dtype)``, and errors that are independent grow like ``sqrt(n)`` (a random walk),
    not ``n``. So the two results may differ by about ``eps(dtype) * sqrt(n) * scale`` where
    ``scale`` bounds the magnitude of the terms (e.g. ``max |x| * sum |w|``); ``factor`` (4 by
    default) is the margin for the few rounding steps besides the sum (products, a final
    division) and for summation orders that differ by vectorisation width (SSE/AVX2/AVX-512,
    AMX). Any real defect (a wrong tap, index or weight) is many orders of magnitude larger.

    Bit-identity (``torch.equal``) stays right where the *same* kernels run on the *same* data:
    a resumed run, a cache, the determinism of one code path, copies and index operations.
    """
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else float(np.finfo(dtype).eps)
    return float(factor * eps * math.sqrt(max(int(n), 1)) * float(scale))


def assert_close_rounding(got, want, n=1, scale=None, factor=4.0):
    """``got`` equals ``want`` (two computations of one quantity) to :func:`rounding_tolerance`
    of their dtype; ``scale`` defaults to ``max |want|`` (at least 1e-30)."""
    got_t = torch.as_tensor(got)
    want_t = torch.as_tensor(want)
    assert got_t.dtype == want_t.dtype, (got_t.dtype, want_t.dtype)
    assert got_t.shape == want_t.shape, (got_t.shape, want_t.shape)
    if scale is None:
        scale = max(float(want_t.abs().max()) if want_t.numel() else 0.0, 1e-30)
    tol = rounding_tolerance(got_t.dtype, n, scale, factor)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=tol)
    return tol
