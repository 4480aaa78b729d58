"""ONNX Runtime on one transformer block: the graph the export writes, the same graph after
``onnxruntime.transformers``' offline fusions, and attention emitted as ONNX Runtime's fused
``com.microsoft.MultiHeadAttention``, next to PyTorch eager (issue 20).

One open_clip ``ResidualAttentionBlock`` (QuickGELU, ViT-L widths by default) run the way the
detector runs it: a plain block (``_run_block``) and a DPAM block (``_dpam_block``: the block
and the V-V attention of the same weights). Each form is exported with the dynamo exporter
(opset 18, as ``s2swclip export``); the MultiHeadAttention form translates
``scaled_dot_product_attention`` at export time. Prints, per block kind, the fused operators the
optimiser left in each graph, the largest difference from PyTorch and the median wall / process
CPU time per call in interleaved rounds, as a ratio to the exported graph as it is.

    python benchmarks/ort_block.py                          # ViT-L: width 1024, 16 heads, 1370 tokens
    python benchmarks/ort_block.py --width 64 --heads 1 --tokens 401 --rounds 3   # quick
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FUSED = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "QuickGelu", "FastGelu", "BiasGelu",
         "LayerNormalization", "Softmax", "MatMul")


def mha_translation(heads_of):
    """A translation of ``aten.scaled_dot_product_attention`` (no mask) to MultiHeadAttention:
    query [B, H, N, d] -> [B, N, H*d]; key and value stay [B, H, N, d]; the output back to
    [B, H, N, d]."""
    import onnxscript
    from onnx.defs import OpSchema
    from onnxscript import opset18 as op

    param = OpSchema.FormalParameter
    schema = OpSchema("MultiHeadAttention", "com.microsoft", 1,
                      inputs=[param("query", "T"), param("key", "T"), param("value", "T")],
                      outputs=[param("output", "T")], type_constraints=[("T", ["tensor(float)"], "float")],
                      attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads"),
                                  OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "scale")])
    mha = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MultiHeadAttention", schema)

    def translate(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        assert attn_mask is None and not is_causal
        heads, dim = heads_of, query.shape[3]
        s = float(scale) if scale is not None else dim ** -0.5
        q = op.Reshape(op.Transpose(query, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, heads * dim]))
        out = mha(q, key, value, num_heads=heads, scale=s)
        return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, dim])), perm=[0, 2, 1, 3])

    return translate


def export_forms(module, x, heads: int, width: int, folder: Path, name: str) -> dict[str, str]:
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    paths = {}
    for form, table in [("export", None),
                        ("MultiHeadAttention", {torch.ops.aten.scaled_dot_product_attention.default: mha_translation(heads)})]:
        paths[form] = str(folder / f"{name}-{form}.onnx")
        with torch.no_grad():
            torch.onnx.export(module, (x,), paths[form], dynamo=True, opset_version=18,
                              custom_translation_table=table, verbose=False)
    optimized = optimize_model(paths["export"], model_type="vit", num_heads=heads, hidden_size=width, opt_level=0)
    paths["optimize_model(vit)"] = str(folder / f"{name}-optimized.onnx")
    optimized.save_model_to_file(paths["optimize_model(vit)"])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=1370, help="1370 = ViT-L/14 at 518 px")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort
    import torch
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    from s2swclip.model.backbone import _dpam_block, _run_block

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    block = ResidualAttentionBlock(args.width, args.heads, act_layer=QuickGELU).eval()

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, x):
            return _run_block(self.block, x)

    class Dpam(Plain):
        def forward(self, x):
            return _dpam_block(self.block, x)

    x = torch.randn(1, args.tokens, args.width)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in [("plain", Plain()), ("dpam", Dpam())]:
            with torch.inference_mode():
                ref = module(x)
            ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
            runs = {"pytorch eager": lambda m=module: m(x)}
            for form, path in export_forms(module, x, args.heads, args.width, Path(tmp), name).items():
                sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                feed = {sess.get_inputs()[0].name: x.numpy()}
                diff = max(float(np.abs(g - r).max()) for g, r in zip(sess.run(None, feed), ref))
                ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
                print(f"{name:6s} {form:22s} max |d| {diff:.1e}  {dict((k, ops[k]) for k in FUSED if ops[k])}")
                runs[form] = lambda s=sess, f=feed: s.run(None, f)
            wall = {k: [] for k in runs}
            cpu = {k: [] for k in runs}
            with torch.inference_mode():
                for fn in runs.values():
                    fn()
                for _ in range(args.rounds):
                    for k, fn in runs.items():
                        t, c = time.perf_counter(), time.process_time()
                        fn()
                        wall[k].append(time.perf_counter() - t)
                        cpu[k].append(time.process_time() - c)
            base, cbase = statistics.median(wall["export"]), statistics.median(cpu["export"])
            for k in runs:
                w, c = statistics.median(wall[k]), statistics.median(cpu[k])
                print(f"{name:6s} {k:22s} wall {w:7.3f} s ({w / base:.2f})  CPU {c:7.3f} s ({c / cbase:.2f})")


if __name__ == "__main__":
    main()
