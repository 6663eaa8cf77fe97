"""The ONNX Runtime builder's removal of reconstructed frames nothing reads (``vared2.engines.ort_frames``): exactly
the ϕt nodes whose every reader is a temporally strided convolution go, and every bucket keeps its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_levels import LEVELS, run_at_level
from tiny_buckets import export_tiny

from vared2.engines.ort_frames import skip_unread_frames
from vared2.engines.ort_specialize import specialize
from vared2.models import mc3_18, r2plus1d_18, r3d_18
from vared2.plugins import DOMAIN, TEMPORAL_RECONSTRUCT
from vared2.plugins.onnx_functions import OPSET, PLUGIN_ATTRIBUTES, attach_functions


def _temporal_nodes(model: onnx.ModelProto) -> int:
    return sum(n.domain == DOMAIN and n.op_type == TEMPORAL_RECONSTRUCT for n in model.graph.node)


# Which stages' blocks have a reconstructed output read only by a strided 1×3×3 convolution: in r(2+1)d every
# block's middle (the second Conv2Plus1D's spatial half reads the first one's output), in mc3 the blocks of its
# 2-D stages (the second conv reads the first), in r3d none (its convolutions have a temporal kernel of 3).
CASES = [(r2plus1d_18, {0, 1, 2, 3}), (mc3_18, {1, 2, 3}), (r3d_18, set())]


@pytest.mark.parametrize(("build", "stages"), CASES)
def test_exported_buckets_lose_only_unread_frames(build, stages: set[int], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, exported, features = export_tiny(build, tmp_path / "onnx")
    dropped_in_all = 0
    for bucket, path in zip(model.buckets, exported.buckets, strict=True):
        source = onnx.load(str(path))
        skipped = skip_unread_frames(source)
        reduced = [s for s, (pt, _) in enumerate(bucket.policies) if pt > 0 and s in stages]
        assert _temporal_nodes(source) - _temporal_nodes(skipped) == 2 * len(reduced), bucket.name  # 2 blocks
        dropped_in_all += _temporal_nodes(source) - _temporal_nodes(skipped)
        expected = run_at_level(source, {"features": features}, "extended")[0]
        for graph in (skipped, specialize(skipped)):
            for level in LEVELS:
                got = run_at_level(graph, {"features": features}, level)[0]
                np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert (dropped_in_all > 0) == bool(stages)


def _reader_model(
    kernel: list[int], strides: list[int], pads: list[int], *, first_row: float = 1.0, also_output: bool = False
) -> onnx.ModelProto:
    """``x`` → TemporalReconstruct (R = 2) → Add shift → Relu → Conv(kernel, strides, pads) → ``y``."""
    rng = np.random.default_rng(0)
    c, tc, h, w = 4, 3, 5, 5
    scale = rng.uniform(0.5, 1.5, (2, c)).astype(np.float32)
    shift = rng.normal(0, 0.3, (2, c)).astype(np.float32)
    scale[0], shift[0] = first_row, 0.0
    reconstruct = helper.make_node("TemporalReconstruct", ["x", "scale", "tshift"], ["xt"], domain=DOMAIN, factor=2)
    reconstruct.attribute.extend(helper.make_attribute(k, v) for k, v in PLUGIN_ATTRIBUTES.items())
    nodes = [
        reconstruct,
        helper.make_node("Add", ["xt", "bn"], ["xs"]),
        helper.make_node("Relu", ["xs"], ["xr"]),
        helper.make_node("Conv", ["xr", "w"], ["y"], kernel_shape=kernel, strides=strides, pads=pads),
    ]
    inits = {
        "scale": scale,
        "tshift": shift,
        "bn": rng.normal(0, 0.5, (1, c, 1, 1, 1)).astype(np.float32),
        "w": rng.normal(0, 0.5, (6, c, *kernel)).astype(np.float32),
    }
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "T", "H", "W"])]
    if also_output:
        outputs.append(helper.make_tensor_value_info("xt", TensorProto.FLOAT, ["N", c, 2 * tc, h, w]))
    graph = helper.make_graph(
        nodes,
        "reader",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, tc, h, w])],
        outputs,
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return attach_functions(model)


@pytest.mark.parametrize(
    ("kernel", "strides", "pads", "options", "dropped"),
    [
        ([1, 3, 3], [2, 1, 1], [0, 1, 1, 0, 1, 1], {}, True),  # r(2+1)d's strided spatial half: even frames only
        ([1, 1, 1], [4, 1, 1], [0, 0, 0, 0, 0, 0], {}, True),  # a stride that is a multiple of R
        ([1, 3, 3], [1, 1, 1], [0, 1, 1, 0, 1, 1], {}, False),  # stride 1 reads the rebuilt frames
        ([3, 1, 1], [2, 1, 1], [1, 0, 0, 1, 0, 0], {}, False),  # a temporal kernel reads neighbours
        ([1, 1, 1], [2, 1, 1], [1, 0, 0, 1, 0, 0], {}, False),  # temporal padding shifts the frames read
        ([1, 3, 3], [2, 1, 1], [0, 1, 1, 0, 1, 1], {"also_output": True}, False),  # the frames are an output
        ([1, 3, 3], [2, 1, 1], [0, 1, 1, 0, 1, 1], {"first_row": 0.5}, False),  # frame 0 is not the computed one
    ],
)
def test_only_readers_of_computed_frames_let_reconstruction_go(
    kernel: list[int], strides: list[int], pads: list[int], options: dict, dropped: bool
) -> None:
    model = _reader_model(kernel, strides, pads, **options)
    skipped = skip_unread_frames(model)
    assert _temporal_nodes(skipped) == (0 if dropped else 1)
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 5, 5)).astype(np.float32)
    for level in LEVELS:
        got, expected = run_at_level(skipped, {"x": x}, level), run_at_level(model, {"x": x}, level)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
