"""Model-local ONNX functions for the two custom ops (DESIGN.md §3).

Each exported model carries one ``FunctionProto`` per op in domain ``vared2`` (version 1), built from standard
opset-17 operators that TensorRT's ONNX parser supports. ONNX Runtime executes these bodies; TensorRT builds them as
ordinary layers when the plugin is not available (TensorRT < 10.9). A body never sees its caller's static shapes, so
the shape facts it needs come from ``Shape`` nodes, which ONNX Runtime and TensorRT fold into constants. The
formulations were chosen by measurement: docs/plugins.md (``experiments/time_onnx_functions.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, ModelProto, NodeProto, helper, numpy_helper

from . import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT, VERSION

OPSET = 17
OP_NAMES = (TEMPORAL_RECONSTRUCT, CHANNEL_RECONSTRUCT)
# Attributes every node carries so TensorRT's ONNX parser picks the registered plugin over the function.
PLUGIN_ATTRIBUTES = {"plugin_namespace": DOMAIN, "plugin_version": str(VERSION)}


def _const(name: str, values: Sequence[int]) -> NodeProto:
    """A 1-D int64 ``Constant`` (Slice/Unsqueeze axes must be constants for TensorRT)."""
    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name=name)
    return helper.make_node("Constant", [], [name], value=tensor)


def _const_from_attribute(name: str, attribute: str) -> NodeProto:
    """A scalar int64 ``Constant`` whose value is the calling node's integer attribute ``attribute``."""
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(helper.make_attribute_ref("value_int", AttributeProto.INT, ref_attr_name=attribute))
    return node


def _plugin_attribute_protos() -> list[AttributeProto]:
    """Declared with defaults so nodes with or without the plugin attributes are both valid."""
    return [helper.make_attribute(key, value) for key, value in PLUGIN_ATTRIBUTES.items()]


def temporal_reconstruct_function() -> FunctionProto:
    """``TemporalReconstruct(x[N,C,Tc,H,W], scale[R,C], shift[R,C]) -> y[N,C,R*Tc,H,W]``, attribute ``factor``."""
    nodes = [
        _const("axis3", [3]),
        helper.make_node("Unsqueeze", ["x", "axis3"], ["x6"]),  # [N, C, Tc, 1, H, W]
        # [R, C] -> [C, R] -> [C, 1, R, 1, 1]: broadcasts against x6 to [N, C, Tc, R, H, W].
        _const("coef_shape", [0, 1, -1, 1, 1]),
        helper.make_node("Transpose", ["scale"], ["scale_t"], perm=[1, 0]),
        helper.make_node("Reshape", ["scale_t", "coef_shape"], ["a"]),
        helper.make_node("Transpose", ["shift"], ["shift_t"], perm=[1, 0]),
        helper.make_node("Reshape", ["shift_t", "coef_shape"], ["b"]),
        helper.make_node("Mul", ["x6", "a"], ["ax"]),
        helper.make_node("Add", ["ax", "b"], ["y6"]),
        # Output shape [N, C, -1, H, W]: 0 copies N and C from y6, H and W come from x.
        _const("head", [0, 0, -1]),
        helper.make_node("Shape", ["x"], ["hw"], start=3),
        helper.make_node("Concat", ["head", "hw"], ["out_shape"], axis=0),
        helper.make_node("Reshape", ["y6", "out_shape"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN,
        TEMPORAL_RECONSTRUCT,
        inputs=["x", "scale", "shift"],
        outputs=["y"],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", OPSET)],
        attributes=["factor"],
        attribute_protos=_plugin_attribute_protos(),
        doc_string="y[:, c, R*k + j] = scale[j, c] * x[:, c, k] + shift[j, c]  (R = factor)",
    )


def channel_reconstruct_function() -> FunctionProto:
    """``ChannelReconstruct(x[N,Cc,T,H,W], weight[G,1,1,3,3], bias[G]) -> y[N,Cc+G,T,H,W]``, attribute
    ``out_channels`` (= Cc + G).

    One depthwise ``Conv`` with ``group = out_channels`` (an attribute, so the body can name it) over
    ``x[:, k mod Cc]`` for every output channel ``k``: the first ``Cc`` filters are the identity (centre tap 1,
    bias 0), which passes ``x`` through exactly, and the last ``G`` are ``weight``.
    """
    nodes = [
        # idx[k] = k mod Cc for k < out_channels: the computed channels, then the sources of the generated ones.
        helper.make_node("Shape", ["x"], ["cc"], start=1, end=2),
        _const_from_attribute("out", "out_channels"),
        _scalar("zero", 0),
        _scalar("one", 1),
        helper.make_node("Range", ["zero", "out", "one"], ["k"]),
        helper.make_node("Mod", ["k", "cc"], ["idx"]),
        helper.make_node("Gather", ["x", "idx"], ["source"], axis=1),
        # Identity filters [Cc, 1, 1, 3, 3] and zero biases [Cc] in front of the learned ones.
        _const("filter_tail", [1, 1, 3, 3]),
        helper.make_node("Concat", ["cc", "filter_tail"], ["bank_shape"], axis=0),
        # fp32 constants cast to the weights' type, so the body type-checks for fp16 graphs too.
        _float_const("centre32", np.pad(np.ones((1, 1, 1, 1, 1), np.float32), [(0, 0)] * 3 + [(1, 1)] * 2)),
        helper.make_node("CastLike", ["centre32", "weight"], ["centre"]),
        helper.make_node("Expand", ["centre", "bank_shape"], ["identity"]),
        helper.make_node("Concat", ["identity", "weight"], ["filters"], axis=0),
        _float_const("zero_bias32", np.zeros(1, np.float32)),
        helper.make_node("CastLike", ["zero_bias32", "bias"], ["zero_bias"]),
        helper.make_node("Expand", ["zero_bias", "cc"], ["identity_bias"]),
        helper.make_node("Concat", ["identity_bias", "bias"], ["biases"], axis=0),
        _conv_with_group_from("out_channels"),
    ]
    return helper.make_function(
        DOMAIN,
        CHANNEL_RECONSTRUCT,
        inputs=["x", "weight", "bias"],
        outputs=["y"],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", OPSET)],
        attributes=["out_channels"],
        attribute_protos=_plugin_attribute_protos(),
        doc_string="y = concat(x, dwconv3x3(x[:, g mod Cc]) + bias[g] for g < out_channels - Cc)",
    )


def _scalar(name: str, value: int) -> NodeProto:
    """A scalar int64 ``Constant`` (``Range`` takes scalars)."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.int64), name))


def _float_const(name: str, values: np.ndarray) -> NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(values.astype(np.float32), name))


def _conv_with_group_from(attribute: str) -> NodeProto:
    """The depthwise (1, 3, 3) ``Conv``, padding (0, 1, 1), whose ``group`` is the caller's ``attribute``."""
    node = helper.make_node(
        "Conv", ["source", "filters", "biases"], ["y"], kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1]
    )
    node.attribute.append(helper.make_attribute_ref("group", AttributeProto.INT, ref_attr_name=attribute))
    return node


def functions() -> list[FunctionProto]:
    """Both function bodies, in a stable order (TemporalReconstruct, ChannelReconstruct)."""
    return [temporal_reconstruct_function(), channel_reconstruct_function()]


def uses_custom_ops(model: ModelProto) -> bool:
    """True when a node of the main graph is in domain ``vared2``."""
    return any(node.domain == DOMAIN for node in model.graph.node)


def attach_functions(model: ModelProto) -> ModelProto:
    """Append the function bodies and the ``vared2`` opset import when the model uses the ops.

    Edits ``model`` in place and returns it. Existing ``vared2`` functions are replaced, so attaching twice is
    harmless; a ``vared2`` opset import of another version is an error.
    """
    if not isinstance(model, ModelProto):
        raise TypeError(f"attach_functions: expected an onnx.ModelProto, got {type(model).__name__}")
    if not uses_custom_ops(model):
        return model
    unknown = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN} - set(OP_NAMES))
    if unknown:
        raise ValueError(f"attach_functions: unknown {DOMAIN} ops {unknown}; known: {list(OP_NAMES)}")
    for opset in model.opset_import:
        if opset.domain == "" and opset.version != OPSET:
            raise ValueError(f"attach_functions: the model imports opset {opset.version}, the functions need {OPSET}")
        if opset.domain == DOMAIN and opset.version != VERSION:
            raise ValueError(f"attach_functions: the model imports {DOMAIN} version {opset.version}, not {VERSION}")
    if not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend([*kept, *functions()])
    return model


