"""Build-time rewrites of the gate's stem for ONNX Runtime's CPU kernels (docs/performance.md, "The gate").

The gate engine is the stem plus a small head, and the stem is where its time goes: a ``1×7×7`` convolution over
three input channels (ONNX Runtime runs 3-D convolutions as im2col + GEMM, and with three input channels the
im2col matrix is most of the work) and a ``3×1×1`` convolution from the stem's 45 middle channels. Two exact
rewrites, both applied before ``vared2.engines.ort_specialize.specialize``:

* ``pad_conv_pairs``: ``Conv → Relu → Conv`` whose middle channel count is not a multiple of 16 (r2plus1d's stem
  has 45) gets zero filters up to the next multiple, and the second convolution zero weights for them. ReLU(0) is 0
  and a zero weight adds nothing, so the sums are the same; ONNX Runtime then runs the second convolution on its
  blocked NCHWc kernels, which need the input channels in blocks of 16 (8 on AVX2).
* ``stem_over_frames``: when the clip arrives as uint8 ``[N, T, H, W, 3]`` and is transposed, cast and normalised
  straight into a convolution with a temporal kernel, stride and padding of 1/1/0, that convolution treats every
  frame alone. It then runs as a 2-D convolution over the ``N·T`` frames (ONNX Runtime's direct NCHWc kernel for
  few input channels, no im2col): the uint8 transpose puts the channels before the rows instead of first, and one
  float transpose brings the result to ``[N, C, T, H·W]`` for the temporal convolution that follows.

r2plus1d_18 at 8×112×112 on 2 threads: see docs/performance.md for the measured effect.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .ort_specialize import (
    SPECIALIZED_SUFFIX,
    _analyse,
    _attribute,
    _attribute_int,
    _Graph,
    _int64,
    _prune,
    _replace_nodes,
    _sole_consumer,
)

#: ONNX Runtime's widest NCHWc block (AVX-512); a multiple of it is also one of the AVX2 block of 8.
CHANNEL_BLOCK = 16
#: Padding is worth it only while the extra zero filters stay cheap against the faster kernel.
MAX_PADDING_GROWTH = 0.125


def _conv_weight(node: NodeProto, graph: _Graph) -> np.ndarray | None:
    """The constant weight of a plain (ungrouped, undilated) default-domain ``Conv``, else ``None``."""
    if node.op_type != "Conv" or node.domain != "" or len(node.input) < 2:
        return None
    if _attribute_int(node, "group", 1) != 1:
        return None
    weight = graph.constants(node.input[1])
    if weight is None or _attribute(node, "dilations", [1] * (weight.ndim - 2)) != [1] * (weight.ndim - 2):
        return None
    return weight


def _padded(name: str, array: np.ndarray, axis: int, size: int) -> TensorProto:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return numpy_helper.from_array(np.pad(array, widths).astype(np.float32), f"{name}{SPECIALIZED_SUFFIX}.pad")


def pad_conv_pairs(model: ModelProto) -> int:
    """Pad, in place, the middle channels of every ``Conv → Relu → Conv`` chain to a multiple of
    ``CHANNEL_BLOCK`` (zero filters, zero weights; see the module docstring). Returns how many were padded."""
    graph = _analyse(model)
    added: list[TensorProto] = []
    count = 0
    for first in model.graph.node:
        w1 = _conv_weight(first, graph)
        relu = _sole_consumer(graph, first.output[0], "Relu") if w1 is not None else None
        second = _sole_consumer(graph, relu.output[0], "Conv") if relu is not None else None
        if w1 is None or relu is None or second is None or second.input[0] != relu.output[0]:
            continue
        w2 = _conv_weight(second, graph)
        if w2 is None:
            continue
        channels = int(w1.shape[0])
        padded = -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK
        if padded == channels or padded > channels * (1 + MAX_PADDING_GROWTH):
            continue
        bias = graph.constants(first.input[2]) if len(first.input) > 2 and first.input[2] else None
        if len(first.input) > 2 and first.input[2] and bias is None:
            continue
        tensors = [_padded(first.input[1], w1, 0, padded), _padded(second.input[1], w2, 1, padded)]
        first.input[1], second.input[1] = tensors[0].name, tensors[1].name
        if bias is not None:
            tensors.append(_padded(first.input[2], bias, 0, padded))
            first.input[2] = tensors[2].name
        added += tensors
        count += 1
    if added:
        model.graph.initializer.extend(added)
        _prune(model)
        del model.graph.value_info[:]
        onnx.checker.check_model(model)
    return count


def _constant_input(node: NodeProto, graph: _Graph, value: str) -> np.ndarray | None:
    """The constant operand of a binary ``node`` whose other operand is ``value``."""
    if len(node.input) != 2 or value not in node.input:
        return None
    return graph.constants(node.input[1 - list(node.input).index(value)])


def stem_over_frames(model: ModelProto) -> int:
    """Rewrite, in place, the frame-wise first convolution of a gate (see the module docstring); returns 1 if it
    was found and rewritten, else 0."""
    graph = _analyse(model)
    inputs = {i.name for i in model.graph.input}
    for transpose in model.graph.node:
        is_clip_transpose = transpose.op_type == "Transpose" and transpose.input[0] in inputs
        if not is_clip_transpose or _attribute(transpose, "perm", []) != [0, 4, 1, 2, 3]:
            continue
        replacement = _frames_rewrite(transpose, graph)
        if replacement is None:
            continue
        old, new, tensors = replacement
        replaced = {name for node in old for name in node.output}
        nodes: list[NodeProto] = []
        for node in model.graph.node:  # the new nodes go where the last old one was: everything they read exists
            if node.output[0] == old[-1].output[0]:
                nodes += new
            elif not replaced.intersection(node.output):
                nodes.append(node)
        _replace_nodes(model, nodes, tensors)
        return 1
    return 0


def _frames_rewrite(
    transpose: NodeProto, graph: _Graph
) -> tuple[list[NodeProto], list[NodeProto], list[TensorProto]] | None:
    clip_shape = graph.shapes.get(transpose.input[0])
    if clip_shape is None or len(clip_shape) != 5 or any(d is None for d in clip_shape[1:]):
        return None
    t, h, w, c = (int(d) for d in clip_shape[1:])  # type: ignore[arg-type]
    cast = _sole_consumer(graph, transpose.output[0], "Cast")
    mul = _sole_consumer(graph, cast.output[0], "Mul") if cast is not None else None
    add = _sole_consumer(graph, mul.output[0], "Add") if mul is not None else None
    conv = _sole_consumer(graph, add.output[0], "Conv") if add is not None else None
    if cast is None or mul is None or add is None or conv is None or conv.input[0] != add.output[0]:
        return None
    scale, offset = _constant_input(mul, graph, cast.output[0]), _constant_input(add, graph, mul.output[0])
    weight = _conv_weight(conv, graph)
    out_shape = graph.shapes.get(conv.output[0])
    if scale is None or offset is None or weight is None or weight.ndim != 5 or out_shape is None:
        return None
    per_channel = ((1,), (1, c, 1, 1, 1))  # a scalar, or one value per channel of the transposed clip
    if any(np.shape(v) not in per_channel and np.size(v) != 1 for v in (scale, offset)):
        return None
    if len(out_shape) != 5 or None in out_shape[1:]:
        return None
    kernel = _attribute(conv, "kernel_shape", list(weight.shape[2:]))
    strides = _attribute(conv, "strides", [1, 1, 1])
    pads = _attribute(conv, "pads", [0] * 6)
    if kernel[0] != 1 or strides[0] != 1 or pads[0] != 0 or pads[3] != 0:
        return None
    if any(a.name == "auto_pad" for a in conv.attribute):
        return None
    relu = _sole_consumer(graph, conv.output[0], "Relu")  # kept before the transpose, where ORT fuses it
    last = relu if relu is not None else conv
    c_out, h_out, w_out = int(weight.shape[0]), int(out_shape[3]), int(out_shape[4])  # type: ignore[arg-type]
    prefix = f"{conv.output[0]}{SPECIALIZED_SUFFIX}.frames"  # initializers named <value>.ort.<part>: engine-local
    tensors = [
        numpy_helper.from_array(np.asarray(v, np.float32).reshape(1, -1, 1, 1), f"{prefix}_{part}")
        for v, part in ((scale, "scale"), (offset, "offset"))
    ]
    # The last original output keeps its name and shape, so what follows (the temporal conv) is unchanged.
    activation = [helper.make_node("Relu", [f"{prefix}.conv"], [f"{prefix}.y"])] if relu is not None else []
    new = [
        helper.make_node("Transpose", [transpose.input[0]], [f"{prefix}.u8"], perm=[0, 1, 4, 2, 3]),
        helper.make_node("Cast", [f"{prefix}.u8"], [f"{prefix}.f"], to=TensorProto.FLOAT),
        _int64(f"{prefix}.frames_shape", [-1, c, h, w]),
        helper.make_node("Reshape", [f"{prefix}.f", f"{prefix}.frames_shape"], [f"{prefix}.x"]),
        helper.make_node("Mul", [f"{prefix}.x", tensors[0].name], [f"{prefix}.scaled"]),
        helper.make_node("Add", [f"{prefix}.scaled", tensors[1].name], [f"{prefix}.normalised"]),
        _int64(f"{prefix}.wshape", [c_out, c, int(kernel[1]), int(kernel[2])]),
        helper.make_node("Reshape", [conv.input[1], f"{prefix}.wshape"], [f"{prefix}.w"]),
        helper.make_node(
            "Conv",
            [f"{prefix}.normalised", f"{prefix}.w", *conv.input[2:]],
            [f"{prefix}.conv" if relu is not None else f"{prefix}.y"],
            name=conv.name or "stem_over_frames",
            kernel_shape=kernel[1:],
            strides=strides[1:],
            pads=pads[1:3] + pads[4:],
        ),
        *activation,
        _int64(f"{prefix}.by_clip", [-1, t, c_out, h_out * w_out]),
        helper.make_node("Reshape", [f"{prefix}.y", f"{prefix}.by_clip"], [f"{prefix}.ntc"]),
        helper.make_node("Transpose", [f"{prefix}.ntc"], [f"{prefix}.nct"], perm=[0, 2, 1, 3]),
        _int64(f"{prefix}.out_shape", [-1, c_out, t, h_out, w_out]),
        helper.make_node("Reshape", [f"{prefix}.nct", f"{prefix}.out_shape"], [last.output[0]]),
    ]
    return [transpose, cast, mul, add, conv, *([relu] if relu is not None else [])], new, tensors


def stem_for_ort(model: ModelProto) -> ModelProto:
    """A copy of a gate graph with both rewrites applied where they match (``pad_conv_pairs`` first, so the
    frame-wise convolution is built with its padded filters)."""
    result = ModelProto()
    result.CopyFrom(model)
    pad_conv_pairs(result)
    stem_over_frames(result)
    return result
