"""Bucket pass: the exported ϕt / ϕs nodes as shape- and weight-specialised functions for ONNX Runtime.

The exported ``vared2::TemporalReconstruct`` / ``ChannelReconstruct`` nodes carry generic model-local functions
whose shape arithmetic runs at every call and whose ϕs is one 3-D depthwise ``Conv`` over a ``Gather``. An ONNX
Runtime engine is read only by ONNX Runtime, so each node becomes a function of its own (domain ``vared2.ort``)
with every shape and weight fixed: ϕt a broadcast ``Mul`` + ``Add``; ϕs blocks of 2-D depthwise convolutions over
the free view ``[N, C_c·T, H, W]`` (ONNX Runtime's NCHWc kernels), absorbing the BatchNorm shift ``Add`` and
``ReLU`` after it. A per-channel ``Mul`` before either (``vared2.export.fold``'s restored scale) is absorbed into
the coefficients. Exact up to summation order; nodes whose parameters are not constants are left as they are.
Written with onnx-ir.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import ModelProto, helper

from vared2.plugins import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

from .ort_graph import (
    SPECIALIZED_DOMAIN,
    SPECIALIZED_SUFFIX,
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
from .ort_temporal2d import temporal_convs_as_2d


def _call(model: ir.Model, node: ir.Node, name: str, args: list[ir.Value], old: list[ir.Node]) -> ir.Value:
    """Replace ``old`` (``node`` among them, the last one's output the result) by one call of the function
    ``name`` on ``args`` where ``node`` was; the call's output."""
    output = ir.Value(name=f"{name}.out")
    call = ir.Node(SPECIALIZED_DOMAIN, name, args, outputs=[output], name=node.name or name)
    ir_replace(model.graph, old, [call], node, output)
    return output


def _operands(
    node: ir.Node,
) -> tuple[ir.Value, tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """``(x, its static (C, T, H, W), the two constant parameters)`` of a ``vared2`` node, else ``None``."""
    x = node.inputs[0]
    dims = ir_static_5d(x) if x is not None else None
    first, second = ir_constant(node.inputs[1]), ir_constant(node.inputs[2])
    if x is None or dims is None or first is None or second is None:
        return None
    return x, dims, first, second


def _temporal(model: ir.Model, node: ir.Node, index: int) -> bool:
    operands = _operands(node)
    if operands is None:
        return False
    x, dims, scale, shift = operands
    source, absorbed = x, []
    restored = ir_input_scale(x)
    if restored is not None:  # ϕt of r·x is ϕt of x with every scale row times r
        source, ratio, mul = restored
        scale, absorbed = scale * ratio[None, :], [mul]
    c, tc, h, w = dims
    factor = scale.shape[0]
    prefix = f"{node.outputs[0].name}{SPECIALIZED_SUFFIX}"
    a = ir_initializer(model.graph, f"{prefix}.scale", scale.T.reshape(c, 1, factor, 1, 1).astype(np.float32))
    b = ir_initializer(model.graph, f"{prefix}.shift", shift.T.reshape(c, 1, factor, 1, 1).astype(np.float32))
    body = [
        int64_constant("axis", [3]),
        helper.make_node("Unsqueeze", ["x", "axis"], ["x6"]),  # [N, C, Tc, 1, H, W]
        helper.make_node("Mul", ["x6", "a"], ["ax"]),  # against [C, 1, R, 1, 1]: [N, C, Tc, R, H, W]
        helper.make_node("Add", ["ax", "b"], ["y6"]),
        int64_constant("shape", [-1, c, factor * tc, h, w]),
        helper.make_node("Reshape", ["y6", "shape"], ["y"]),
    ]
    name = f"{TEMPORAL_RECONSTRUCT}_{index}"
    ir_add_function(
        model,
        make_function(
            name, ["x", "a", "b"], ["y"], body, f"TemporalReconstruct factor {factor}, x [N,{c},{tc},{h},{w}]"
        ),
    )
    output = _call(model, node, name, [source, a, b], [*absorbed, node])
    # Shape inference may not see through the generic function; what follows (ϕs) needs this shape.
    output.shape = ir.Shape([None, c, factor * tc, h, w])
    return True


def _channel(model: ir.Model, node: ir.Node, index: int) -> bool:
    operands = _operands(node)
    if operands is None:
        return False
    x, dims, weight, bias = operands
    cc, t, h, w = dims
    generated = weight.shape[0]
    out_channels = cc + generated
    prefix = f"{node.outputs[0].name}{SPECIALIZED_SUFFIX}"

    # The exporter's BatchNorm shift (an Add of a per-channel constant) and a ReLU right after it, if present.
    after: list[ir.Node] = []
    shift = np.zeros(out_channels)
    output = node.outputs[0]
    relu = False
    add = ir_sole_consumer(output, "Add")
    if add is not None:
        other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
        value = ir_constant(other)
        if (
            value is not None
            and value.size == out_channels
            and value.shape in {(1, out_channels, 1, 1, 1), (out_channels, 1, 1, 1)}
        ):
            shift = value.reshape(-1).astype(np.float64)
            after.append(add)
            output = add.outputs[0]
            activation = ir_sole_consumer(output, "Relu")
            if activation is not None:
                after.append(activation)
                output = activation.outputs[0]
                relu = True

    restored = ir_input_scale(x)
    ratio = np.ones(cc)
    before: list[ir.Node] = []
    source_value = x
    if restored is not None:  # ϕs of r·x: each generated filter times its source's r; the computed channels below
        source_value, ratio, mul = restored
        before.append(mul)
    inputs = ["x"]
    args = [source_value]

    def depthwise_to_5d(made: str, n: int, output: str) -> str:
        """A depthwise result over the ``[N, n·T, H, W]`` view, ReLU'd if the ReLU was absorbed, back to 5-D."""
        if relu:
            body.append(helper.make_node("Relu", [made], [f"{made}r"]))
            made = f"{made}r"
        shape = f"{output}.view5"
        body.extend([int64_constant(shape, [-1, n, t, h, w]), helper.make_node("Reshape", [made, shape], [output])])
        return output

    def parameter(name: str, array: np.ndarray) -> str:
        args.append(ir_initializer(model.graph, f"{prefix}.{name}", np.ascontiguousarray(array.astype(np.float32))))
        inputs.append(name)
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
        + (", + BatchNorm shift" if after or before else "")
        + (", ReLU" if relu else "")
    )
    ir_add_function(model, make_function(name, inputs, ["y"], body, doc))
    _call(model, node, name, args, [*before, node, *after])
    return True


def specialize_reconstructions(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every ``vared2`` node replaced by a shape- and weight-specialised function (module
    docstring); unchanged if it has none, or none whose shapes and parameters are constants."""
    unchanged = copy_model(model)
    if not any(node.domain == DOMAIN for node in model.graph.node):
        return unchanged
    result = to_ir(model)
    rewrites = 0
    for node in list(result.graph):
        make = _MAKERS.get((node.domain, node.op_type))
        if make is not None and make(result, node, rewrites):
            rewrites += 1
    if not rewrites:
        return unchanged
    if not any(node.domain == DOMAIN for node in result.graph):
        for key in [k for k, function in result.functions.items() if function.domain == DOMAIN]:
            del result.functions[key]
        result.opset_imports.pop(DOMAIN, None)
    # Recorded shapes are stale for the absorbed values; the specialised functions' shapes are inferable.
    return from_ir(result)


_MAKERS = {(DOMAIN, TEMPORAL_RECONSTRUCT): _temporal, (DOMAIN, CHANNEL_RECONSTRUCT): _channel}


def specialize(model: ModelProto) -> ModelProto:
    """``specialize_reconstructions`` then ``temporal_convs_as_2d``: what the builder runs on a bucket after the
    frame passes (a shorthand for tests and tools)."""
    return temporal_convs_as_2d(specialize_reconstructions(model))
