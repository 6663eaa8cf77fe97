"""The ONNX Runtime engine builder's graph rewrite (``vared2.engines.ort_specialize``): every specialised node
equals the reference semantics (and the generic function it replaces), whatever the channel split, with and
without the BatchNorm shift and ReLU it absorbs; a whole exported bucket keeps its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from ort_levels import LEVELS, run_at_level
from tiny_buckets import export_tiny

from vared2.engines.ort_graph import SPECIALIZED_DOMAIN, is_specialized_initializer
from vared2.engines.ort_specialize import specialize
from vared2.plugins import DOMAIN, reference
from vared2.plugins.onnx_functions import OPSET, PLUGIN_ATTRIBUTES, attach_functions


def _layer_model(
    cc: int, out: int, t: int, h: int, w: int, *, factor: int, post: str, seed: int
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``x`` → [TemporalReconstruct] → ChannelReconstruct → [Add shift [→ Relu]], parameters as initializers
    (as the exporter writes them); returns the model and its parameters."""
    rng = np.random.default_rng(seed)
    g = out - cc
    params = {
        "scale": rng.uniform(0.5, 1.5, (factor, cc)).astype(np.float32),
        "tshift": rng.normal(0, 0.3, (factor, cc)).astype(np.float32),
        "weight": rng.normal(0, 0.5, (g, 1, 1, 3, 3)).astype(np.float32),
        "bias": rng.normal(0, 0.3, g).astype(np.float32),
        "shift": np.concatenate([rng.normal(0, 0.5, cc), np.zeros(g)]).reshape(1, out, 1, 1, 1).astype(np.float32),
    }
    nodes, source = [], "x"
    if factor > 1:
        node = helper.make_node("TemporalReconstruct", ["x", "scale", "tshift"], ["xt"], domain=DOMAIN, factor=factor)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in PLUGIN_ATTRIBUTES.items())
        nodes.append(node)
        source = "xt"
    node = helper.make_node("ChannelReconstruct", [source, "weight", "bias"], ["y0"], domain=DOMAIN, out_channels=out)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in PLUGIN_ATTRIBUTES.items())
    nodes.append(node)
    last = "y0"
    if post in ("add", "add_relu"):
        nodes.append(helper.make_node("Add", ["y0", "shift"], ["y1"]))
        last = "y1"
    if post == "add_relu":
        nodes.append(helper.make_node("Relu", ["y1"], ["y2"]))
        last = "y2"
    used = {i for n in nodes for i in n.input}
    inits = [numpy_helper.from_array(v, k) for k, v in params.items() if k in used]
    tc = t // factor
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cc, tc, h, w])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", out, t, h, w])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return attach_functions(model), params


