"""Shared test helpers (importable as ``helpers``: pytest's pythonpath includes tests/)."""

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
