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
from onnx import FunctionProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .ort_frames import count_frames, droppable_factor, has_temporal_reconstruct, time_conv
from .ort_graph import (
    SPECIALIZED_DOMAIN,
    SPECIALIZED_SUFFIX,
    Graph,
    analyse,
    attribute_int,
    attribute_ints,
    copy_model,
    input_scale,
    int64_constant,
    make_function,
    sole_consumer,
    splice,
    static_5d,
    use_specialized_domain,
)

PHASES = "TemporalPhases"


def _matches(reconstruct: NodeProto, graph: Graph) -> tuple[NodeProto, NodeProto, int] | None:
    """(the ReLU, the temporal conv, its stride) of a ϕt (R = 2) → ReLU → temporal conv chain, else ``None``."""
    if droppable_factor(reconstruct, graph) != 2 or static_5d(graph, reconstruct.input[0]) is None:
        return None
    relu = sole_consumer(graph, reconstruct.output[0], "Relu")
    conv = sole_consumer(graph, relu.output[0], "Conv") if relu is not None else None
    if relu is None or conv is None or len(conv.input) < 2:
        return None
    time = time_conv(conv, graph)
    weight = graph.constants(conv.input[1])
    spatial_one = (
        weight is not None
        and weight.shape[3:] == (1, 1)
        and attribute_ints(conv, "strides", [1, 1, 1])[1:] == [1, 1]
        and attribute_ints(conv, "pads", [0] * 6) == [1, 0, 0, 1, 0, 0]
        and attribute_ints(conv, "dilations", [1, 1, 1]) == [1, 1, 1]
        and attribute_int(conv, "group", 1) == 1
    )
    if time is None or time.kernel != 3 or time.stride % 2 or not spatial_one:
        return None
    return relu, conv, time.stride


def _weight_taps(weight: str, prefix: str, c_out: int, c: int) -> list[NodeProto]:
    """``{prefix}.w_even`` (the middle tap, ``[C_out, C, 1, 1]``) and ``{prefix}.w_odd`` (the outer two,
    ``[C_out, C, 2, 1]``) of a ``[C_out, C, 3, 1, 1]`` weight, as ``Slice``s of it (folded at load)."""
    return [
        int64_constant(f"{prefix}.mid", [1]),
        int64_constant(f"{prefix}.mid_end", [2]),
        int64_constant(f"{prefix}.axis", [2]),
        helper.make_node(
            "Slice", [weight, f"{prefix}.mid", f"{prefix}.mid_end", f"{prefix}.axis"], [f"{prefix}.w_even5"]
        ),
        int64_constant(f"{prefix}.outer", [0]),
        int64_constant(f"{prefix}.outer_end", [3]),
        int64_constant(f"{prefix}.outer_step", [2]),
        helper.make_node(
            "Slice",
            [weight, f"{prefix}.outer", f"{prefix}.outer_end", f"{prefix}.axis", f"{prefix}.outer_step"],
            [f"{prefix}.w_odd5"],
        ),
        int64_constant(f"{prefix}.w_even_shape", [c_out, c, 1, 1]),
        helper.make_node("Reshape", [f"{prefix}.w_even5", f"{prefix}.w_even_shape"], [f"{prefix}.w_even"]),
        int64_constant(f"{prefix}.w_odd_shape", [c_out, c, 2, 1]),
        helper.make_node("Reshape", [f"{prefix}.w_odd5", f"{prefix}.w_odd_shape"], [f"{prefix}.w_odd"]),
    ]


