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
  straight into a convolution with a temporal kernel, stride and padding of 1/1/0 (``ort_frame_conv``), that
  convolution treats every frame alone and runs as a 2-D one (ONNX Runtime's direct NCHWc kernel for few input
  channels, no im2col). Where few rows go unused, on frames stacked along the rows, the temporal convolution after
  it dilated on the same tensor (``ort_stacked``); otherwise over the ``N·T`` frames as a batch — the uint8
  transpose puts the channels before the rows instead of first — and one float transpose brings the result to
  ``[N, C, T, H, W]`` for the temporal convolution that follows.

r2plus1d_18 at 8×112×112 on 2 threads: see docs/performance.md for the measured effect.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .ort_frame_conv import FrameConv, conv_weight, match_frame_conv
from .ort_specialize import (
    SPECIALIZED_SUFFIX,
    _analyse,
    _int64,
    _prune,
    _replace_nodes,
    _sole_consumer,
)
from .ort_stacked import MAX_UNUSED_ROWS, stack_frames

#: ONNX Runtime's widest NCHWc block (AVX-512); a multiple of it is also one of the AVX2 block of 8.
CHANNEL_BLOCK = 16
#: Padding is worth it only while the extra zero filters stay cheap against the faster kernel.
MAX_PADDING_GROWTH = 0.125


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
        w1 = conv_weight(first, graph)
        relu = _sole_consumer(graph, first.output[0], "Relu") if w1 is not None else None
        second = _sole_consumer(graph, relu.output[0], "Conv") if relu is not None else None
        if w1 is None or relu is None or second is None or second.input[0] != relu.output[0]:
            continue
        w2 = conv_weight(second, graph)
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


def stem_over_frames(model: ModelProto, max_unused_rows: float = MAX_UNUSED_ROWS) -> int:
    """Rewrite, in place, the frame-wise first convolution of a gate (see the module docstring): on stacked frames
    while at most ``max_unused_rows`` of their rows go unused (``ort_stacked``), else over the frames as a batch.
    Returns 1 if rewritten, else 0."""
    graph = _analyse(model)
    inputs = {i.name for i in model.graph.input}
    for transpose in model.graph.node:
        stem = match_frame_conv(transpose, graph) if transpose.input and transpose.input[0] in inputs else None
        if stem is None:
            continue
        prefix = f"{stem.conv.output[0]}{SPECIALIZED_SUFFIX}.frames"  # initializers <value>.ort.<part>: engine-local
        old, new, tensors = stack_frames(stem, graph, prefix, max_unused_rows) or _over_batched_frames(stem, prefix)
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


def _over_batched_frames(stem: FrameConv, prefix: str) -> tuple[list[NodeProto], list[NodeProto], list[TensorProto]]:
    """``(replaced nodes, new nodes, new initializers)`` running ``stem`` over the ``N·T`` frames as a batch, with
    one transpose of its output back to ``[N, C, T, H, W]``."""
    t, h, w, c = stem.clip
    c_out, h_out, w_out = stem.out
    pads = stem.pads
    normalise, tensors = stem.normalise(f"{prefix}.x", 4, prefix)
    y = f"{prefix}.y"
    new = [
        helper.make_node("Transpose", [stem.transpose.input[0]], [f"{prefix}.u8"], perm=[0, 1, 4, 2, 3]),
        helper.make_node("Cast", [f"{prefix}.u8"], [f"{prefix}.f"], to=TensorProto.FLOAT),
        _int64(f"{prefix}.frames_shape", [-1, c, h, w]),
        helper.make_node("Reshape", [f"{prefix}.f", f"{prefix}.frames_shape"], [f"{prefix}.x"]),
        *normalise,
        *stem.as_2d(f"{prefix}.normalised", pads[1:3] + pads[4:], prefix),
        _int64(f"{prefix}.by_clip", [-1, t, c_out, h_out * w_out]),
        helper.make_node("Reshape", [y, f"{prefix}.by_clip"], [f"{prefix}.ntc"]),
        helper.make_node("Transpose", [f"{prefix}.ntc"], [f"{prefix}.nct"], perm=[0, 2, 1, 3]),
        _int64(f"{prefix}.out_shape", [-1, c_out, t, h_out, w_out]),
        # The last replaced output keeps its name and shape: what follows (the temporal conv) is unchanged.
        helper.make_node("Reshape", [f"{prefix}.nct", f"{prefix}.out_shape"], [stem.nodes[-1].output[0]]),
    ]
    return stem.nodes, new, tensors


def stem_for_ort(model: ModelProto, max_unused_rows: float = MAX_UNUSED_ROWS) -> ModelProto:
    """A copy of a gate graph with both rewrites applied where they match (``pad_conv_pairs`` first, so the
    frame-wise convolution is built with its padded filters)."""
    result = ModelProto()
    result.CopyFrom(model)
    pad_conv_pairs(result)
    stem_over_frames(result, max_unused_rows)
    return result
