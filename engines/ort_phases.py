"""Bucket pass: a temporal convolution that reads ϕt's output, split into its even and odd frames
(docs/performance.md, "Even and odd frames").

In a t-bucket the spatial half computes ``P`` on every other frame, ϕt (``R = 2``) rebuilds ``Y[2k] = P[k]`` and
``Y[2k+1] = a·P[k] + b``, a ``ReLU`` follows, then the temporal half (kernel 3, padding 1, even stride ``S``) reads
``Y``. ``split_temporal_phases`` computes ``E = ReLU(P)`` and ``O = ReLU(a·P + b)`` (two depthwise 1×1 convolutions
in a ``vared2.ort`` function, absorbing a restored BatchNorm scale before ϕt) and ``Conv(E, W[:, :, 1]) +
Conv(O, W[:, :, (0, 2)])`` at stride ``S/2`` on the 2-D view ``[N, C, T, H·W]``, never writing ``Y``. Same
products summed in another order; the weight taps are ``Slice``s of the shared initializer (folded at load).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import ModelProto, helper

from .ort_frames import has_temporal_reconstruct, ir_count_frames, ir_droppable_factor, ir_time_conv
from .ort_graph import (
    SPECIALIZED_DOMAIN,
    SPECIALIZED_SUFFIX,
    IrNodes,
    copy_model,
    from_ir,
    int64_constant,
    ir_add_function,
    ir_constant,
    ir_initializer,
    ir_input_scale,
    ir_replace,
    ir_sole_consumer,
    ir_static_5d,
    make_function,
    to_ir,
)

PHASES = "TemporalPhases"


def _matches(reconstruct: ir.Node) -> tuple[ir.Node, ir.Node, int] | None:
    """(the ReLU, the temporal conv, its stride) of a ϕt (R = 2) → ReLU → temporal conv chain, else ``None``."""
    if ir_droppable_factor(reconstruct) != 2 or ir_static_5d(reconstruct.inputs[0]) is None:  # type: ignore[arg-type]
        return None
    relu = ir_sole_consumer(reconstruct.outputs[0], "Relu")
    conv = ir_sole_consumer(relu.outputs[0], "Conv") if relu is not None else None
    if relu is None or conv is None or len(conv.inputs) < 2:
        return None
    time = ir_time_conv(conv)
    weight = ir_constant(conv.inputs[1])
    attributes = conv.attributes
    spatial_one = (
        weight is not None
        and weight.shape[3:] == (1, 1)
        and list(attributes.get_ints("strides", [1, 1, 1]))[1:] == [1, 1]
        and list(attributes.get_ints("pads", [0] * 6)) == [1, 0, 0, 1, 0, 0]
        and list(attributes.get_ints("dilations", [1, 1, 1])) == [1, 1, 1]
        and attributes.get_int("group", 1) == 1
    )
    if time is None or time.kernel != 3 or time.stride % 2 or not spatial_one:
        return None
    return relu, conv, time.stride


def _weight_taps(nodes: IrNodes, weight: ir.Value, prefix: str, c_out: int, c: int) -> tuple[ir.Value, ir.Value]:
    """``{prefix}.w_even`` (the middle tap, ``[C_out, C, 1, 1]``) and ``{prefix}.w_odd`` (the outer two,
    ``[C_out, C, 2, 1]``) of a ``[C_out, C, 3, 1, 1]`` weight, as ``Slice``s of it (folded at load)."""
    mid, mid_end = nodes.ints(f"{prefix}.mid", [1]), nodes.ints(f"{prefix}.mid_end", [2])
    axis = nodes.ints(f"{prefix}.axis", [2])
    even5 = nodes.op("Slice", [weight, mid, mid_end, axis], f"{prefix}.w_even5")
    outer, outer_end = nodes.ints(f"{prefix}.outer", [0]), nodes.ints(f"{prefix}.outer_end", [3])
    outer_step = nodes.ints(f"{prefix}.outer_step", [2])
    odd5 = nodes.op("Slice", [weight, outer, outer_end, axis, outer_step], f"{prefix}.w_odd5")
    even_shape = nodes.ints(f"{prefix}.w_even_shape", [c_out, c, 1, 1])
    even = nodes.op("Reshape", [even5, even_shape], f"{prefix}.w_even")
    odd_shape = nodes.ints(f"{prefix}.w_odd_shape", [c_out, c, 2, 1])
    odd = nodes.op("Reshape", [odd5, odd_shape], f"{prefix}.w_odd")
    return even, odd


def _split(
    model: ir.Model, index: int, reconstruct: ir.Node, relu: ir.Node, conv: ir.Node, stride: int, frames: int
) -> None:
    """Replace ``reconstruct → relu → conv`` (module docstring) in ``model``, the new nodes where ϕt was."""
    graph = model.graph
    dims = ir_static_5d(reconstruct.inputs[0])  # type: ignore[arg-type]
    assert dims is not None
    c, tc, h, w = dims
    weight = ir_constant(conv.inputs[1])
    scale, shift = ir_constant(reconstruct.inputs[1]), ir_constant(reconstruct.inputs[2])
    assert weight is not None and scale is not None and shift is not None
    c_out = int(weight.shape[0])
    after = ir_sole_consumer(conv.outputs[0], "Relu")
    prefix = f"{conv.outputs[0].name}{SPECIALIZED_SUFFIX}.phases"
    source, ratio, restoring = reconstruct.inputs[0], np.ones(c), []
    restored = ir_input_scale(reconstruct.inputs[0])  # type: ignore[arg-type]
    if restored is not None:  # ϕt of r·P: both phases' depthwise weights times r (vared2.export.fold's ratio)
        source, ratio, mul = restored
        restoring = [mul]
    initializers = [
        ir_initializer(graph, f"{prefix}.even_w", ratio.reshape(c, 1, 1, 1).astype(np.float32)),
        ir_initializer(graph, f"{prefix}.even_b", np.zeros(c, np.float32)),
        ir_initializer(graph, f"{prefix}.odd_w", (scale[1] * ratio).reshape(c, 1, 1, 1).astype(np.float32)),
        ir_initializer(graph, f"{prefix}.odd_b", shift[1].astype(np.float32)),
    ]
    body = [int64_constant("view4", [-1, c, tc, h * w]), helper.make_node("Reshape", ["x", "view4"], ["x4"])]
    for phase in ("even", "odd"):
        body += [
            helper.make_node(
                "Conv", ["x4", f"{phase}_w", f"{phase}_b"], [f"{phase}_lin"], group=c, kernel_shape=[1, 1]
            ),
            helper.make_node("Relu", [f"{phase}_lin"], [phase]),
        ]
    name = f"{PHASES}_{index}"
    ir_add_function(
        model,
        make_function(
            name,
            ["x", "even_w", "even_b", "odd_w", "odd_b"],
            ["even", "odd"],
            body,
            f"ϕt (R = 2) + ReLU as even/odd frames of x [N,{c},{tc},{h},{w}]",
        ),
    )
    even, odd = ir.Value(name=f"{prefix}.even"), ir.Value(name=f"{prefix}.odd")
    call = ir.Node(
        SPECIALIZED_DOMAIN,
        name,
        [source, *initializers],
        outputs=[even, odd],
        name=reconstruct.name or name,
    )
    nodes = IrNodes()
    nodes.nodes.append(call)
    w_even, w_odd = _weight_taps(nodes, conv.inputs[1], prefix, c_out, c)  # type: ignore[arg-type]
    bias = list(conv.inputs[2:3])
    z_even = nodes.op(
        "Conv",
        [even, w_even, *bias],
        f"{prefix}.z_even",
        name=conv.name or f"{prefix}.conv_even",
        kernel_shape=[1, 1],
        strides=[stride // 2, 1],
    )
    z_odd = nodes.op(
        "Conv",
        [odd, w_odd],
        f"{prefix}.z_odd",
        name=f"{conv.name or prefix}.odd",
        kernel_shape=[2, 1],
        pads=[1, 0, 0, 0],
        strides=[stride // 2, 1],
    )
    z = nodes.op("Add", [z_even, z_odd], f"{prefix}.z")
    if after is not None:
        z = nodes.op("Relu", [z], f"{prefix}.z_relu")
    shape5 = nodes.ints(f"{prefix}.shape5", [-1, c_out, frames, h, w])
    result = nodes.op("Reshape", [z, shape5], f"{prefix}.out")
    absorbed = [*restoring, reconstruct, relu, conv, *([after] if after is not None else [])]
    ir_replace(graph, absorbed, nodes.nodes, reconstruct, result)


def split_temporal_phases(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every ϕt (R = 2) → ReLU → temporal convolution chain split into even and odd frames
    (module docstring); unchanged if there is none."""
    unchanged = copy_model(model)
    if not has_temporal_reconstruct(model):
        return unchanged  # the full and channel-only buckets
    result = to_ir(model)
    frame_counts = ir_count_frames(result.graph)
    found = []
    for node in result.graph:
        match = _matches(node) if len(node.outputs) == 1 else None
        frames = frame_counts.get(match[1].outputs[0]) if match is not None else None
        if match is not None and frames is not None:
            found.append((node, *match, frames))
    if not found:
        return unchanged
    dropped: set[str | None] = set()
    for index, (reconstruct, relu, conv, stride, frames) in enumerate(found):
        after = ir_sole_consumer(conv.outputs[0], "Relu")
        restored = ir_input_scale(reconstruct.inputs[0])  # type: ignore[arg-type]
        absorbed = [*([restored[2]] if restored else []), reconstruct, relu, conv, *([after] if after else [])]
        dropped.update(n.outputs[0].name for n in absorbed)
        _split(result, index, reconstruct, relu, conv, stride, frames)
    # The recorded shapes of every value it keeps stay valid (shape inference cannot see through the generic
    # functions of the remaining vared2 nodes).
    return from_ir(result, keep_shapes=[v.name for v in model.graph.value_info if v.name not in dropped])
