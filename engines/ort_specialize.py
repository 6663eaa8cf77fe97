"""Bucket pass: the exported ϕt / ϕs nodes as shape- and weight-specialised functions for ONNX Runtime.

The exported ``vared2::TemporalReconstruct`` / ``ChannelReconstruct`` nodes carry generic model-local functions
whose shape arithmetic runs at every call and whose ϕs is one 3-D depthwise ``Conv`` over a ``Gather``. An ONNX
Runtime engine is read only by ONNX Runtime, so each node becomes a function of its own (domain ``vared2.ort``)
with every shape and weight fixed: ϕt a broadcast ``Mul`` + ``Add``; ϕs blocks of 2-D depthwise convolutions over
the free view ``[N, C_c·T, H, W]`` (ONNX Runtime's NCHWc kernels), absorbing the BatchNorm shift ``Add`` and
``ReLU`` after it. A per-channel ``Mul`` before either (``vared2.export.fold``'s restored scale) is absorbed into
the coefficients. Exact up to summation order; nodes whose parameters are not constants are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import FunctionProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from vared2.plugins import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

from .ort_graph import (
    SPECIALIZED_DOMAIN,
    SPECIALIZED_SUFFIX,
    Graph,
    analyse,
    copy_model,
    input_scale,
    int64_constant,
    make_function,
    sole_consumer,
    splice,
    static_5d,
    use_specialized_domain,
)
from .ort_temporal2d import temporal_convs_as_2d


@dataclass
class _Rewrite:
    """One specialised node: the call in the main graph, its function, its new initializers, what it absorbed."""

    node: NodeProto
    function: FunctionProto
    initializers: list[TensorProto] = field(default_factory=list)
    absorbed: list[NodeProto] = field(default_factory=list)


def _temporal(node: NodeProto, index: int, graph: Graph) -> _Rewrite | None:
    dims = static_5d(graph, node.input[0])
    scale, shift = graph.constants(node.input[1]), graph.constants(node.input[2])
    if dims is None or scale is None or shift is None:
        return None
    source, absorbed = node.input[0], []
    restored = input_scale(graph, node.input[0])
    if restored is not None:  # ϕt of r·x is ϕt of x with every scale row times r
        source, ratio, mul = restored
        scale, absorbed = scale * ratio[None, :], [mul]
    c, tc, h, w = dims
    factor = scale.shape[0]
    prefix = f"{node.output[0]}{SPECIALIZED_SUFFIX}"
    a = numpy_helper.from_array(scale.T.reshape(c, 1, factor, 1, 1).astype(np.float32), f"{prefix}.scale")
    b = numpy_helper.from_array(shift.T.reshape(c, 1, factor, 1, 1).astype(np.float32), f"{prefix}.shift")
    body = [
        int64_constant("axis", [3]),
        helper.make_node("Unsqueeze", ["x", "axis"], ["x6"]),  # [N, C, Tc, 1, H, W]
        helper.make_node("Mul", ["x6", "a"], ["ax"]),  # against [C, 1, R, 1, 1]: [N, C, Tc, R, H, W]
        helper.make_node("Add", ["ax", "b"], ["y6"]),
        int64_constant("shape", [-1, c, factor * tc, h, w]),
        helper.make_node("Reshape", ["y6", "shape"], ["y"]),
    ]
    # Shape inference may not see through the generic function; what follows (ϕs) needs this shape.
    graph.shapes[node.output[0]] = [None, c, factor * tc, h, w]
    name = f"{TEMPORAL_RECONSTRUCT}_{index}"
    function = make_function(
        name, ["x", "a", "b"], ["y"], body, f"TemporalReconstruct factor {factor}, x [N,{c},{tc},{h},{w}]"
    )
    call = helper.make_node(name, [source, a.name, b.name], [node.output[0]], domain=SPECIALIZED_DOMAIN)
    call.name = node.name or name
    return _Rewrite(call, function, [a, b], absorbed)


def _channel(node: NodeProto, index: int, graph: Graph) -> _Rewrite | None:
    dims = static_5d(graph, node.input[0])
    weight, bias = graph.constants(node.input[1]), graph.constants(node.input[2])
    if dims is None or weight is None or bias is None:
        return None
    cc, t, h, w = dims
    generated = weight.shape[0]
    out_channels = cc + generated
    prefix = f"{node.output[0]}{SPECIALIZED_SUFFIX}"

    # The exporter's BatchNorm shift (an Add of a per-channel constant) and a ReLU right after it, if present.
    absorbed: list[NodeProto] = []
    shift = np.zeros(out_channels)
    output = node.output[0]
    relu = False
    add = sole_consumer(graph, output, "Add")
    if add is not None:
        other = add.input[1] if add.input[0] == output else add.input[0]
        value = graph.constants(other)
        if (
            value is not None
            and value.size == out_channels
            and value.shape in {(1, out_channels, 1, 1, 1), (out_channels, 1, 1, 1)}
        ):
            shift = value.reshape(-1).astype(np.float64)
            absorbed.append(add)
            output = add.output[0]
            activation = sole_consumer(graph, output, "Relu")
            if activation is not None:
                absorbed.append(activation)
                output = activation.output[0]
                relu = True

    restored = input_scale(graph, node.input[0])
    ratio = np.ones(cc)
    if restored is not None:  # ϕs of r·x: each generated filter times its source's r; the computed channels below
        source_name, ratio, mul = restored
        absorbed.append(mul)
    inputs = ["x"]
    args = [node.input[0] if restored is None else source_name]
    initializers: list[TensorProto] = []

    def depthwise_to_5d(made: str, n: int, output: str) -> str:
        """A depthwise result over the ``[N, n·T, H, W]`` view, ReLU'd if the ReLU was absorbed, back to 5-D."""
        if relu:
            body.append(helper.make_node("Relu", [made], [f"{made}r"]))
            made = f"{made}r"
        shape = f"{output}.view5"
        body.extend([int64_constant(shape, [-1, n, t, h, w]), helper.make_node("Reshape", [made, shape], [output])])
        return output

    def parameter(name: str, array: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array.astype(np.float32)), f"{prefix}.{name}")
        initializers.append(tensor)
        inputs.append(name)
        args.append(tensor.name)
        return name

    body = [int64_constant("view4", [-1, cc * t, h, w]), helper.make_node("Reshape", ["x", "view4"], ["x4"])]
    parts = []
    dw_bias = bias.astype(np.float64) + shift[cc:]
    for block, start in enumerate(range(0, generated, cc)):
        n = min(cc, generated - start)
        source = "x4"
        if n < cc:  # the last block reads the first n computed channels: T·n planes of the view
            body += [
                int64_constant(f"start{block}", [0]),
                int64_constant(f"end{block}", [n * t]),
                int64_constant(f"axes{block}", [1]),
                helper.make_node("Slice", ["x4", f"start{block}", f"end{block}", f"axes{block}"], [f"src{block}"]),
            ]
            source = f"src{block}"
        filters = weight[start : start + n].reshape(n, 1, 3, 3) * ratio[:n].reshape(n, 1, 1, 1)
        filters = np.repeat(filters, t, axis=0)  # plane (c, t) → filter c
        f_name = parameter(f"w{block}", filters)
        b_name = parameter(f"b{block}", np.repeat(dw_bias[start : start + n], t))
        body.append(
            helper.make_node(
                "Conv", [source, f_name, b_name], [f"d{block}"], group=n * t, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            )
        )
        parts.append(depthwise_to_5d(f"d{block}", n, f"g{block}"))

    kept = "x"
    if restored is not None:
        # r·x + shift (and the ReLU) as one depthwise 1×1 convolution over the view the copies already reorder:
        # as many passes as the Add and ReLU it replaces, and the Mul before ϕs is gone.
        w_name = parameter("ratio", np.repeat(ratio, t).reshape(cc * t, 1, 1, 1))
        s_name = parameter("shift", np.repeat(shift[:cc], t))
        body.append(helper.make_node("Conv", ["x4", w_name, s_name], ["dk"], group=cc * t, kernel_shape=[1, 1]))
        kept = depthwise_to_5d("dk", cc, "xk")
    else:
        if np.any(shift[:cc] != 0):
            t_name = parameter("shift", shift[:cc].reshape(1, cc, 1, 1, 1))
            body.append(helper.make_node("Add", ["x", t_name], ["xs"]))
            kept = "xs"
        if relu:
            body.append(helper.make_node("Relu", [kept], ["xr"]))
            kept = "xr"
    body.append(helper.make_node("Concat", [kept, *parts], ["y"], axis=1))

    name = f"{CHANNEL_RECONSTRUCT}_{index}"
    doc = (
        f"ChannelReconstruct x [N,{cc},{t},{h},{w}] -> {out_channels} channels"
        + (", + BatchNorm shift" if absorbed else "")
        + (", ReLU" if relu else "")
    )
    function = make_function(name, inputs, ["y"], body, doc)
    call = helper.make_node(name, args, [output], domain=SPECIALIZED_DOMAIN)
    call.name = node.name or name
    return _Rewrite(call, function, initializers, absorbed)


