"""The graph-API comparison of issue 23: the onnx-graphsurgeon prototypes of ``pad-conv-pairs`` and
``temporal-conv-2d`` against the engines' own (onnx-ir) passes, on an exported model's gate and one bucket, at the
point of the pass list where each runs; prints max abs output differences (ONNX Runtime, level all), node counts
and times. (The protobuf versions they replaced are in git history, commit c3c8898.) Needs onnx-graphsurgeon,
which is no project dependency: ``pip install onnx-graphsurgeon==0.6.1``.

    PYTHONPATH=$PWD:$PWD/bench/scripts .venv/bin/python experiments/graph_api/compare.py ONNX_DIR [BUCKET_FILE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import with_graphsurgeon as gs_version
from perf_ab import feeds

from vared2.engines.ort_passes import BUCKET, GATE, passes_for, run_passes


def outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def main() -> None:
    onnx_dir = Path(sys.argv[1])
    bucket = sys.argv[2] if len(sys.argv) > 2 else "bucket_1.onnx"
    cases = [
        (GATE, "gate.onnx", "pad-conv-pairs"),
        (GATE, "gate.onnx", "temporal-conv-2d"),
        (BUCKET, bucket, "temporal-conv-2d"),
    ]
    for kind, file, name in cases:
        model = onnx.load(str(onnx_dir / file))
        passes = passes_for(kind)
        position = [p.name for p in passes].index(name)
        before = run_passes(model, kind, passes[:position])
        feed = feeds(ort.InferenceSession(before.SerializeToString(), providers=["CPUExecutionProvider"]), 2)
        start = time.perf_counter()
        ours = passes[position](before, kind)
        reference = outputs(ours, feed)
        row = [f"{file} {name}: onnx-ir {len(ours.graph.node)} nodes, {time.perf_counter() - start:.2f} s"]
        for label, module in (("graphsurgeon", gs_version),):
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
