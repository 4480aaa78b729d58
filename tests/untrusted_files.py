"""Hostile files for the untrusted-input tests (importable as ``untrusted_files``).

Each file here has an observable side effect when loaded the unsafe way: it creates a marker file.
Tests prove that (the fixture is armed) in a subprocess, then show that s2swclip refuses the file
and the marker does not appear.

* :func:`save_hostile_archive`: a TorchScript archive whose exported ``__setstate__`` calls the
  custom operator ``s2swtest::touch(str path) -> str`` (registered with ``torch.library``; its
  Python implementation creates ``path``). ``torch.jit.load`` runs ``__setstate__``, hence the op.
  The op is registered in the test process too, so a ``torch.jit.load`` in the package would
  create the marker there as well, not fail on an unknown op.
* :func:`save_forbidden_global_archive`: a zip laid out like a TorchScript archive whose
  ``data.pkl`` calls a forbidden global (``os.system``, ``builtins.eval``) on load.
"""

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Tuple

import torch

_LIBRARIES = []  # keep the registered library alive for the process


def register_touch_op() -> None:
    """Register ``torch.ops.s2swtest.touch(path)``, which creates ``path`` (once per process)."""
    if _LIBRARIES:
        return
    lib = torch.library.Library("s2swtest", "DEF")
    lib.define("touch(str path) -> str")

    def touch(path):
        Path(path).write_text("loading ran code from the file\n")
        return path

    lib.impl("touch", touch, "CompositeExplicitAutograd")
    _LIBRARIES.append(lib)


class Hostile(torch.nn.Module):
    """A module whose (scripted) ``__setstate__`` creates the file named by ``marker``."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.marker = marker

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        # the op's result is used, so that TorchScript keeps the call
        self.marker = torch.ops.s2swtest.touch(state[1])
        self.training = state[2]


def save_hostile_archive(path, marker) -> None:
    register_touch_op()
    with warnings.catch_warnings():  # torch.jit deprecation warnings
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Hostile(str(marker))), str(path))


def jit_load_in_subprocess(path) -> subprocess.CompletedProcess:
    """``torch.jit.load(path)`` in a fresh interpreter that registers ``s2swtest::touch``."""
    code = ("import sys, torch, untrusted_files; untrusted_files.register_touch_op(); "
            "torch.jit.load(sys.argv[1])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True,
                          text=True, timeout=300)


def forbidden_pickle(module: str, name: str, marker) -> bytes:
    """A pickle that calls ``module.name`` with an argument that creates ``marker``."""
    arg = {("os", "system"): f"touch '{marker}'",
           ("builtins", "eval"): f"open({str(marker)!r}, 'w').close()"}[(module, name)]
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(V" + arg.encode() + b"\ntR."


def save_forbidden_global_archive(path, module: str, name: str, marker) -> bytes:
    """A zip laid out like a TorchScript archive whose data.pkl calls ``module.name``."""
    pkl = forbidden_pickle(module, name, marker)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pkl)
        z.writestr("evil/constants.pkl", b"\x80\x02).")
        z.writestr("evil/version", b"4\n")
    return pkl
