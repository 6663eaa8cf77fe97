"""A test fixture: a small stand-in for an exported VA-RED2 model, written with ``onnx.helper`` and numpy only.

It has the shape of the real exporter's output (DESIGN.md §4) where the engine builders care: a
``gate.onnx`` (uint8 clip → ``features``, ``bucket_logits``), one ``bucket_<id>.onnx`` per bucket whose
partial convolutions use a *prefix* (along output channels) of the full bucket's weight under the same
initializer name, a ``vared2::ChannelReconstruct`` node backed by a model-local function, and an
``export.json``. Tests and ``experiments/ort_memory.py`` use it where the real model is not needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DOMAIN = "vared2"


def _channel_reconstruct_function() -> onnx.FunctionProto:
    """ϕs from standard ops: generated channel g is a depthwise (1, 3, 3) convolution of channel g mod C_c."""
    conv = helper.make_node("Conv", ["src", "weight", "bias"], ["made"], pads=[0, 1, 1, 0, 1, 1])
    # ``group`` is the node's ``generated`` attribute (an attribute reference inside the function).
    group = helper.make_attribute_ref("group", onnx.AttributeProto.INT)
    group.ref_attr_name = "generated"
    conv.attribute.append(group)
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Shape", ["bias"], ["g1"]),
        helper.make_node("Squeeze", ["g1"], ["g"]),
        helper.make_node("Shape", ["x"], ["cc"], start=1, end=2),
        helper.make_node("Range", ["zero", "g", "one"], ["r"]),
        helper.make_node("Mod", ["r", "cc"], ["idx"]),
        helper.make_node("Gather", ["x", "idx"], ["src"], axis=1),
        conv,
        helper.make_node("Concat", ["x", "made"], ["y"], axis=1),
    ]
    return helper.make_function(
        DOMAIN,
        "ChannelReconstruct",
        ["x", "weight", "bias"],
        ["y"],
        nodes,
        [helper.make_opsetid("", OPSET)],
        attributes=["generated", "out_channels"],
    )


def _model(graph: onnx.GraphProto, with_function: bool) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    functions = []
    if with_function:
        opsets.append(helper.make_opsetid(DOMAIN, 1))
        functions.append(_channel_reconstruct_function())
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="vared2-toy")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_toy_onnx_dir(
    out_dir: Path,
    *,
    widths: Sequence[int] = (8, 16, 16, 32),
    fractions: Sequence[Sequence[float]] = ((1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.5, 0.5, 0.25)),
    frames: int = 4,
    size: int = 16,
    num_classes: int = 5,
    seed: int = 0,
) -> Path:
    """Write a toy exported model: ``widths`` are the stem and stage output channels, ``fractions[b][s]``
    the fraction of stage ``s``'s channels bucket ``b`` computes (bucket 0 must be all 1.0)."""
    if any(f != 1.0 for f in fractions[0]):
        raise ValueError(f"toy model: bucket 0 must be full, got fractions {list(fractions[0])}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem_c, stages = widths[0], list(widths[1:])

    def rand(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    # Gate: uint8 [N,T,H,W,3] → normalise → stem conv → ReLU = features; pooled → Gemm = bucket_logits.
    num_buckets = len(fractions)
    gate_inits = [
        numpy_helper.from_array(np.full((1, 3, 1, 1, 1), 1 / 255 / 0.225, np.float32), "scale"),
        numpy_helper.from_array(np.full((1, 3, 1, 1, 1), -0.45 / 0.225, np.float32), "offset"),
        numpy_helper.from_array(rand(stem_c, 3, 1, 3, 3), "stem.0.weight"),
        numpy_helper.from_array(rand(stem_c), "stem.0.bias"),
        numpy_helper.from_array(rand(num_buckets, stem_c), "gate.fc.weight"),
        numpy_helper.from_array(rand(num_buckets), "gate.fc.bias"),
    ]
    gate_nodes = [
        helper.make_node("Transpose", ["clip"], ["t"], perm=[0, 4, 1, 2, 3]),
        helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["s"]),
        helper.make_node("Add", ["s", "offset"], ["x"]),
        helper.make_node("Conv", ["x", "stem.0.weight", "stem.0.bias"], ["c"], pads=[0, 1, 1, 0, 1, 1]),
        helper.make_node("Relu", ["c"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["p"], axes=[2, 3, 4], keepdims=0),
        helper.make_node("Gemm", ["p", "gate.fc.weight", "gate.fc.bias"], ["bucket_logits"], transB=1),
    ]
    features_shape = [stem_c, frames, size, size]
    gate = helper.make_graph(
        gate_nodes,
        "gate",
        [helper.make_tensor_value_info("clip", TensorProto.UINT8, ["N", frames, size, size, 3])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", *features_shape]),
            helper.make_tensor_value_info("bucket_logits", TensorProto.FLOAT, ["N", num_buckets]),
        ],
        gate_inits,
    )
    onnx.save(_model(gate, with_function=False), str(out / "gate.onnx"))

    # Full weights once; each bucket slices a prefix of the output channels under the same name.
    full: dict[str, np.ndarray] = {}
    c_in = stem_c
    for s, c_out in enumerate(stages):
        full[f"layer{s + 1}.conv.weight"] = rand(c_out, c_in, 3, 3, 3)
        full[f"layer{s + 1}.conv.bias"] = rand(c_out)
        c_in = c_out
    full["fc.weight"] = rand(num_classes, stages[-1])
    full["fc.bias"] = rand(num_classes)

    entries = []
    for b, fracs in enumerate(fractions):
        nodes, inits, x, c_in = [], [], "features", stem_c
        uses_function = False
        for s, (c_out, frac) in enumerate(zip(stages, fracs, strict=True)):
            computed = max(1, int(c_out * frac))
            w_name, b_name = f"layer{s + 1}.conv.weight", f"layer{s + 1}.conv.bias"
            inits.append(numpy_helper.from_array(full[w_name][:computed], w_name))
            inits.append(numpy_helper.from_array(full[b_name][:computed], b_name))
            y = f"conv{s}"
            nodes.append(helper.make_node("Conv", [x, w_name, b_name], [y], pads=[1] * 6))
            if computed < c_out:
                generated = c_out - computed
                cw, cb = f"layer{s + 1}.cheap.{b}.weight", f"layer{s + 1}.cheap.{b}.bias"
                inits.append(numpy_helper.from_array(rand(generated, 1, 1, 3, 3), cw))
                inits.append(numpy_helper.from_array(rand(generated), cb))
                nodes.append(
                    helper.make_node(
                        "ChannelReconstruct",
                        [y, cw, cb],
                        [f"rec{s}"],
                        domain=DOMAIN,
                        generated=generated,
                        out_channels=c_out,
                    )
                )
                y, uses_function = f"rec{s}", True
            nodes.append(helper.make_node("Relu", [y], [f"relu{s}"]))
            x, c_in = f"relu{s}", c_out
        inits += [numpy_helper.from_array(full["fc.weight"], "fc.weight")]
        inits += [numpy_helper.from_array(full["fc.bias"], "fc.bias")]
        nodes.append(helper.make_node("ReduceMean", [x], ["pooled"], axes=[2, 3, 4], keepdims=0))
        nodes.append(helper.make_node("Gemm", ["pooled", "fc.weight", "fc.bias"], ["logits"], transB=1))
        graph = helper.make_graph(
            nodes,
            f"bucket_{b}",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", *features_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
            inits,
        )
        name = f"bucket_{b}.onnx"
        onnx.save(_model(graph, with_function=uses_function), str(out / name))
        gflops = sum(float(np.prod(w.dims)) for w in inits) * frames * size * size / 1e9  # a rough stand-in
        policy = [[0, 0 if f == 1.0 else round(-np.log2(f))] for f in fracs]
        entries.append({"id": b, "name": f"toy{b}", "policy": policy, "gflops": gflops, "file": name})

    spec = {
        "format": "vared2-onnx",
        "version": 1,
        "opset": OPSET,
        "model": {
            "backbone": "toy",
            "frames": frames,
            "size": size,
            "mean": [0.45] * 3,
            "std": [0.225] * 3,
            "labels": [f"class{i}" for i in range(num_classes)],
            "num_classes": num_classes,
            "checkpoint_sha256": "",
        },
        "gate": {"file": "gate.onnx", "gflops": 1e-3, "features_shape": features_shape},
        "buckets": entries,
        "exporter": {"toy": "tests/ort_toy.py", "seed": seed},
    }
    (out / "export.json").write_text(json.dumps(spec, indent=2) + "\n")
    return out