def _split(
    index: int, reconstruct: NodeProto, relu: NodeProto, conv: NodeProto, stride: int, graph: Graph, frames: int
) -> tuple[list[NodeProto], list[TensorProto], list[NodeProto], FunctionProto]:
    """(nodes, initializers, absorbed nodes, function) replacing ``reconstruct → relu → conv`` (module docstring)."""
    dims = static_5d(graph, reconstruct.input[0])
    assert dims is not None
    c, tc, h, w = dims
    weight = graph.constants(conv.input[1])
    scale, shift = graph.constants(reconstruct.input[1]), graph.constants(reconstruct.input[2])
    assert weight is not None and scale is not None and shift is not None
    c_out = int(weight.shape[0])
    prefix = f"{conv.output[0]}{SPECIALIZED_SUFFIX}.phases"
    source, ratio, restoring = reconstruct.input[0], np.ones(c), []
    restored = input_scale(graph, reconstruct.input[0])
    if restored is not None:  # ϕt of r·P: both phases' depthwise weights times r (vared2.export.fold's ratio)
        source, ratio, mul = restored
        restoring = [mul]
    initializers = [
        numpy_helper.from_array(ratio.reshape(c, 1, 1, 1).astype(np.float32), f"{prefix}.even_w"),
        numpy_helper.from_array(np.zeros(c, np.float32), f"{prefix}.even_b"),
        numpy_helper.from_array((scale[1] * ratio).reshape(c, 1, 1, 1).astype(np.float32), f"{prefix}.odd_w"),
        numpy_helper.from_array(shift[1].astype(np.float32), f"{prefix}.odd_b"),
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
    function = make_function(
        name,
        ["x", "even_w", "even_b", "odd_w", "odd_b"],
        ["even", "odd"],
        body,
        f"ϕt (R = 2) + ReLU as even/odd frames of x [N,{c},{tc},{h},{w}]",
    )
    even, odd = f"{prefix}.even", f"{prefix}.odd"
    call = helper.make_node(name, [source, *(t.name for t in initializers)], [even, odd], domain=SPECIALIZED_DOMAIN)
    call.name = reconstruct.name or name

    after = sole_consumer(graph, conv.output[0], "Relu")
    output = after.output[0] if after is not None else conv.output[0]
    bias = list(conv.input[2:3])
    nodes = [
        call,
        *_weight_taps(conv.input[1], prefix, c_out, c),
        helper.make_node(
            "Conv",
            [even, f"{prefix}.w_even", *bias],
            [f"{prefix}.z_even"],
            kernel_shape=[1, 1],
            strides=[stride // 2, 1],
            name=conv.name or f"{prefix}.conv_even",
        ),
        helper.make_node(
            "Conv",
            [odd, f"{prefix}.w_odd"],
            [f"{prefix}.z_odd"],
            kernel_shape=[2, 1],
            pads=[1, 0, 0, 0],
            strides=[stride // 2, 1],
            name=f"{conv.name or prefix}.odd",
        ),
        helper.make_node("Add", [f"{prefix}.z_even", f"{prefix}.z_odd"], [f"{prefix}.z"]),
    ]
    z = f"{prefix}.z"
    if after is not None:
        nodes.append(helper.make_node("Relu", [z], [f"{prefix}.z_relu"]))
        z = f"{prefix}.z_relu"
    nodes += [
        int64_constant(f"{prefix}.shape5", [-1, c_out, frames, h, w]),
        helper.make_node("Reshape", [z, f"{prefix}.shape5"], [output]),
    ]
    absorbed = [*restoring, reconstruct, relu, conv, *([after] if after is not None else [])]
    return nodes, initializers, absorbed, function


def split_temporal_phases(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every ϕt (R = 2) → ReLU → temporal convolution chain split into even and odd frames
    (module docstring); unchanged if there is none."""
    result = copy_model(model)
    if not has_temporal_reconstruct(result):
        return result  # the full and channel-only buckets
    graph = analyse(result)
    frame_counts = count_frames(result, graph)
    replaced: dict[str, list[NodeProto]] = {}  # by the ϕt node's output: where the replacement goes
    dropped: set[str] = set()
    initializers: list[TensorProto] = []
    for node in result.graph.node:
        found = _matches(node, graph) if len(node.output) == 1 else None
        frames = frame_counts.get(found[1].output[0]) if found is not None else None
        if found is None or frames is None:
            continue
        relu, conv, stride = found
        nodes, weights, absorbed, function = _split(len(replaced), node, relu, conv, stride, graph, frames)
        replaced[node.output[0]] = nodes
        dropped.update(n.output[0] for n in absorbed)
        initializers += weights
        result.functions.append(function)
    if not replaced:
        return result
    order: list[NodeProto] = []
    for node in result.graph.node:
        if node.output and node.output[0] in replaced:
            order += replaced[node.output[0]]
        elif not (node.output and node.output[0] in dropped):
            order.append(node)
    use_specialized_domain(result)
    # The recorded shapes of every value it keeps stay valid (shape inference cannot see through the generic
    # functions of the remaining vared2 nodes).
    splice(result, order, initializers, keep_shapes=[v.name for v in result.graph.value_info if v.name not in dropped])
    return result