def single_op_model(
    op_type: str,
    input_shapes: Sequence[Sequence[int | str]],
    elem_type: int = onnx.TensorProto.FLOAT,
    **attributes: int | str,
) -> ModelProto:
    """A one-node model running ``vared2::op_type`` (inputs ``x``, then the op's parameter inputs, all of
    ``elem_type``: float32, or float16 for strongly typed fp16 engines).

    Used by tests and the timing script; ``input_shapes`` may name the batch axis with a string.
    """
    if op_type not in OP_NAMES:
        raise ValueError(f"single_op_model: op_type must be one of {list(OP_NAMES)}, got {op_type!r}")
    names = ["x", "scale", "shift"] if op_type == TEMPORAL_RECONSTRUCT else ["x", "weight", "bias"]
    if len(input_shapes) != len(names):
        raise ValueError(f"single_op_model: {op_type} takes {len(names)} input shapes, got {len(input_shapes)}")
    inputs = [
        helper.make_tensor_value_info(name, elem_type, list(shape))
        for name, shape in zip(names, input_shapes, strict=True)
    ]
    x_shape = list(input_shapes[0])
    if len(x_shape) != 5:
        raise ValueError(f"single_op_model: x must be 5-D [N, C, T, H, W], got {x_shape}")
    if op_type == TEMPORAL_RECONSTRUCT:
        tc = x_shape[2]
        x_shape[2] = tc * int(attributes["factor"]) if isinstance(tc, int) else "T_out"
    else:
        x_shape[1] = int(attributes["out_channels"])
    output = helper.make_tensor_value_info("y", elem_type, x_shape)
    node = helper.make_node(op_type, names, ["y"], domain=DOMAIN)
    for key, value in {**attributes, **PLUGIN_ATTRIBUTES}.items():
        node.attribute.append(helper.make_attribute(key, value))
    graph = helper.make_graph([node], f"{op_type}_only", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # opset 17's IR version: readable by ONNX Runtime and TensorRT 8.6+
    return attach_functions(model)