def specialize_reconstructions(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every ``vared2`` node replaced by a shape- and weight-specialised function (module
    docstring); unchanged if it has none, or none whose shapes and parameters are constants."""
    result = copy_model(model)
    if not any(node.domain == DOMAIN for node in result.graph.node):
        return result
    graph = analyse(result)
    rewrites: dict[int, _Rewrite] = {}
    for position, node in enumerate(result.graph.node):
        make = _MAKERS.get((node.domain, node.op_type))
        rewrite = make(node, len(rewrites), graph) if make is not None else None
        if rewrite is not None:
            rewrites[position] = rewrite
    if not rewrites:
        return result
    absorbed_outputs = {o for r in rewrites.values() for n in r.absorbed for o in n.output}
    nodes = []
    for position, node in enumerate(result.graph.node):
        if position in rewrites:
            nodes.append(rewrites[position].node)
        elif not any(o in absorbed_outputs for o in node.output):
            nodes.append(node)
    result.functions.extend(r.function for r in rewrites.values())
    if not any(node.domain == DOMAIN for node in nodes):
        kept_functions = [f for f in result.functions if f.domain != DOMAIN]
        del result.functions[:]
        result.functions.extend(kept_functions)
        kept_opsets = [o for o in result.opset_import if o.domain != DOMAIN]
        del result.opset_import[:]
        result.opset_import.extend(kept_opsets)
    use_specialized_domain(result)
    # Recorded shapes are stale for the absorbed values; the specialised functions' shapes are inferable.
    splice(result, nodes, [t for r in rewrites.values() for t in r.initializers])
    return result


_MAKERS = {(DOMAIN, TEMPORAL_RECONSTRUCT): _temporal, (DOMAIN, CHANNEL_RECONSTRUCT): _channel}


def specialize(model: ModelProto) -> ModelProto:
    """``specialize_reconstructions`` then ``temporal_convs_as_2d``: what the builder runs on a bucket after the
    frame passes (a shorthand for tests and tools)."""
    return temporal_convs_as_2d(specialize_reconstructions(model))
