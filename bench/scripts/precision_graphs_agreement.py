"""The graphs TensorRT's fp16 and int8 engines parse, run on ONNX Runtime's CPU against the exported fp32 graphs
(docs/engines.md, "TensorRT"): top-1 accuracy and agreement with fp32, and the gate's bucket choices, on synthetic
clips of the demo's kind (seed 2), int8 calibrated on 32 others (seed 1) — what ``./build.sh gpu-check`` compares
on the GPU, without one.

    .venv/bin/python bench/scripts/precision_graphs_agreement.py artifacts/onnx/demo --clips 512
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from vared2.engines.tensorrt_engine import calibration_ranges, precision_graph
from vared2.formats.export_spec import read_export_spec
from vared2.gpu_check import synthetic_clips


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_dir", type=Path)
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    spec = read_export_spec(args.onnx_dir)
    frames, size = spec["model"]["frames"], spec["model"]["size"]
    calibration, _ = synthetic_clips(32, seed=1, frames=frames, size=size)
    clips, labels = synthetic_clips(args.clips, seed=2, frames=frames, size=size)
    ranges, _ = calibration_ranges(args.onnx_dir, spec, [calibration[i : i + 8] for i in range(0, 32, 8)])
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for precision in ("fp32", "fp16", "int8"):
        gate = _session(precision_graph(args.onnx_dir / spec["gate"]["file"], precision), args.threads)
        buckets = {
            b["id"]: _session(precision_graph(args.onnx_dir / b["file"], precision, ranges[b["file"]]), args.threads)
            for b in spec["buckets"]
        }
        predicted: list[int] = []
        chosen: list[int] = []
        for start in range(0, len(clips), 16):
            features, bucket_logits = gate.run(None, {"clip": clips[start : start + 16]})
            for row, bucket in enumerate(bucket_logits.argmax(1).tolist()):
                logits = buckets[bucket].run(None, {"features": features[row : row + 1]})[0]
                predicted.append(int(logits.argmax(1)[0]))
                chosen.append(bucket)
        results[precision] = np.array(predicted), np.array(chosen)
    for precision, (predicted_top1, buckets_chosen) in results.items():
        print(
            f"{precision}: accuracy {np.mean(predicted_top1 == labels):.4f}, "
            f"top-1 agreement with fp32 {np.mean(predicted_top1 == results['fp32'][0]):.4f}, "
            f"bucket choices agreeing with fp32 {np.mean(buckets_chosen == results['fp32'][1]):.4f}, "
            f"clips per bucket {np.bincount(buckets_chosen).tolist()}"
        )


if __name__ == "__main__":
    main()
