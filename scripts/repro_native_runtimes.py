"""Reproduction attempt: PyTorch training in a process that has run OpenVINO, ONNX Runtime and Ray.

``make test`` once ran the tests of exported models and Ray in a pytest process of their own after
a process that had loaded them all crashed (SIGSEGV) later in training code. This script does the
suspected sequence in one process, in order, and reports what it finds:

1. the threading runtimes mapped into the process (``/proc/self/maps``): a second OpenMP runtime
   (libiomp5 / another libgomp) next to PyTorch's would be the classic cause;
2. OpenVINO's CPU plugin compiles and runs a small model (its TBB worker threads start);
3. ONNX Runtime runs the same model (its own thread pool);
4. ``ray.init`` and a few tasks (gRPC threads in this process, worker processes);
5. training of the shallow test backbone without, then with data-loader workers (fork after all
   of the threads above).

Usage (from the repository root, faulthandler prints the native thread stacks of a crash)::

    PYTHONPATH=src .venv/bin/python -X faulthandler scripts/repro_native_runtimes.py [steps]

``steps``: comma-separated subset of ``ov,ort,ray,train0,train2`` (default: all, in that order).
Exit status 0 and ``done`` when nothing crashed.
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
import tempfile
import time

import torch


def threading_runtimes() -> list[str]:
    """Paths of the OpenMP / TBB libraries mapped into this process."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "/" in path and re.search(r"lib(gomp|iomp5|omp|tbb)[^/]*\.so", path):
                found.add(path)
    return sorted(found)


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)

    def forward(self, x):
        return torch.relu(self.lin(x)).sum(-1)


def main(steps: list[str]) -> int:
    faulthandler.enable()
    work = tempfile.mkdtemp(prefix="s2sw-repro.")
    x = torch.randn(8, 64)
    if "ov" in steps:
        import openvino as ov

        compiled = ov.Core().compile_model(ov.convert_model(Small(), example_input=x), "CPU")
        for _ in range(20):
            compiled(x.numpy())
        print("openvino: ran", flush=True)
    if "ort" in steps:
        import onnxruntime as ort

        path = os.path.join(work, "small.onnx")
        torch.onnx.export(Small(), (x,), path, dynamo=False)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for _ in range(20):
            session.run(None, {session.get_inputs()[0].name: x.numpy()})
        print("onnxruntime: ran", flush=True)
    if "ray" in steps:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")

        @ray.remote
        def double(a):
            return 2 * a

        print("ray: ran", ray.get([double.remote(i) for i in range(4)]), flush=True)
    print("threading runtimes mapped:", *threading_runtimes(), sep="\n  ", flush=True)
    from s2swclip.data.synthetic import generate_dataset
    from s2swclip.training.loop import train

    data = generate_dataset(os.path.join(work, "data"), classes=["pill"], n_train_good=1, n_test_good=3,
                            n_test_defect=3, image_size=64, seed=0)
    for step in steps:
        if step.startswith("train"):
            started = time.perf_counter()
            train(data, os.path.join(work, step), backbone="S2SW-Tiny-4L", weights=None, epochs=2, batch_size=2,
                  image_size=56, seed=2, progress=False, num_workers=int(step[5:]))
            print(f"{step}: trained ({time.perf_counter() - started:.0f} s)", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["ov", "ort", "ray", "train0", "train2"]))
