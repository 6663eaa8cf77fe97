"""Gate pass on the stem (docs/performance.md, "The gate"): where the gate's time goes.

``stem_over_frames``: a uint8 clip transposed, cast and normalised into a frame-wise convolution
(``ort_frame_conv``) runs as a 2-D convolution: on frames stacked along the rows where few rows go unused
(``ort_stacked``), else over the ``N·T`` frames as a batch with one transpose back to ``[N, C, T, H, W]``.
Written with onnx-ir.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx import ModelProto

from .ort_frame_conv import FrameConv, match_frame_conv
from .ort_graph import SPECIALIZED_SUFFIX, IrNodes, copy_model, from_ir, ir_replace, to_ir
from .ort_pad import pad_conv_pairs
from .ort_stacked import MAX_UNUSED_ROWS, stack_frames


def stem_over_frames(model: ModelProto, max_unused_rows: float = MAX_UNUSED_ROWS) -> ModelProto:
    """A copy of a gate with its frame-wise first convolution rewritten (module docstring): on stacked frames while
    at most ``max_unused_rows`` of their rows go unused (``ort_stacked``), else over the frames as a batch;
    unchanged if there is none."""
    result = to_ir(model)
    graph = result.graph
    for transpose in graph:
        clip = transpose.inputs[0] if transpose.inputs else None
        stem = match_frame_conv(transpose) if clip is not None and clip.is_graph_input() else None
        if stem is None:
            continue
        prefix = f"{stem.conv.outputs[0].name}{SPECIALIZED_SUFFIX}.frames"  # initializers <value>.ort.<part>
        old, new, output = stack_frames(stem, graph, prefix, max_unused_rows) or _over_batched_frames(
            stem, graph, prefix
        )
        # The new nodes go where the last old one was: everything they read exists.
        ir_replace(graph, old, new, old[-1], output)
        return from_ir(result)
    return copy_model(model)


def _over_batched_frames(
    stem: FrameConv, graph: ir.Graph, prefix: str
) -> tuple[list[ir.Node], list[ir.Node], ir.Value]:
    """``(replaced nodes, new nodes, the value that replaces the last one's output)`` running ``stem`` over the
    ``N·T`` frames as a batch, with one transpose of its output back to ``[N, C, T, H, W]``."""
    t, h, w, c = stem.clip
    c_out, h_out, w_out = stem.out
    pads = stem.pads
    nodes = IrNodes()
    u8 = nodes.op("Transpose", [stem.transpose.inputs[0]], f"{prefix}.u8", perm=[0, 1, 4, 2, 3])
    f = nodes.op("Cast", [u8], f"{prefix}.f", to=ir.DataType.FLOAT)
    frames_shape = nodes.ints(f"{prefix}.frames_shape", [-1, c, h, w])
    x = nodes.op("Reshape", [f, frames_shape], f"{prefix}.x")
    normalised = stem.normalise(graph, nodes, x, 4, prefix)
    y = stem.as_2d(nodes, normalised, pads[1:3] + pads[4:], prefix)
    by_clip = nodes.ints(f"{prefix}.by_clip", [-1, t, c_out, h_out * w_out])
    ntc = nodes.op("Reshape", [y, by_clip], f"{prefix}.ntc")
    nct = nodes.op("Transpose", [ntc], f"{prefix}.nct", perm=[0, 2, 1, 3])
    out_shape = nodes.ints(f"{prefix}.out_shape", [-1, c_out, t, h_out, w_out])
    # The last replaced output keeps its name and shape: what follows (the temporal conv) is unchanged.
    return stem.nodes, nodes.nodes, nodes.op("Reshape", [nct, out_shape], f"{prefix}.out")


def stem_for_ort(model: ModelProto, max_unused_rows: float = MAX_UNUSED_ROWS) -> ModelProto:
    """``pad_conv_pairs`` then ``stem_over_frames`` (so the frame-wise convolution is built with its padded filters):
    the gate's stem passes in the builder's order, a shorthand for tests and tools."""
    return stem_over_frames(pad_conv_pairs(model), max_unused_rows)
