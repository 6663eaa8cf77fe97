"""Pass: temporal-only 3-D convolutions run as 2-D ones, for ONNX Runtime's CPU kernels (docs/performance.md).

A 3-D ``Conv`` whose kernel and stride are 1 in both spatial axes (the temporal half of every r(2+1)d block, the
second conv of its stem) becomes ``Reshape → 2-D Conv → Reshape`` over the free view ``[N, C, T, H·W]``: the same
sums on ONNX Runtime's 2-D kernels instead of its 3-D im2col path. The weight is a ``Reshape`` of the shared
initializer (folded at load), so the engines still share one ``weights.bin``; a ``ReLU`` right after moves before
the reshape back to 5-D, where ONNX Runtime fuses it into the convolution. Written as onnxscript rewrite rules.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnx import ModelProto
from onnxscript.rewriter import MatchResult, pattern

from .ort_graph import copy_model, from_ir, ir_constant, ir_static_5d, to_ir


class _TemporalConv2d(pattern.RewriteRuleClassBase):
    """``Conv`` over time only [→ ``Relu``] → ``Reshape → 2-D Conv [→ Relu] → Reshape``."""

    def __init__(self, relu: bool) -> None:
        super().__init__(name=f"temporal-conv-2d{'+relu' if relu else ''}")
        self.relu = relu

    def pattern(self, op: Any, x: ir.Value, w: ir.Value) -> ir.Value:
        conv = op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv"])
        return op.Relu(conv) if self.relu else conv

    def check(self, context: Any, x: ir.Value, w: ir.Value, conv: ir.Value, **_: Any) -> MatchResult:  # type: ignore[override]
        """The preconditions, each a reason when the match does not apply."""
        result = MatchResult()
        node = conv.producer()
        weight = ir_constant(w)
        out = conv.shape
        if node is None or node.domain != "" or ir_static_5d(x) is None:
            return result.fail("input not [N, C, T, H, W] with static C, T, H, W", x)
        if weight is None or weight.ndim != 5 or out is None or len(out) != 5 or not isinstance(out[2], int):
            return result.fail("weight not a 5-D constant, or output frames unknown", node)
        kernel, strides, pads = _geometry(node, weight.shape[2:])
        if kernel[1:] != [1, 1] or strides[1:] != [1, 1] or pads[1:3] + pads[4:] != [0, 0, 0, 0]:
            return result.fail("a spatial kernel, stride or padding", node)
        dilations = list(node.attributes.get_ints("dilations", [1, 1, 1]))
        if dilations != [1, 1, 1] or node.attributes.get_int("group", 1) != 1 or "auto_pad" in node.attributes:
            return result.fail("dilated, grouped or auto-padded", node)
        if not self.relu and not conv.is_graph_output() and [n.op_type for n in conv.consumers()] == ["Relu"]:
            return result.fail("its ReLU is absorbed by the other rule", node)
        return result

    def rewrite(self, op: Any, x: ir.Value, w: ir.Value, conv: ir.Value, **_: Any) -> ir.Value:
        node = conv.producer()
        assert node is not None and conv.shape is not None  # checked
        weight = ir_constant(w)
        assert weight is not None
        c, t, h, width = ir_static_5d(x)  # type: ignore[misc]
        c_out, t_out = int(weight.shape[0]), conv.shape[2]
        assert isinstance(t_out, int)  # checked
        kernel, strides, pads = _geometry(node, weight.shape[2:])
        x4 = op.Reshape(x, op.Constant(value_ints=[0, c, t, h * width]))
        w4 = op.Reshape(w, op.Constant(value_ints=[c_out, c, kernel[0], 1]))  # folded by ONNX Runtime at load
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


def _geometry(node: ir.Node, kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """``(kernel_shape, strides, pads)`` of a 3-D ``Conv``, defaults filled in."""
    attributes = node.attributes
    return (
        list(attributes.get_ints("kernel_shape", list(kernel))),
        list(attributes.get_ints("strides", [1, 1, 1])),
        list(attributes.get_ints("pads", [0] * 6)),
    )


RULES = pattern.RewriteRuleSet([_TemporalConv2d.rule(relu=True), _TemporalConv2d.rule(relu=False)])


def temporal_convs_as_2d(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every temporal-only top-level ``Conv`` run as a 2-D one (module docstring);
    unchanged if there is none. Function bodies have no inferred shapes, so only the main graph matches."""
    graph = to_ir(model)
    if RULES.apply_to_model(graph) == 0:
        return copy_model(model)
    return from_ir(graph)
