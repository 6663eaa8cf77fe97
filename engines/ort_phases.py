"""Build-time split of a temporal convolution that reads ϕt's output into its even and odd frames
(docs/performance.md, "Even and odd frames").

In a t-bucket, r(2+1)d's spatial half computes ``P`` on every other frame; ϕt (``R = 2``) rebuilds
``Y[2k] = P[k]`` and ``Y[2k+1] = a·P[k] + b``; a ``ReLU`` follows; then the temporal half (kernel 3, padding 1,
stride ``S``, even) reads ``Y``. As exported that is a broadcast ``Mul`` and ``Add`` writing ``Y`` at twice
``P``'s size, a ``ReLU`` over it, and a reorder of it into ONNX Runtime's blocked layout: four passes over ``2·|P|``.

The temporal convolution's output frame ``k`` reads ``Y[S·k − 1]``, ``Y[S·k]``, ``Y[S·k + 1]``, that is the even
stream ``E = ReLU(P)`` at ``S·k/2`` and the odd stream ``O = ReLU(a·P + b)`` at ``S·k/2 − 1`` and ``S·k/2``. So
``split_temporal_phases`` computes

    E = ReLU(P),  O = ReLU(a·P + b)       two depthwise 1×1 convolutions with fused ReLU over one reorder of P
    Z = Conv(E, W[:, :, 1]) + Conv(O, W[:, :, (0, 2)])   kernels 1 and 2 (padding 1 before), stride S/2

on the 2-D view ``[N, C, T, H·W]`` (ONNX Runtime's blocked kernels; the sum and a following ``ReLU`` stay in the
blocked layout — ONNX Runtime would fuse them into the second convolution if it could prove the two shapes equal,
which the views' ``-1`` batch hides from it, but a ``0`` there, which lets it, measured no faster). Same
products, summed in another order; the weights are ``Slice``s of the shared initializer (folded at load, so the
engines still share one ``weights.bin``). The depthwise pair sits in a
``vared2.ort`` function, so tools that read an engine's top-level ``Conv`` nodes (the bench's convolution-only
ceiling) see only the two halves of the partial convolution. A per-channel ``Mul`` before ϕt (the exporter's
restoring of a reduced bucket's BatchNorm scale, ``vared2.export.fold``) is absorbed into both depthwise
weights.
"""

from __future__ import annotations

import numpy as np
from onnx import FunctionProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .ort_frames import _droppable_factor, _frame_counts, _time_conv, has_temporal_reconstruct
from .ort_specialize import (
    SPECIALIZED_DOMAIN,
    SPECIALIZED_SUFFIX,
    SPECIALIZED_VERSION,
    _analyse,
    _attribute,
    _attribute_int,
    _function,
    _Graph,
    _input_scale,
    _int64,
    _replace_nodes,
    _sole_consumer,
    _static_5d,
)

PHASES = "TemporalPhases"


def _matches(reconstruct: NodeProto, graph: _Graph) -> tuple[NodeProto, NodeProto, int] | None:
    """(the ReLU, the temporal conv, its stride) of a ϕt (R = 2) → ReLU → temporal conv chain, else ``None``."""
    if _droppable_factor(reconstruct, graph) != 2 or _static_5d(graph, reconstruct.input[0]) is None:
        return None
    relu = _sole_consumer(graph, reconstruct.output[0], "Relu")
    conv = _sole_consumer(graph, relu.output[0], "Conv") if relu is not None else None
    if relu is None or conv is None or len(conv.input) < 2:
        return None
    time = _time_conv(conv, graph)
    weight = graph.constants(conv.input[1])
    spatial_one = (
        weight is not None
        and weight.shape[3:] == (1, 1)
        and _attribute(conv, "strides", [1, 1, 1])[1:] == [1, 1]
        and _attribute(conv, "pads", [0] * 6) == [1, 0, 0, 1, 0, 0]
        and _attribute(conv, "dilations", [1, 1, 1]) == [1, 1, 1]
        and _attribute_int(conv, "group", 1) == 1
    )
    if time is None or time.kernel != 3 or time.stride % 2 or not spatial_one:
        return None
    return relu, conv, time.stride


