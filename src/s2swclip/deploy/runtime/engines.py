"""One model file run by ONNX Runtime or OpenVINO: ``run({name: array}) -> {name: array}``.

The runtime libraries are imported when a stage is created, so that importing
:mod:`s2swclip.deploy.runtime` needs neither, and a folder of one format needs only its runtime.
Everything runs on the CPU.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import S2SWError

__all__ = ["OnnxStage", "OpenVinoStage", "make_stage"]


class OnnxStage:
    """An ONNX model in an ONNX Runtime session (CPU execution provider)."""

    engine = "onnxruntime"

    def __init__(self, model: Path, inputs: list[str], outputs: list[str], *, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise S2SWError("this exported model needs ONNX Runtime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime raises its own exception types for bad files
            raise S2SWError(f"model {model.parent}: ONNX Runtime cannot load {model.name}: "
                            f"{_first_line(e)}", fields=("model",)) from None
        _check_names(model, [i.name for i in self.session.get_inputs()], inputs,
                     [o.name for o in self.session.get_outputs()], outputs)
        self.inputs, self.outputs = inputs, outputs
        self.version = ort.__version__
        self._ort = ort
        self._running: set = set()  # the RunOptions of calls in progress (cancel() stops them)
        self._lock = threading.Lock()

    def shapes(self) -> dict[str, tuple | None]:
        """Declared shape of every input and output: ints, None for a symbolic dimension."""
        args = [*self.session.get_inputs(), *self.session.get_outputs()]
        return {a.name: tuple(d if isinstance(d, int) else None for d in a.shape) for a in args}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        options = self._ort.RunOptions()
        options.log_severity_level = 4  # a cancelled call is reported by the caller, once, not logged here too
        with self._lock:
            self._running.add(options)
        try:
            values = self.session.run(self.outputs, {k: feeds[k] for k in self.inputs}, options)
        finally:
            with self._lock:
                self._running.discard(options)
        return dict(zip(self.outputs, values))

    def cancel(self) -> None:
        """Ask the calls in progress to stop (ONNX Runtime checks between operators)."""
        with self._lock:
            for options in self._running:
                options.terminate = True


class OpenVinoStage:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for the CPU.

    ``precision`` is the inference precision asked of the CPU plugin (``bf16`` runs in bfloat16
    on CPUs that support it and in float32 elsewhere; :attr:`effective_precision` tells which).
    """

    engine = "openvino"

    def __init__(self, model: Path, weights: Path, inputs: list[str], outputs: list[str], *,
                 precision: str = "fp32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise S2SWError("this exported model needs OpenVINO: pip install openvino") from None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(model), str(weights)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long messages
            raise S2SWError(f"model {model.parent}: OpenVINO cannot load {model.name}: "
                            f"{_first_line(e)}", fields=("model",)) from None
        _check_names(model, [n for p in compiled.inputs for n in p.get_names()], inputs,
                     [n for p in compiled.outputs for n in p.get_names()], outputs)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: one call at a time
        self.inputs, self.outputs = inputs, outputs
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # what the CPU plugin really runs
        self.effective_precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint.to_string(), hint.to_string())
        self.version = ov.get_version()

    def shapes(self) -> dict[str, tuple | None]:
        """Declared shape of every input and output (None: a dynamic dimension, or a dynamic rank)."""
        out: dict[str, tuple | None] = {}
        for port in [*self.compiled.inputs, *self.compiled.outputs]:
            ps = port.get_partial_shape()
            shape = None if ps.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in ps)
            out.update({name: shape for name in port.get_names()})
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.request.infer({k: feeds[k] for k in self.inputs})
            return {name: self.request.get_tensor(name).data.copy() for name in self.outputs}

    def cancel(self) -> None:
        """Ask the call in progress to stop."""
        self.request.cancel()


def make_stage(folder: Path, fmt: str, stage, *, threads: int | None = None):
    """The runner of a :class:`~s2swclip.deploy.runtime.manifest.Stage` of a checked manifest."""
    inputs, outputs = list(stage.inputs), list(stage.outputs)
    if fmt == "onnx":
        return OnnxStage(folder / stage.model, inputs, outputs, threads=threads)
    return OpenVinoStage(folder / stage.model, folder / stage.weights, inputs, outputs,
                         precision=stage.inference_precision, threads=threads)


def _check_names(model: Path, got_in: list[str], want_in: list[str], got_out: list[str], want_out: list[str]) -> None:
    missing = [n for n in want_in if n not in got_in] + [n for n in want_out if n not in got_out]
    if missing:
        raise S2SWError(f"model {model.parent}: {model.name} has no input/output named {missing[0]!r} "
                        f"that s2swclip.json lists: the folder is inconsistent; export again", fields=("model",))


def _first_line(e: BaseException) -> str:
    """The informative line of a runtime's exception: OpenVINO's start with where in its sources
    they were raised ("Exception from src/...:117:"), the reason follows."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(e).__name__])[0][:300]
