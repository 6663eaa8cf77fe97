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


def _expected_drops(backbone: str, policies: tuple[tuple[int, int], ...]) -> int:
    """ϕt nodes whose rebuilt frames nothing reads, per bucket (two blocks per stage).

    r(2+1)d: every block's middle in a reduced stage (the second Conv2Plus1D's spatial half, temporal stride R,
    reads the first one's output); and every block's end when the next stage is reduced too (its spatial half and
    its shortcut, which halves time, both read every other frame of the stage's output, so the whole residual
    stream runs on half the frames). mc3: the middles of its 2-D stages (1–3); its shortcuts keep every frame.
    r3d: none (temporal kernels of 3 everywhere)."""
    reduced = [pt > 0 for pt, _ in policies]
    if backbone == "r2plus1d_18":
        ends = [reduced[s] and s + 1 < len(reduced) and reduced[s + 1] for s in range(len(reduced))]
        return 2 * sum(reduced) + 2 * sum(ends)
    if backbone == "mc3_18":
        return 2 * sum(reduced[1:])
    return 0


@pytest.mark.parametrize("build", [r2plus1d_18, mc3_18, r3d_18])
def test_exported_buckets_lose_only_unread_frames(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, exported, features = export_tiny(build, tmp_path / "onnx")
    dropped_in_all = 0
    for bucket, path in zip(model.buckets, exported.buckets, strict=True):
        source = onnx.load(str(path))
        skipped = skip_unread_frames(source)
        dropped = _temporal_nodes(source) - _temporal_nodes(skipped)
        assert dropped == _expected_drops(model.config.backbone, bucket.policies), bucket.name
        dropped_in_all += dropped
        expected = run_at_level(source, {"features": features}, "extended")[0]
        for graph in (skipped, specialize(skipped)):
            for level in LEVELS:
                got = run_at_level(graph, {"features": features}, level)[0]
                np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert (dropped_in_all > 0) == (build is not r3d_18)


def _chain_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list],
    weights: dict[str, np.ndarray],
    extra_outputs: list[onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    """A graph of ``nodes`` (``vared2`` nodes get the plugin attributes) ending in ``y``."""
    for node in nodes:
        if node.domain == DOMAIN:
            node.attribute.extend(helper.make_attribute(k, v) for k, v in PLUGIN_ATTRIBUTES.items())
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "T", "H", "W"]), *(extra_outputs or [])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return attach_functions(model)


def _phi_t(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    scale = rng.uniform(0.5, 1.5, (2, c)).astype(np.float32)
    shift = rng.normal(0, 0.3, (2, c)).astype(np.float32)
    scale[0], shift[0] = 1.0, 0.0
    return {"scale": scale, "tshift": shift}


def _assert_same(model: onnx.ModelProto, changed: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    """Every output of ``changed`` equals ``model``'s at both optimisation levels."""
    for level in LEVELS:
        got, expected = run_at_level(changed, feed, level), run_at_level(model, feed, level)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _reader_model(
    kernel: list[int], strides: list[int], pads: list[int], *, first_row: float = 1.0, also_output: bool = False
) -> onnx.ModelProto:
    """``x`` → TemporalReconstruct (R = 2) → Add shift → Relu → Conv(kernel, strides, pads) → ``y``."""
    rng = np.random.default_rng(0)
    c = 4
    weights = _phi_t(rng, c)
    weights["scale"][0] = first_row
    weights["bn"] = rng.normal(0, 0.5, (1, c, 1, 1, 1)).astype(np.float32)
    weights["w"] = rng.normal(0, 0.5, (6, c, *kernel)).astype(np.float32)
    nodes = [
        helper.make_node("TemporalReconstruct", ["x", "scale", "tshift"], ["xt"], domain=DOMAIN, factor=2),
        helper.make_node("Add", ["xt", "bn"], ["xs"]),
        helper.make_node("Relu", ["xs"], ["xr"]),
        helper.make_node("Conv", ["xr", "w"], ["y"], kernel_shape=kernel, strides=strides, pads=pads),
    ]
    extra = [helper.make_tensor_value_info("xt", TensorProto.FLOAT, ["N", c, 6, 5, 5])] if also_output else []
    return _chain_model(nodes, {"x": ["N", c, 3, 5, 5]}, weights, extra)


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
    _assert_same(model, skipped, {"x": np.random.default_rng(1).standard_normal((2, 4, 3, 5, 5)).astype(np.float32)})


def test_a_residual_read_at_every_other_frame_is_thinned_with_a_slice() -> None:
    """``y = Conv_stride2(ReLU(ϕt(p) + x))``: only even frames reach ``y``, so ϕt goes and the residual ``x`` (a graph
    input, kept whole) is thinned by one strided ``Slice`` — what a t-bucket's stage does when the next one halves
    time too."""
    rng = np.random.default_rng(0)
    c = 4
    nodes = [
        helper.make_node("TemporalReconstruct", ["p", "scale", "tshift"], ["pt"], domain=DOMAIN, factor=2),
        helper.make_node("Add", ["pt", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[1, 3, 3], strides=[2, 1, 1], pads=[0, 1, 1, 0, 1, 1]),
    ]
    weights = {**_phi_t(rng, c), "w": rng.normal(0, 0.5, (6, c, 1, 3, 3)).astype(np.float32)}
    model = _chain_model(nodes, {"p": ["N", c, 3, 5, 5], "x": ["N", c, 6, 5, 5]}, weights)
    changed = skip_unread_frames(model)
    assert _temporal_nodes(changed) == 0
    assert [n.op_type for n in changed.graph.node if n.op_type in {"Slice", "Add", "Relu", "Conv"}] == [
        "Slice",
        "Add",
        "Relu",
        "Conv",
    ]
    feed = {"p": rng.standard_normal((2, c, 3, 5, 5)).astype(np.float32)}
    feed["x"] = rng.standard_normal((2, c, 6, 5, 5)).astype(np.float32)
    _assert_same(model, changed, feed)


def test_a_temporal_conv_read_at_every_other_frame_writes_only_those() -> None:
    """``y = Conv_stride2_kernel1(ReLU(Conv_kernel3(ϕt(p))))``: the kernel-3 convolution's odd output frames are never
    read, so it runs at temporal stride 2 (half the work); it reads every frame, so ϕt stays."""
    rng = np.random.default_rng(1)
    c = 4
    nodes = [
        helper.make_node("TemporalReconstruct", ["p", "scale", "tshift"], ["pt"], domain=DOMAIN, factor=2),
        helper.make_node("Conv", ["pt", "wt"], ["q"], kernel_shape=[3, 1, 1], pads=[1, 0, 0, 1, 0, 0]),
        helper.make_node("Relu", ["q"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[1, 1, 1], strides=[2, 1, 1]),
    ]
    weights = {
        **_phi_t(rng, c),
        "wt": rng.normal(0, 0.5, (c, c, 3, 1, 1)).astype(np.float32),
        "w": rng.normal(0, 0.5, (6, c, 1, 1, 1)).astype(np.float32),
    }
    model = _chain_model(nodes, {"p": ["N", c, 4, 5, 5]}, weights)
    changed = skip_unread_frames(model)
    assert _temporal_nodes(changed) == 1
    strides = [
        next(a.ints[0] for a in n.attribute if a.name == "strides") for n in changed.graph.node if n.op_type == "Conv"
    ]
    assert strides == [2, 1]
    _assert_same(model, changed, {"p": rng.standard_normal((2, c, 4, 5, 5)).astype(np.float32)})
