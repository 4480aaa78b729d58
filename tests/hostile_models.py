"""Hostile exported folders: a copy of a real export whose model file is replaced by a small ONNX
graph (built with the ``onnx`` helpers) and whose manifest is resealed, so that only the property
under test is wrong."""

import json
import shutil
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save_model

from s2swclip.deploy.runtime.manifest import MANIFEST_NAME, file_record, seal_manifest

F = TensorProto.FLOAT


def _model(nodes, outputs, inits=(), size=280):
    graph = helper.make_graph(list(nodes), "hostile",
                              [helper.make_tensor_value_info("images", F, ["N", 3, size, size])],
                              list(outputs), initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _out(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _axes(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _maps(size):
    """anomaly_maps [N, S, S]: the channel mean (finite)."""
    return helper.make_node("ReduceMean", ["images", "ax1"], ["anomaly_maps"], keepdims=0)


def nan_for_dark_images(size=280):
    """Scores log(mean pixel): NaN for an image darker than the CLIP mean, finite otherwise."""
    nodes = [helper.make_node("ReduceMean", ["images", "ax123"], ["mean"], keepdims=0),
             helper.make_node("Log", ["mean"], ["image_scores"]), _maps(size)]
    return _model(nodes, [_out("image_scores", ["N"]), _out("anomaly_maps", ["N", size, size])],
                  [_axes("ax123", [1, 2, 3]), _axes("ax1", [1])], size)


def wrong_map_shape(size=280):
    """anomaly_maps [N, S] (rank 2) instead of [N, S, S]."""
    nodes = [helper.make_node("ReduceMean", ["images", "ax123"], ["image_scores"], keepdims=0),
             helper.make_node("ReduceMean", ["images", "ax12"], ["anomaly_maps"], keepdims=0)]
    return _model(nodes, [_out("image_scores", ["N"]), _out("anomaly_maps", ["N", size])],
                  [_axes("ax123", [1, 2, 3]), _axes("ax12", [1, 2])], size)


def failing_reshape(size=280):
    """A reshape that cannot work at run time (11 rows of a batch's pixels): a runtime error."""
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["flat"]),
             helper.make_node("ReduceMean", ["flat", "ax1"], ["s11"], keepdims=0),
             helper.make_node("ReduceMean", ["images", "ax123"], ["image_scores0"], keepdims=0),
             helper.make_node("Add", ["image_scores0", "s11"], ["image_scores"]), _maps(size)]
    return _model(nodes, [_out("image_scores", ["N"]), _out("anomaly_maps", ["N", size, size])],
                  [_axes("shape", [11, -1]), _axes("ax123", [1, 2, 3]), _axes("ax1", [1])], size)


def endless_loop(size=280):
    """A Loop of 2**62 iterations before the scores: a graph that never ends."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["x_in", "one"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", F, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", F, [])],
        initializer=[numpy_helper.from_array(np.asarray(1.0, np.float32), "one")])
    nodes = [helper.make_node("Loop", ["trips", "cond", "zero"], ["spun"], body=body),
             helper.make_node("ReduceMean", ["images", "ax123"], ["mean"], keepdims=0),
             helper.make_node("Add", ["mean", "spun"], ["image_scores"]), _maps(size)]
    inits = [numpy_helper.from_array(np.asarray(2**62, np.int64), "trips"),
             numpy_helper.from_array(np.asarray(True), "cond"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
             _axes("ax123", [1, 2, 3]), _axes("ax1", [1])]
    return _model(nodes, [_out("image_scores", ["N"]), _out("anomaly_maps", ["N", size, size])], inits, size)


def hostile_copy(export: Path, dest: Path, model=None, **manifest_changes) -> Path:
    """A copy of the export folder ``export`` with ``model`` as its model.onnx (if given) and
    ``manifest_changes`` applied, the manifest resealed (a consistent-looking folder)."""
    shutil.copytree(export, dest)
    if model is not None:
        save_model(model, str(dest / "model.onnx"))
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    manifest["files"] = {"model.onnx": file_record(dest / "model.onnx")}
    manifest.update(manifest_changes)
    (dest / MANIFEST_NAME).write_text(json.dumps(seal_manifest(manifest)))
    return dest
