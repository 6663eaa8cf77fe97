"""Gate pass on the stem (docs/performance.md, "The gate"): where the gate's time goes.

``stem_over_frames``: a uint8 clip transposed, cast and normalised into a frame-wise convolution
(``ort_frame_conv``) runs as a 2-D convolution: on frames stacked along the rows where few rows go unused
(``ort_stacked``), else over the ``N·T`` frames as a batch with one transpose back to ``[N, C, T, H, W]``.
"""

from __future__ import annotations

from onnx import ModelProto, NodeProto, TensorProto, helper

from .ort_frame_conv import FrameConv, match_frame_conv
from .ort_graph import (
    SPECIALIZED_SUFFIX,
    analyse,
    copy_model,
    int64_constant,
    splice,
)
from .ort_pad import pad_conv_pairs
from .ort_stacked import MAX_UNUSED_ROWS, stack_frames


def stem_over_frames(model: ModelProto, max_unused_rows: float = MAX_UNUSED_ROWS) -> ModelProto:
    """A copy of a gate with its frame-wise first convolution rewritten (module docstring): on stacked frames while
    at most ``max_unused_rows`` of their rows go unused (``ort_stacked``), else over the frames as a batch;
    unchanged if there is none."""
    result = copy_model(model)
    graph = analyse(result)
    inputs = {i.name for i in result.graph.input}
    for transpose in result.graph.node:
        stem = match_frame_conv(transpose, graph) if transpose.input and transpose.input[0] in inputs else None
        if stem is None:
            continue
        prefix = f"{stem.conv.output[0]}{SPECIALIZED_SUFFIX}.frames"  # initializers <value>.ort.<part>: engine-local
        old, new, tensors = stack_frames(stem, graph, prefix, max_unused_rows) or _over_batched_frames(stem, prefix)
        replaced = {name for node in old for name in node.output}
        nodes: list[NodeProto] = []
        for node in result.graph.node:  # the new nodes go where the last old one was: everything they read exists
            if node.output[0] == old[-1].output[0]:
                nodes += new
            elif not replaced.intersection(node.output):
                nodes.append(node)
        splice(result, nodes, tensors)
        return result
    return result


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
        int64_constant(f"{prefix}.frames_shape", [-1, c, h, w]),
        helper.make_node("Reshape", [f"{prefix}.f", f"{prefix}.frames_shape"], [f"{prefix}.x"]),
        *normalise,
        *stem.as_2d(f"{prefix}.normalised", pads[1:3] + pads[4:], prefix),
        int64_constant(f"{prefix}.by_clip", [-1, t, c_out, h_out * w_out]),
        helper.make_node("Reshape", [y, f"{prefix}.by_clip"], [f"{prefix}.ntc"]),
        helper.make_node("Transpose", [f"{prefix}.ntc"], [f"{prefix}.nct"], perm=[0, 2, 1, 3]),
        int64_constant(f"{prefix}.out_shape", [-1, c_out, t, h_out, w_out]),
        # The last replaced output keeps its name and shape: what follows (the temporal conv) is unchanged.
        helper.make_node("Reshape", [f"{prefix}.nct", f"{prefix}.out_shape"], [stem.nodes[-1].output[0]]),
    ]
    return stem.nodes, new, tensors


def stem_for_ort(model: ModelProto, max_unused_rows: float = MAX_UNUSED_ROWS) -> ModelProto:
    """``pad_conv_pairs`` then ``stem_over_frames`` (so the frame-wise convolution is built with its padded filters):
    the gate's stem passes in the builder's order, a shorthand for tests and tools."""
    return stem_over_frames(pad_conv_pairs(model), max_unused_rows)
