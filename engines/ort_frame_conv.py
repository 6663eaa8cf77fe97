"""The pattern the gate's stem passes start from: a uint8 clip normalised straight into a frame-wise convolution.

An exported gate reads ``clip`` uint8 ``[N, T, H, W, 3]``, transposes it to ``[N, 3, T, H, W]``, casts, scales and
shifts it and feeds a convolution. When that convolution's temporal kernel, stride and padding are 1/1/0 (r(2+1)d's
``1×7×7`` stem) it treats every frame alone and can run as a 2-D one; how the frames are laid out for that is
``ort_stem``'s and ``ort_stacked``'s business. This module only finds the pattern (``match_frame_conv``), in onnx-ir.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .ort_graph import IrNodes, ir_constant, ir_initializer, ir_sole_consumer
from .ort_pad import ir_conv_weight


def activated(nodes: IrNodes, relu: ir.Node | None, value: ir.Value, name: str) -> ir.Value:
    """The ReLU a rewritten convolution keeps (ONNX Runtime fuses it): ``value`` → ``name``, if ``relu``."""
    return nodes.op("Relu", [value], name) if relu is not None else value


def _constant_input(node: ir.Node, value: ir.Value) -> np.ndarray | None:
    """The constant operand of a binary ``node`` whose other operand is ``value``."""
    if len(node.inputs) != 2 or value not in node.inputs:
        return None
    return ir_constant(node.inputs[1 - list(node.inputs).index(value)])


def _static(shape: ir.Shape | None) -> list[int] | None:
    """The dims of a 5-D ``shape`` whose axes other than the batch are static, else ``None``."""
    if shape is None or len(shape) != 5 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return [int(d) for d in shape[1:]]  # type: ignore[arg-type]


@dataclass(frozen=True)
class FrameConv:
    """A matched ``Transpose → Cast → Mul → Add → Conv(1×kh×kw) [→ Relu]`` chain and what a rewrite needs of it."""

    transpose: ir.Node
    cast: ir.Node
    mul: ir.Node
    add: ir.Node
    conv: ir.Node
    relu: ir.Node | None
    clip: tuple[int, int, int, int]  # T, H, W, C of the uint8 clip
    scale: np.ndarray
    offset: np.ndarray
    kernel: list[int]  # [1, kh, kw]
    strides: list[int]  # [1, sh, sw]
    pads: list[int]  # [0, top, left, 0, bottom, right]
    out: tuple[int, int, int]  # C, H, W of the convolution's output

    @property
    def nodes(self) -> list[ir.Node]:
        """The matched nodes, in graph order."""
        chain = [self.transpose, self.cast, self.mul, self.add, self.conv]
        return chain + ([self.relu] if self.relu is not None else [])

    def normalise(self, graph: ir.Graph, nodes: IrNodes, value: ir.Value, rank: int, prefix: str) -> ir.Value:
        """The checkpoint's normalisation of the float clip ``value`` (channels on axis 1 of ``rank`` axes) into
        ``<prefix>.normalised``; the scale and offset become engine-local initializers ``<prefix>_scale/_offset``."""
        scale, offset = (
            ir_initializer(graph, f"{prefix}_{part}", np.asarray(v, np.float32).reshape(1, -1, *[1] * (rank - 2)))
            for v, part in ((self.scale, "scale"), (self.offset, "offset"))
        )
        scaled = nodes.op("Mul", [value, scale], f"{prefix}.scaled")
        return nodes.op("Add", [scaled, offset], f"{prefix}.normalised")

    def as_2d(self, nodes: IrNodes, x: ir.Value, pads: list[int], prefix: str) -> ir.Value:
        """The convolution (and its ReLU) as a 2-D one over ``x`` with ``pads`` (top, left, bottom, right), writing
        ``<prefix>.y``; the weight stays the shared initializer, reshaped (ONNX Runtime folds that at load)."""
        y = f"{prefix}.y"
        wshape = nodes.ints(f"{prefix}.wshape", [self.out[0], self.clip[3], *self.kernel[1:]])
        w = nodes.op("Reshape", [self.conv.inputs[1], wshape], f"{prefix}.w")
        conv = nodes.op(
            "Conv",
            [x, w, *self.conv.inputs[2:]],
            f"{y}.pre" if self.relu is not None else y,
            name=self.conv.name or "stem_over_frames",
            kernel_shape=self.kernel[1:],
            strides=self.strides[1:],
            pads=pads,
        )
        return activated(nodes, self.relu, conv, y)


def match_frame_conv(transpose: ir.Node) -> FrameConv | None:
    """The frame-wise stem convolution a ``Transpose`` of the uint8 clip (a graph input) leads to, or ``None`` if
    the pattern does not hold."""
    if transpose.op_type != "Transpose" or list(transpose.attributes.get_ints("perm", [])) != [0, 4, 1, 2, 3]:
        return None
    clip_shape = _static(transpose.inputs[0].shape) if transpose.inputs[0] is not None else None
    if clip_shape is None:
        return None
    t, h, w, c = clip_shape
    cast = ir_sole_consumer(transpose.outputs[0], "Cast")
    mul = ir_sole_consumer(cast.outputs[0], "Mul") if cast is not None else None
    add = ir_sole_consumer(mul.outputs[0], "Add") if mul is not None else None
    conv = ir_sole_consumer(add.outputs[0], "Conv") if add is not None else None
    if cast is None or mul is None or add is None or conv is None or conv.inputs[0] is not add.outputs[0]:
        return None
    scale, offset = _constant_input(mul, cast.outputs[0]), _constant_input(add, mul.outputs[0])
    weight = ir_conv_weight(conv)
    out_shape = _static(conv.outputs[0].shape)
    if scale is None or offset is None or weight is None or weight.ndim != 5 or out_shape is None:
        return None
    per_channel = ((1,), (1, c, 1, 1, 1))  # a scalar, or one value per channel of the transposed clip
    if any(np.shape(v) not in per_channel and np.size(v) != 1 for v in (scale, offset)):
        return None
    attributes = conv.attributes
    kernel = list(attributes.get_ints("kernel_shape", list(weight.shape[2:])))
    strides = list(attributes.get_ints("strides", [1, 1, 1]))
    pads = list(attributes.get_ints("pads", [0] * 6))
    if kernel[0] != 1 or strides[0] != 1 or pads[0] != 0 or pads[3] != 0 or "auto_pad" in attributes:
        return None
    relu = ir_sole_consumer(conv.outputs[0], "Relu")  # fused into the convolution by ONNX Runtime
    out = (int(weight.shape[0]), out_shape[2], out_shape[3])
    return FrameConv(transpose, cast, mul, add, conv, relu, (t, h, w, c), scale, offset, kernel, strides, pads, out)
