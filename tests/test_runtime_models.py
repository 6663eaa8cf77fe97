"""Small but real engines with the DESIGN.md §4 interface, built with onnx.helper, for the runtime tests.

The gate casts the uint8 clip, moves channels first, normalises with the manifest's mean/std, runs a 3-D
convolution as the "stem" (→ ``features``) and scores the buckets from the pooled features; every bucket is a
different small graph over ``features``, so the runtime's choice visibly changes the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from vared2.formats.manifest import BucketEntry, GateEntry, Manifest, ModelSpec, sha256_file, write_engine_dir

FRAMES, SIZE, CHANNELS = 4, 8, 4
LABELS = ("walk", "run", "jump", "sit", "wave", "clap")
MEAN = (0.45, 0.40, 0.35)
STD = (0.25, 0.22, 0.20)
GATE_GFLOPS = 0.5
BUCKETS = [  # id, name, policy, gflops
    (0, "full", [[0, 0], [0, 0]], 4.0),
    (1, "t1c0/t0c0", [[1, 0], [0, 0]], 2.0),
    (2, "t1c1/t1c1", [[1, 1], [1, 1]], 1.0),
]


def _model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def gate_model(rng: np.random.Generator) -> onnx.ModelProto:
    scale = (1.0 / (255.0 * np.array(STD))).astype(np.float32).reshape(1, 3, 1, 1, 1)
    offset = (-np.array(MEAN) / np.array(STD)).astype(np.float32).reshape(1, 3, 1, 1, 1)
    inits = [
        numpy_helper.from_array(scale, "scale"),
        numpy_helper.from_array(offset, "offset"),
        numpy_helper.from_array(rng.standard_normal((CHANNELS, 3, 1, 3, 3)).astype(np.float32) * 0.3, "stem_w"),
        numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32) * 0.1, "stem_b"),
        numpy_helper.from_array(rng.standard_normal((CHANNELS, len(BUCKETS))).astype(np.float32) * 3, "gate_w"),
        numpy_helper.from_array(np.array([0.2, 0.0, -0.1], dtype=np.float32), "gate_b"),
    ]
    nodes = [
        helper.make_node("Cast", ["clip"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_t"], perm=[0, 4, 1, 2, 3]),
        helper.make_node("Mul", ["x_t", "scale"], ["x_s"]),
        helper.make_node("Add", ["x_s", "offset"], ["x_n"]),
        helper.make_node("Conv", ["x_n", "stem_w", "stem_b"], ["stem"], pads=[0, 1, 1, 0, 1, 1]),
        helper.make_node("Relu", ["stem"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3, 4], keepdims=0),
        helper.make_node("MatMul", ["pooled", "gate_w"], ["g"]),
        helper.make_node("Add", ["g", "gate_b"], ["bucket_logits"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("clip", TensorProto.UINT8, ["N", FRAMES, SIZE, SIZE, 3])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", CHANNELS, FRAMES, SIZE, SIZE]),
            helper.make_tensor_value_info("bucket_logits", TensorProto.FLOAT, ["N", len(BUCKETS)]),
        ],
        inits,
        "gate",
    )


def bucket_model(bucket: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Bucket 0: mean pool → linear; 1: max pool → linear; 2: a 1×1×1 conv, mean pool → linear."""
    classes = len(LABELS)
    inits = [
        numpy_helper.from_array(rng.standard_normal((CHANNELS, classes)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fc_b"),
    ]
    if bucket == 0:
        nodes = [helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3, 4], keepdims=0)]
    elif bucket == 1:
        nodes = [helper.make_node("ReduceMax", ["features"], ["pooled"], axes=[2, 3, 4], keepdims=0)]
    else:
        mix = rng.standard_normal((CHANNELS, CHANNELS, 1, 1, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(mix, "pw"))
        nodes = [
            helper.make_node("Conv", ["features", "pw"], ["mixed"]),
            helper.make_node("ReduceMean", ["mixed"], ["pooled"], axes=[2, 3, 4], keepdims=0),
        ]
    nodes += [
        helper.make_node("MatMul", ["pooled", "fc_w"], ["l"]),
        helper.make_node("Add", ["l", "fc_b"], ["logits"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", CHANNELS, FRAMES, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
        f"bucket_{bucket}",
    )


def fill_engine_dir(
    directory: Path, *, seed: int = 0, max_batch: int = 8, backend_version: str | None = None
) -> Manifest:
    """Write the gate and bucket ONNX files into ``directory`` and return their manifest."""
    rng = np.random.default_rng(seed)
    onnx.save(gate_model(rng), directory / "gate.onnx")
    buckets = []
    for bucket_id, name, policy, gflops in BUCKETS:
        file = f"bucket_{bucket_id}.onnx"
        onnx.save(bucket_model(bucket_id, rng), directory / file)
        buckets.append(
            BucketEntry(
                id=bucket_id,
                name=name,
                policy=tuple((p[0], p[1]) for p in policy),
                gflops=gflops,
                file=file,
                sha256=sha256_file(directory / file),
            )
        )
    return Manifest(
        name="toy",
        backend="onnxruntime",
        backend_version=backend_version or ort.__version__,
        precision="fp32",
        device={"type": "cpu"},
        max_batch=max_batch,
        model=ModelSpec(
            frames=FRAMES, size=SIZE, mean=MEAN, std=STD, labels=LABELS, checkpoint_sha256="ab" * 32, short_side=10
        ),
        gate=GateEntry(file="gate.onnx", sha256=sha256_file(directory / "gate.onnx"), gflops=GATE_GFLOPS),
        buckets=tuple(buckets),
        build_options={"optimization": "all"},
        created_by="tests/test_runtime_models.py",
    )


def build_engine_dir(directory: Path, **kwargs: object) -> Manifest:
    return write_engine_dir(directory, lambda tmp: fill_engine_dir(tmp, **kwargs))  # type: ignore[arg-type]


def reference(directory: Path, clips: np.ndarray, buckets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The gate's choice and the chosen buckets' softmax, computed here with plain ORT sessions per sample."""
    gate = ort.InferenceSession(str(directory / "gate.onnx"), providers=["CPUExecutionProvider"])
    sessions = [
        ort.InferenceSession(str(directory / f"bucket_{b}.onnx"), providers=["CPUExecutionProvider"])
        for b, *_ in BUCKETS
    ]
    choices, probs = [], []
    for i in range(clips.shape[0]):
        features, logits = gate.run(["features", "bucket_logits"], {"clip": clips[i : i + 1]})
        choice = int(np.argmax(logits[0])) if buckets is None else int(buckets[i])
        out = sessions[choice].run(["logits"], {"features": features})[0][0].astype(np.float64)
        e = np.exp(out - out.max())
        choices.append(choice)
        probs.append(e / e.sum())
    return np.array(choices), np.array(probs)


def test_toy_models_pass_the_full_onnx_check(tmp_path: Path) -> None:
    manifest = build_engine_dir(tmp_path / "engine")
    assert Manifest.load(tmp_path / "engine") == manifest
    for file in ["gate.onnx", "bucket_0.onnx", "bucket_1.onnx", "bucket_2.onnx"]:
        onnx.checker.check_model(str(tmp_path / "engine" / file), full_check=True)
