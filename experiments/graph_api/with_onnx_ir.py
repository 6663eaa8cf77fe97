"""Prototype: two of the ONNX Runtime passes written with onnx-ir and onnxscript's rewriter (issue 23 item 1).

``temporal_conv_2d``: pattern → replacement rules (``Relu(Conv)`` and a lone ``Conv``), a condition on shapes and
attributes. ``pad_conv_pairs``: plain onnx-ir graph edits (new initializers, inputs swapped). Compared with the
onnx-graphsurgeon versions in ``with_graphsurgeon.py`` by ``compare.py``; the choice is recorded in docs/design.md.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter import rewrite

CHANNEL_BLOCK = 16
MAX_PADDING_GROWTH = 0.125


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    return list(node.attributes.get_ints(name, default))


def _static_5d(value: ir.Value) -> list[int] | None:
    shape = value.shape
    if shape is None or len(shape) != 5 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return [int(d) for d in shape[1:]]  # type: ignore[arg-type]


class _TemporalConv2d(orp.RewriteRuleClassBase):
    """``Conv`` (spatial kernel and stride 1) [→ ``Relu``] → ``Reshape → 2-D Conv [→ Relu] → Reshape``."""

    def __init__(self, relu: bool) -> None:
        super().__init__(name=f"temporal_conv_2d{'_relu' if relu else ''}")
        self.relu = relu

    def pattern(self, op, x, w):  # type: ignore[no-untyped-def]
        conv = op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv"])
        return op.Relu(conv) if self.relu else conv

    def check(self, context, x: ir.Value, w: ir.Value, conv: ir.Value, **_) -> orp.MatchResult:  # type: ignore[no-untyped-def]
        result = orp.MatchResult()
        node = conv.producer()
        weight = w.const_value
        if _static_5d(x) is None or weight is None or len(weight.shape) != 5 or _static_5d(conv) is None:
            return result.fail("shapes or weight not static")
        kernel = _ints(node, "kernel_shape", list(weight.shape[2:]))
        strides = _ints(node, "strides", [1, 1, 1])
        pads = _ints(node, "pads", [0] * 6)
        if kernel[1:] != [1, 1] or strides[1:] != [1, 1] or pads[1:3] + pads[4:] != [0] * 4:
            return result.fail("not temporal only")
        if _ints(node, "dilations", [1, 1, 1]) != [1, 1, 1] or node.attributes.get_int("group", 1) != 1:
            return result.fail("dilated or grouped")
        if "auto_pad" in node.attributes:
            return result.fail("auto_pad")
        if not self.relu and [u.op_type for u in conv.consumers()] == ["Relu"]:
            return result.fail("left to the rule with the Relu")
        return result

    def rewrite(self, op, x: ir.Value, w: ir.Value, conv: ir.Value, **_):  # type: ignore[no-untyped-def]
        node = conv.producer()
        c, t, h, width = _static_5d(x)  # type: ignore[misc]
        c_out, t_out = int(w.const_value.shape[0]), _static_5d(conv)[1]  # type: ignore[index,union-attr]
        kernel = _ints(node, "kernel_shape", list(w.const_value.shape[2:]))  # type: ignore[union-attr]
        strides, pads = _ints(node, "strides", [1, 1, 1]), _ints(node, "pads", [0] * 6)
        x4 = op.Reshape(x, op.Constant(value_ints=[0, c, t, h * width]))
        w4 = op.Reshape(w, op.Constant(value_ints=[c_out, c, kernel[0], 1]))
        y4 = op.Conv(
            x4,
            w4,
            *node.inputs[2:],
            kernel_shape=[kernel[0], 1],
            strides=[strides[0], 1],
            pads=[pads[0], 0, pads[3], 0],
        )
        if self.relu:
            y4 = op.Relu(y4)
        return op.Reshape(y4, op.Constant(value_ints=[0, c_out, t_out, h, width]))


def temporal_conv_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    ir_model = ir.serde.deserialize_model(model)
    ShapeInferencePass(strict_mode=False)(ir_model)
    rules = orp.RewriteRuleSet([_TemporalConv2d.rule(relu=True), _TemporalConv2d.rule(relu=False)])
    return ir.serde.serialize_model(rewrite(ir_model, rules))


def pad_conv_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    ir_model = ir.serde.deserialize_model(model)
    graph = ir_model.graph
    for first in list(graph):
        if first.op_type != "Conv" or first.domain != "" or first.attributes.get_int("group", 1) != 1:
            continue
        w1 = first.inputs[1].const_value if len(first.inputs) > 1 else None
        relus = first.outputs[0].consumers()
        if w1 is None or len(relus) != 1 or relus[0].op_type != "Relu" or first.outputs[0].is_graph_output():
            continue
        seconds = relus[0].outputs[0].consumers()
        if len(seconds) != 1 or seconds[0].op_type != "Conv" or seconds[0].inputs[0] is not relus[0].outputs[0]:
            continue
        second = seconds[0]
        w2 = second.inputs[1].const_value if second.attributes.get_int("group", 1) == 1 else None
        bias = first.inputs[2] if len(first.inputs) > 2 else None
        if w2 is None or (bias is not None and bias.const_value is None):
            continue
        channels = w1.shape[0]
        padded = -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK
        if padded == channels or padded > channels * (1 + MAX_PADDING_GROWTH):
            continue
        for node, index, axis in ((first, 1, 0), (second, 1, 1), *(((first, 2, 0),) if bias is not None else ())):
            old = node.inputs[index]
            array = old.const_value.numpy()  # type: ignore[union-attr]
            widths = [(0, 0)] * array.ndim
            widths[axis] = (0, padded - array.shape[axis])
            new = ir.Value(name=f"{old.name}.ort.pad", const_value=ir.tensor(np.pad(array, widths).astype(np.float32)))
            new.const_value.name = new.name  # type: ignore[union-attr]
            graph.register_initializer(new)
            node.replace_input_with(index, new)
    ir.passes.common.RemoveUnusedNodesPass()(ir_model)
    return ir.serde.serialize_model(ir_model)
