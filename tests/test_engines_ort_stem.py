"""The gate-stem rewrites of the ONNX Runtime builder (``vared2.engines.ort_stem``): exact, and applied only where
their pattern holds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from ort_levels import LEVELS, run_at_level

from vared2.engines.ort_graph import is_specialized_initializer
from vared2.engines.ort_pad import pad_conv_pairs
from vared2.engines.ort_specialize import specialize
from vared2.engines.ort_stacked import MAX_UNUSED_ROWS, stacked_rows
from vared2.engines.ort_stem import stem_for_ort, stem_over_frames
from vared2.export.graphs import GateGraph
from vared2.export.onnx_export import to_onnx
from vared2.models import mc3_18, r2plus1d_18, r3d_18
from vared2.plugins.onnx_functions import OPSET


def _conv_kernels(model: onnx.ModelProto) -> list[list[int]]:
    return [
        list(next(a for a in n.attribute if a.name == "kernel_shape").ints)
        for n in model.graph.node
        if n.op_type == "Conv"
    ]


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "batched"])
@pytest.mark.parametrize(("width", "padded"), [(1.0, 1), (0.125, 0)])
def test_gate_stem_rewrite_matches_pytorch(width: float, padded: int, stacked: bool) -> None:
    """Width 1: the stem's 45 middle channels become 48; width 0.125 (6 → 16 would be +167 %) stays as it is.
    The first convolution runs as a 2-D one, on frames stacked along the rows (the temporal one after it dilated by
    the rows per frame) or over the frames as a batch; features and logits equal PyTorch's either way."""
    torch.manual_seed(0)
    model = r2plus1d_18(width=width, frames=4, size=32, num_classes=5)
    torch.nn.init.normal_(model.gate.fc2.weight)  # so the logits are not all zero
    gate = GateGraph(model).eval()
    clip = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8)
    exported = to_onnx(gate, (clip[:2],), ["clip"], ["features", "bucket_logits"])
    allowed = 1.0 if stacked else 0.0  # at 32×32, 2 of every 18 rows go unused: over the default limit
    work = pad_conv_pairs(exported)
    assert (work != exported) == bool(padded)
    assert stem_over_frames(work, allowed) != work
    rewritten = specialize(stem_for_ort(exported, allowed))  # what the builder runs
    assert _conv_kernels(rewritten) == [[7, 7], [3, 1]]  # frame-wise 2-D stem conv, then the temporal one as 2-D
    _, second = (n for n in rewritten.graph.node if n.op_type == "Conv")
    assert _attributes(second).get("dilations", [1, 1]) == ([18, 1] if stacked else [1, 1])  # 36 rows a frame, /2
    ops = [n.op_type for n in rewritten.graph.node]
    # Stacked: the features split off the frames' unused rows; the descriptor's two frame slices either way.
    counts = (ops.count("Pad"), ops.count("Split"), ops.count("Slice"), ops.count("Transpose"))
    assert counts == ((1, 1, 2, 1) if stacked else (0, 0, 2, 2))
    filters = {t.name: t.dims[0] for t in rewritten.graph.initializer}
    mid = model.stem[0].out_channels
    assert any(n == (48 if padded else mid) for name, n in filters.items() if "stem.0.weight" in name)
    assert all(is_specialized_initializer(t.name) for t in rewritten.graph.initializer if ".ort" in t.name)
    with torch.no_grad():
        features, logits = gate(clip)
    for level in LEVELS:
        got_features, got_logits = run_at_level(rewritten, {"clip": clip.numpy()}, level)
        np.testing.assert_allclose(got_features, features.numpy(), atol=2e-5, rtol=0)
        np.testing.assert_allclose(got_logits, logits.numpy(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("height", "kernel", "stride", "pad_top", "out_rows", "expected", "stacked"),
    [
        (112, 7, 2, 3, 56, (1, 58), True),  # r2plus1d at 112: 3 zero rows above a frame, 1 below; 3.6 % unused
        (56, 7, 2, 3, 28, (1, 30), False),  # at 56: 7.1 % unused, over MAX_UNUSED_ROWS
        (32, 3, 1, 1, 32, (0, 33), True),  # stride 1: the next frame's top zero row is the one below
        (16, 5, 1, 0, 16, (4, 20), False),  # all padding below: 4 zero rows after each frame, none above
        (8, 1, 1, 2, 12, None, False),  # a top padding wider than the kernel: rows of zeros only, cannot line up
    ],
)
def test_stacked_rows(
    height: int, kernel: int, stride: int, pad_top: int, out_rows: int, expected: tuple[int, int] | None, stacked: bool
) -> None:
    """Zero rows below each frame and output rows per frame; whether the builder stacks at that waste."""
    assert stacked_rows(height, kernel, stride, pad_top, out_rows) == expected
    assert (expected is not None and expected[1] / out_rows - 1 <= MAX_UNUSED_ROWS) == stacked


@pytest.mark.parametrize("build", [r3d_18, mc3_18])
def test_stems_with_a_temporal_kernel_are_left_alone(build) -> None:  # type: ignore[no-untyped-def]
    """r3d/mc3 stems (3×7×7) mix frames in their first convolution: no frame-wise rewrite."""
    torch.manual_seed(0)
    gate = GateGraph(build(width=0.125, frames=4, size=32, num_classes=5)).eval()
    exported = to_onnx(
        gate, (torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8),), ["clip"], ["features", "bucket_logits"]
    )
    assert stem_over_frames(exported) == exported
    assert _conv_kernels(exported)[0] == [3, 7, 7]