@pytest.mark.parametrize(
    ("cc", "out", "t", "h", "w", "factor", "post"),
    [
        (8, 16, 4, 6, 5, 1, "add_relu"),  # G == C_c: one block, no slice
        (8, 12, 2, 5, 7, 1, "add"),  # G < C_c: one sliced block
        (8, 30, 4, 4, 4, 2, "add_relu"),  # G > C_c, not a multiple: two full blocks and a slice; with ϕt
        (16, 40, 2, 7, 7, 1, "none"),  # no shift to absorb
        (8, 24, 1, 3, 3, 1, "add_relu"),  # T = 1, tiny planes
    ],
)
@pytest.mark.parametrize("level", ["extended", "all"])
def test_specialised_layer_matches_reference(
    cc: int, out: int, t: int, h: int, w: int, factor: int, post: str, level: str
) -> None:
    model, p = _layer_model(cc, out, t, h, w, factor=factor, post=post, seed=cc + out + t)
    x = np.random.default_rng(1).standard_normal((3, cc, t // factor, h, w)).astype(np.float32)
    # The reference semantics, step by step, in float64.
    y = torch.from_numpy(x).double()
    if factor > 1:
        y = reference.temporal_reconstruct(
            y, torch.from_numpy(p["scale"]).double(), torch.from_numpy(p["tshift"]).double(), factor
        )
    y = reference.channel_reconstruct(
        y, torch.from_numpy(p["weight"]).double(), torch.from_numpy(p["bias"]).double(), out
    )
    if post != "none":
        y = y + torch.from_numpy(p["shift"]).double()
    if post == "add_relu":
        y = torch.relu(y)
    expected = y.numpy()

    special = specialize(model)
    onnx.checker.check_model(special, full_check=True)
    assert not any(n.domain == DOMAIN for n in special.graph.node)
    assert [n.domain for n in special.graph.node] == [SPECIALIZED_DOMAIN] * (2 if factor > 1 else 1)
    # The Add/Relu were absorbed: the last specialised node writes the graph's output, and its body does the rest.
    last = special.graph.node[-1]
    assert last.output[0] == special.graph.output[0].name == model.graph.output[0].name
    body = next(f for f in special.functions if (f.domain, f.name) == (last.domain, last.op_type))
    absorbed = {"none": set(), "add": {"Add"}, "add_relu": {"Add", "Relu"}}[post]
    assert {n.op_type for n in body.node} & {"Add", "Relu"} == absorbed
    assert all(is_specialized_initializer(t.name) for t in special.graph.initializer)
    got = run_at_level(special, {"x": x}, level)[0]
    generic = run_at_level(model, {"x": x}, level)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, generic, atol=1e-5, rtol=0)


def test_model_without_custom_nodes_is_returned_unchanged() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert specialize(model) == model
    with pytest.raises(TypeError, match=r"onnx\.ModelProto"):
        specialize(b"not a model")  # type: ignore[arg-type]


def test_non_constant_parameters_keep_the_generic_function() -> None:
    """A node whose filters are graph inputs cannot be specialised: it stays a vared2 node with its function."""
    model, _ = _layer_model(8, 16, 2, 4, 4, factor=1, post="none", seed=0)
    weight = next(t for t in model.graph.initializer if t.name == "weight")
    model.graph.input.append(helper.make_tensor_value_info("weight", TensorProto.FLOAT, list(weight.dims)))
    kept = [t for t in model.graph.initializer if t.name != "weight"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    special = specialize(model)
    assert [n.domain for n in special.graph.node] == [DOMAIN]
    assert {f.name for f in special.functions} >= {"ChannelReconstruct"}


def test_exported_buckets_keep_their_outputs(tmp_path: Path) -> None:
    """A tiny r2plus1d_18 with non-trivial BatchNorm and cheap-op parameters: every specialised bucket equals
    its exported graph, keeps exactly its top-level partial convolutions, and has no vared2 node left."""
    from vared2.models import r2plus1d_18

    _, exported, features = export_tiny(r2plus1d_18, tmp_path / "onnx")
    rewritten = absorbed = 0
    for path in exported.buckets:
        source = onnx.load(str(path))
        special = specialize(source)
        assert not any(n.domain == DOMAIN for n in special.graph.node)
        rewritten += sum(n.domain == SPECIALIZED_DOMAIN for n in special.graph.node)
        top_convs = [n for n in special.graph.node if n.op_type == "Conv"]
        assert len(top_convs) == sum(n.op_type == "Conv" for n in source.graph.node)
        # The exporter's Mul restoring a reduced bucket's BatchNorm scale is absorbed into the reconstruction that
        # reads it; only a layer with neither ϕt nor ϕs keeps its Mul.
        restoring = [n for n in source.graph.node if n.op_type == "Mul" and n.domain == ""]
        kept = [n for n in special.graph.node if n.op_type == "Mul" and n.domain == ""]
        readers = {n.output[0]: [m for m in source.graph.node if n.output[0] in m.input] for n in restoring}
        unread = [n for n in restoring if not any(m.domain == DOMAIN for m in readers[n.output[0]])]
        assert len(kept) == len(unread), path.name
        absorbed += len(restoring) - len(kept)
        expected = run_at_level(source, {"features": features}, "extended")[0]
        for level in LEVELS:
            np.testing.assert_allclose(
                run_at_level(special, {"features": features}, level)[0], expected, atol=1e-5, rtol=0
            )
    assert rewritten > 0 and absorbed > 0


@pytest.mark.parametrize(
    ("kernel", "strides", "pads", "rewritten"),
    [
        ([3, 1, 1], [1, 1, 1], [1, 0, 0, 1, 0, 0], True),  # r(2+1)d's temporal half
        ([3, 1, 1], [2, 1, 1], [1, 0, 0, 1, 0, 0], True),  # … with temporal stride (t1 buckets, stage entries)
        ([1, 1, 1], [1, 1, 1], [0, 0, 0, 0, 0, 0], True),
        ([1, 3, 3], [1, 1, 1], [0, 1, 1, 0, 1, 1], False),  # spatial kernel: stays 3-D
        ([1, 1, 1], [1, 2, 2], [0, 0, 0, 0, 0, 0], False),  # spatial stride (shortcut projection): stays 3-D
    ],
)
def test_temporal_convs_run_as_2d_convs_with_the_same_result(
    kernel: list[int], strides: list[int], pads: list[int], rewritten: bool
) -> None:
    from vared2.engines.ort_temporal2d import temporal_convs_as_2d

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 5, *kernel)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=kernel, strides=strides, pads=pads),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "temporal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8, 6, 7])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 6, "T", 6, 7])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    before = onnx.ModelProto()
    before.CopyFrom(model)
    result = temporal_convs_as_2d(model)
    assert model == before  # a pass returns a new model
    assert (result != model) == rewritten
    model = result
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    kernels = [len(next(a for a in c.attribute if a.name == "kernel_shape").ints) for c in convs]
    assert kernels == [2 if rewritten else 3]
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    assert relu.input[0] == convs[0].output[0]  # rewritten: moved onto the 4-D output, where it fuses
    assert next(n for n in model.graph.node if "z" in n.output).op_type == ("Reshape" if rewritten else "Relu")
    x = rng.standard_normal((3, 5, 8, 6, 7)).astype(np.float32)
    expected = torch.relu(
        torch.nn.functional.conv3d(
            torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), strides, (pads[0], pads[1], pads[2])
        )
    ).numpy()
    for level in LEVELS:
        np.testing.assert_allclose(run_at_level(model, {"x": x}, level)[0], expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(run_at_level(before, {"x": x}, level)[0], expected, atol=1e-5, rtol=0)