def _weight_taps(weight: str, prefix: str, c_out: int, c: int) -> list[NodeProto]:
    """``{prefix}.w_even`` (the middle tap, ``[C_out, C, 1, 1]``) and ``{prefix}.w_odd`` (the outer two,
    ``[C_out, C, 2, 1]``) of a ``[C_out, C, 3, 1, 1]`` weight, as ``Slice``s of it (folded at load)."""
    return [
        _int64(f"{prefix}.mid", [1]),
        _int64(f"{prefix}.mid_end", [2]),
        _int64(f"{prefix}.axis", [2]),
        helper.make_node(
            "Slice", [weight, f"{prefix}.mid", f"{prefix}.mid_end", f"{prefix}.axis"], [f"{prefix}.w_even5"]
        ),
        _int64(f"{prefix}.outer", [0]),
        _int64(f"{prefix}.outer_end", [3]),
        _int64(f"{prefix}.outer_step", [2]),
        helper.make_node(
            "Slice",
            [weight, f"{prefix}.outer", f"{prefix}.outer_end", f"{prefix}.axis", f"{prefix}.outer_step"],
            [f"{prefix}.w_odd5"],
        ),
        _int64(f"{prefix}.w_even_shape", [c_out, c, 1, 1]),
        helper.make_node("Reshape", [f"{prefix}.w_even5", f"{prefix}.w_even_shape"], [f"{prefix}.w_even"]),
        _int64(f"{prefix}.w_odd_shape", [c_out, c, 2, 1]),
        helper.make_node("Reshape", [f"{prefix}.w_odd5", f"{prefix}.w_odd_shape"], [f"{prefix}.w_odd"]),
    ]


def _split(
    index: int, reconstruct: NodeProto, relu: NodeProto, conv: NodeProto, stride: int, graph: _Graph, frames: int
) -> tuple[list[NodeProto], list[TensorProto], list[NodeProto], FunctionProto]:
    """(nodes, initializers, absorbed nodes, function) replacing ``reconstruct → relu → conv`` (module docstring)."""
    dims = _static_5d(graph, reconstruct.input[0])
    assert dims is not None
    c, tc, h, w = dims
    weight = graph.constants(conv.input[1])
    scale, shift = graph.constants(reconstruct.input[1]), graph.constants(reconstruct.input[2])
    assert weight is not None and scale is not None and shift is not None
    c_out = int(weight.shape[0])
    prefix = f"{conv.output[0]}{SPECIALIZED_SUFFIX}.phases"
    source, ratio, restoring = reconstruct.input[0], np.ones(c), []
    restored = _input_scale(graph, reconstruct.input[0])
    if restored is not None:  # ϕt of r·P: both phases' depthwise weights times r (vared2.export.fold's ratio)
        source, ratio, mul = restored
        restoring = [mul]
    initializers = [
        numpy_helper.from_array(ratio.reshape(c, 1, 1, 1).astype(np.float32), f"{prefix}.even_w"),
        numpy_helper.from_array(np.zeros(c, np.float32), f"{prefix}.even_b"),
        numpy_helper.from_array((scale[1] * ratio).reshape(c, 1, 1, 1).astype(np.float32), f"{prefix}.odd_w"),
        numpy_helper.from_array(shift[1].astype(np.float32), f"{prefix}.odd_b"),
    ]
    body = [_int64("view4", [-1, c, tc, h * w]), helper.make_node("Reshape", ["x", "view4"], ["x4"])]
    for phase in ("even", "odd"):
        body += [
            helper.make_node(
                "Conv", ["x4", f"{phase}_w", f"{phase}_b"], [f"{phase}_lin"], group=c, kernel_shape=[1, 1]
            ),
            helper.make_node("Relu", [f"{phase}_lin"], [phase]),
        ]
    name = f"{PHASES}_{index}"
    function = _function(
        name,
        ["x", "even_w", "even_b", "odd_w", "odd_b"],
        ["even", "odd"],
        body,
        f"ϕt (R = 2) + ReLU as even/odd frames of x [N,{c},{tc},{h},{w}]",
    )
    even, odd = f"{prefix}.even", f"{prefix}.odd"
    call = helper.make_node(name, [source, *(t.name for t in initializers)], [even, odd], domain=SPECIALIZED_DOMAIN)
    call.name = reconstruct.name or name

    after = _sole_consumer(graph, conv.output[0], "Relu")
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
        _int64(f"{prefix}.shape5", [-1, c_out, frames, h, w]),
        helper.make_node("Reshape", [z, f"{prefix}.shape5"], [output]),
    ]
    absorbed = [*restoring, reconstruct, relu, conv, *([after] if after is not None else [])]
    return nodes, initializers, absorbed, function


def split_temporal_phases(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every ϕt (R = 2) → ReLU → temporal convolution chain split into even and odd frames
    (module docstring); unchanged if there is none."""
    result = ModelProto()
    result.CopyFrom(model)
    if not has_temporal_reconstruct(result):
        return result  # the full and channel-only buckets
    graph = _analyse(result)
    frame_counts = _frame_counts(result, graph)
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
    if not any(o.domain == SPECIALIZED_DOMAIN for o in result.opset_import):
        result.opset_import.append(helper.make_opsetid(SPECIALIZED_DOMAIN, SPECIALIZED_VERSION))
    # Keep the other recorded shapes: the specialisation that follows needs them past the generic functions.
    kept_info = [v for v in result.graph.value_info if v.name not in dropped]
    _replace_nodes(result, order, initializers)
    result.graph.value_info.extend(kept_info)
    return result
