"""Run both prototypes and today's passes on an exported model's gate and one bucket, at the point of the pass
list where each pass runs; print max abs output differences (ONNX Runtime, level all) and the node counts.

    PYTHONPATH=$PWD .venv/bin/python experiments/graph_api/compare.py ONNX_DIR [BUCKET_FILE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import with_graphsurgeon as gs_version
import with_onnx_ir as ir_version

from vared2.engines.ort_passes import BUCKET, GATE, passes_for, run_passes


def outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def feed_for(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in arg.shape]
        if arg.type == "tensor(uint8)":
            feed[arg.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feed[arg.name] = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    return feed


def main() -> None:
    onnx_dir = Path(sys.argv[1])
    bucket = sys.argv[2] if len(sys.argv) > 2 else "bucket_1.onnx"
    rng = np.random.default_rng(0)
    cases = [(GATE, "gate.onnx", "pad-conv-pairs"), (GATE, "gate.onnx", "temporal-conv-2d"), (BUCKET, bucket, "temporal-conv-2d")]
    for kind, file, name in cases:
        model = onnx.load(str(onnx_dir / file))
        passes = passes_for(kind)
        position = [p.name for p in passes].index(name)
        before = run_passes(model, kind, passes[:position])
        feed = feed_for(before, rng)
        ours = passes[position](before, kind)
        reference = outputs(ours, feed)
        row = [f"{file} {name}: today {len(ours.graph.node)} nodes"]
        for label, module in (("onnx-ir", ir_version), ("graphsurgeon", gs_version)):
            start = time.perf_counter()
            other = getattr(module, name.replace("-", "_"))(before)
            took = time.perf_counter() - start
            got = outputs(other, feed)
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, got, strict=True))
            ops = sorted(n.op_type for n in other.graph.node) == sorted(n.op_type for n in ours.graph.node)
            row.append(f"{label} {len(other.graph.node)} nodes, same ops {ops}, max abs {diff:.2g}, {took:.2f} s")
        print("; ".join(row))


if __name__ == "__main__":
    main()