def _pair(mid: int, between: str = "Relu") -> onnx.ModelProto:
    rng = np.random.default_rng(mid)
    w1 = rng.standard_normal((mid, 4, 1, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(mid).astype(np.float32)
    w2 = rng.standard_normal((8, mid, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[0, 1, 1, 0, 1, 1]),
            helper.make_node(between, ["a"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 0, 0, 1, 0, 0]),
        ],
        "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 5, 5])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize(
    ("mid", "between", "padded_to"),
    [(45, "Relu", 48), (30, "Relu", 32), (11, "Relu", None), (48, "Relu", None), (45, "Sigmoid", None)],
)
def test_conv_pairs_are_padded_only_when_cheap_and_exact(mid: int, between: str, padded_to: int | None) -> None:
    model = _pair(mid, between)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    rewritten = pad_conv_pairs(model)
    assert model == before  # a pass returns a new model
    assert (rewritten != model) == (padded_to is not None)
    model = rewritten
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    first, second = (n for n in model.graph.node if n.op_type == "Conv")
    assert weights[first.input[1]][0] == (padded_to or mid) and weights[second.input[1]][1] == (padded_to or mid)
    x = np.random.default_rng(1).standard_normal((2, 4, 6, 5, 5)).astype(np.float32)
    for level in LEVELS:
        np.testing.assert_allclose(
            run_at_level(model, {"x": x}, level)[0], run_at_level(before, {"x": x}, level)[0], atol=1e-4
        )


def _clip_stem(kernel: int, stride: int, relu_after_temporal: bool) -> onnx.ModelProto:
    """A hand-made gate stem: uint8 clip → transpose, cast, normalise → 1×k×k conv → ReLU → 3×1×1 conv [→ ReLU]."""
    rng = np.random.default_rng(kernel * 10 + stride)
    pad = kernel // 2
    h_out = (12 + 2 * pad - kernel) // stride + 1
    tensors = {
        "scale": rng.uniform(0.5, 2, (1, 3, 1, 1, 1)) / 255,  # a checkpoint normalisation: values of order 1
        "offset": rng.uniform(-1, 1, (1, 3, 1, 1, 1)),
        "w1": rng.standard_normal((16, 3, 1, kernel, kernel)),
        "b1": rng.standard_normal(16),
        "w2": rng.standard_normal((8, 16, 3, 1, 1)),
    }
    nodes = [
        helper.make_node("Transpose", ["clip"], ["ct"], perm=[0, 4, 1, 2, 3]),
        helper.make_node("Cast", ["ct"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["cf", "scale"], ["cs"]),
        helper.make_node("Add", ["cs", "offset"], ["cn"]),
        helper.make_node(
            "Conv", ["cn", "w1", "b1"], ["a"], pads=[0, pad, pad, 0, pad, pad], strides=[1, stride, stride]
        ),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["z" if relu_after_temporal else "features"], pads=[1, 0, 0, 1, 0, 0]),
        *([helper.make_node("Relu", ["z"], ["features"])] if relu_after_temporal else []),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("clip", TensorProto.UINT8, ["N", 4, 12, 12, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8, 4, h_out, h_out])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


@pytest.mark.parametrize(
    ("kernel", "stride", "relu_after_temporal", "unused_rows"),
    [(1, 1, True, 0), (3, 1, False, 1), (5, 2, True, 1)],
)
def test_stacked_stems_of_other_shapes_are_exact(
    kernel: int, stride: int, relu_after_temporal: bool, unused_rows: int
) -> None:
    """No unused rows (the features are a reshape of the stacked tensor), one after each frame, a stride of 2;
    with and without the temporal conv's ReLU: the same features as the graph before, at both levels."""
    model = _clip_stem(kernel, stride, relu_after_temporal)
    stacked = stem_for_ort(model, max_unused_rows=1.0)
    ops = [n.op_type for n in stacked.graph.node]
    assert ops.count("Conv") == 2 and "Transpose" in ops and ops.count("Transpose") == 1
    assert ops.count("Split") == int(unused_rows > 0)
    clip = np.random.default_rng(0).integers(0, 256, (2, 4, 12, 12, 3)).astype(np.uint8)
    for level in LEVELS:
        want = run_at_level(model, {"clip": clip}, level)[0]
        np.testing.assert_allclose(run_at_level(stacked, {"clip": clip}, level)[0], want, atol=1e-4, rtol=1e-5)
