"""The pattern the gate's stem passes start from: a uint8 clip normalised straight into a frame-wise convolution.

An exported gate reads ``clip`` uint8 ``[N, T, H, W, 3]``, transposes it to ``[N, 3, T, H, W]``, casts, scales and
shifts it and feeds a convolution. When that convolution's temporal kernel, stride and padding are 1/1/0 (r(2+1)d's
``1×7×7`` stem) it treats every frame alone and can run as a 2-D one; how the frames are laid out for that is
``ort_stem``'s and ``ort_stacked``'s business. This module only finds the pattern (``match_frame_conv``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from .ort_graph import Graph, attribute_int, attribute_ints, int64_constant, sole_consumer


def conv_weight(node: NodeProto, graph: Graph) -> np.ndarray | None:
    """The constant weight of a plain (ungrouped, undilated) default-domain ``Conv``, else ``None``."""
    if node.op_type != "Conv" or node.domain != "" or len(node.input) < 2:
        return None
    if attribute_int(node, "group", 1) != 1:
        return None
    weight = graph.constants(node.input[1])
    if weight is None or attribute_ints(node, "dilations", [1] * (weight.ndim - 2)) != [1] * (weight.ndim - 2):
        return None
    return weight


def activated(relu: NodeProto | None, value: str) -> list[NodeProto]:
    """The ReLU a rewritten convolution keeps (ONNX Runtime fuses it): ``<value>.pre`` → ``value``, if ``relu``."""
    return [helper.make_node("Relu", [f"{value}.pre"], [value])] if relu is not None else []


def _constant_input(node: NodeProto, graph: Graph, value: str) -> np.ndarray | None:
    """The constant operand of a binary ``node`` whose other operand is ``value``."""
    if len(node.input) != 2 or value not in node.input:
        return None
    return graph.constants(node.input[1 - list(node.input).index(value)])


@dataclass(frozen=True)
class FrameConv:
    """A matched ``Transpose → Cast → Mul → Add → Conv(1×kh×kw) [→ Relu]`` chain and what a rewrite needs of it."""

    transpose: NodeProto
    cast: NodeProto
    mul: NodeProto
    add: NodeProto
    conv: NodeProto
    relu: NodeProto | None
    clip: tuple[int, int, int, int]  # T, H, W, C of the uint8 clip
    scale: np.ndarray
    offset: np.ndarray
    kernel: list[int]  # [1, kh, kw]
    strides: list[int]  # [1, sh, sw]
    pads: list[int]  # [0, top, left, 0, bottom, right]
    out: tuple[int, int, int]  # C, H, W of the convolution's output

    @property
    def nodes(self) -> list[NodeProto]:
        """The matched nodes, in graph order."""
        chain = [self.transpose, self.cast, self.mul, self.add, self.conv]
        return chain + ([self.relu] if self.relu is not None else [])

    def normalise(self, value: str, rank: int, prefix: str) -> tuple[list[NodeProto], list[TensorProto]]:
        """The checkpoint's normalisation of the float clip ``value`` (channels on axis 1 of ``rank`` axes) into
        ``<prefix>.normalised``; the scale and offset become engine-local initializers ``<prefix>_scale/_offset``."""
        tensors = [
            numpy_helper.from_array(np.asarray(v, np.float32).reshape(1, -1, *[1] * (rank - 2)), f"{prefix}_{part}")
            for v, part in ((self.scale, "scale"), (self.offset, "offset"))
        ]
        nodes = [
            helper.make_node("Mul", [value, tensors[0].name], [f"{prefix}.scaled"]),
            helper.make_node("Add", [f"{prefix}.scaled", tensors[1].name], [f"{prefix}.normalised"]),
        ]
        return nodes, tensors

    def as_2d(self, x: str, pads: list[int], prefix: str) -> list[NodeProto]:
        """The convolution (and its ReLU) as a 2-D one over ``x`` with ``pads`` (top, left, bottom, right), writing
        ``<prefix>.y``; the weight stays the shared initializer, reshaped (ONNX Runtime folds that at load)."""
        y = f"{prefix}.y"
        return [
            int64_constant(f"{prefix}.wshape", [self.out[0], self.clip[3], *self.kernel[1:]]),
            helper.make_node("Reshape", [self.conv.input[1], f"{prefix}.wshape"], [f"{prefix}.w"]),
            helper.make_node(
                "Conv",
                [x, f"{prefix}.w", *self.conv.input[2:]],
                [f"{y}.pre" if self.relu is not None else y],
                name=self.conv.name or "stem_over_frames",
                kernel_shape=self.kernel[1:],
                strides=self.strides[1:],
                pads=pads,
            ),
            *activated(self.relu, y),
        ]


def match_frame_conv(transpose: NodeProto, graph: Graph) -> FrameConv | None:
    """The frame-wise stem convolution a ``Transpose`` of the uint8 clip (a graph input) leads to, or ``None`` if
    the pattern does not hold."""
    if transpose.op_type != "Transpose" or attribute_ints(transpose, "perm", []) != [0, 4, 1, 2, 3]:
        return None
    clip_shape = graph.shapes.get(transpose.input[0])
    if clip_shape is None or len(clip_shape) != 5 or any(d is None for d in clip_shape[1:]):
        return None
    t, h, w, c = (int(d) for d in clip_shape[1:])  # type: ignore[arg-type]
    cast = sole_consumer(graph, transpose.output[0], "Cast")
    mul = sole_consumer(graph, cast.output[0], "Mul") if cast is not None else None
    add = sole_consumer(graph, mul.output[0], "Add") if mul is not None else None
    conv = sole_consumer(graph, add.output[0], "Conv") if add is not None else None
    if cast is None or mul is None or add is None or conv is None or conv.input[0] != add.output[0]:
        return None
    scale, offset = _constant_input(mul, graph, cast.output[0]), _constant_input(add, graph, mul.output[0])
    weight = conv_weight(conv, graph)
    out_shape = graph.shapes.get(conv.output[0])
    if scale is None or offset is None or weight is None or weight.ndim != 5 or out_shape is None:
        return None
    per_channel = ((1,), (1, c, 1, 1, 1))  # a scalar, or one value per channel of the transposed clip
    if any(np.shape(v) not in per_channel and np.size(v) != 1 for v in (scale, offset)):
        return None
    if len(out_shape) != 5 or None in out_shape[1:]:
        return None
    kernel = attribute_ints(conv, "kernel_shape", list(weight.shape[2:]))
    strides = attribute_ints(conv, "strides", [1, 1, 1])
    pads = attribute_ints(conv, "pads", [0] * 6)
    if kernel[0] != 1 or strides[0] != 1 or pads[0] != 0 or pads[3] != 0:
        return None
    if any(a.name == "auto_pad" for a in conv.attribute):
        return None
    relu = sole_consumer(graph, conv.output[0], "Relu")  # fused into the convolution by ONNX Runtime
    out = (int(weight.shape[0]), int(out_shape[3]), int(out_shape[4]))  # type: ignore[arg-type]
    return FrameConv(transpose, cast, mul, add, conv, relu, (t, h, w, c), scale, offset, kernel, strides, pads, out)
