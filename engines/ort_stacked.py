"""The gate's stem on frames stacked along the rows (docs/performance.md, "The gate on stacked frames").

Run as 2-D convolutions, r(2+1)d's frame-wise stem convolution wants the frames in the batch and its temporal one
wants them as rows, with reorders and a transpose between. Stacking every normalised frame, zero-padded, one above
the other as ``[N, C, T·period, W]`` lets the first convolve them as one image and the second read frame ``t ± 1``
``period`` rows away (a ``kt×1`` convolution dilated by ``period``) on the same blocked tensor. The ``period -
H_out`` rows after each frame's output are computed and never read, so ``ort_stem`` stacks only while their share
stays within ``MAX_UNUSED_ROWS``; the gate head (``ort_gate_head``) reads the stacked tensor frame by frame.
Written with onnx-ir.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from .ort_frame_conv import FrameConv, activated
from .ort_graph import IrNodes, ir_sole_consumer
from .ort_pad import ir_conv_weight

#: Measured on r2plus1d_18's stem (docs/performance.md, "The gate on stacked frames").
MAX_UNUSED_ROWS = 0.05


@dataclass(frozen=True)
class StackedFrames:
    """How ``frames`` frames sit one above the other in a 4-D tensor ``[N, C, frames·period, width]``: frame ``t``
    is rows ``t·period`` to ``t·period + rows - 1``, and the ``period - rows`` rows after them hold no frame."""

    frames: int
    period: int
    rows: int
    width: int


def stacked_rows(height: int, kernel: int, stride: int, pad_top: int, out_rows: int) -> tuple[int, int] | None:
    """``(zero rows below each frame, output rows per frame)`` for a convolution over frames stacked along the
    rows, each with ``pad_top`` zero rows above it, so that frame ``t``'s ``out_rows`` output rows start at row
    ``t·period`` and read only that frame and zeros; ``None`` if they cannot line up."""
    reach = stride * (out_rows - 1) - pad_top + kernel - height  # rows past a frame's last row that are read
    below = max(0, reach - pad_top)  # the next frame's top zeros count too
    while (pad_top + height + below) % stride:
        below += 1
    period = (pad_top + height + below) // stride
    return (below, period) if period >= out_rows else None


def _temporal_after(value: ir.Value) -> tuple[ir.Node, int, int, int] | None:
    """``(conv, kernel, padding, output channels)`` of the sole consumer of ``value`` if it is a 3-D convolution
    over time only (spatial kernel and stride 1, no spatial padding, stride 1) that keeps the number of frames."""
    conv = ir_sole_consumer(value, "Conv")
    weight = ir_conv_weight(conv) if conv is not None else None
    if conv is None or weight is None or weight.ndim != 5 or conv.inputs[0] is not value:
        return None
    attributes = conv.attributes
    kernel = list(attributes.get_ints("kernel_shape", list(weight.shape[2:])))
    strides = list(attributes.get_ints("strides", [1, 1, 1]))
    pads = list(attributes.get_ints("pads", [0] * 6))
    same_frames = kernel[0] == 2 * pads[0] + 1 and pads[0] == pads[3]
    if kernel[1:] != [1, 1] or strides != [1, 1, 1] or pads[1:3] + pads[4:] != [0] * 4 or not same_frames:
        return None
    if "auto_pad" in attributes:
        return None
    return conv, kernel[0], pads[0], int(weight.shape[0])


def stack_frames(
    stem: FrameConv, graph: ir.Graph, prefix: str, max_unused_rows: float = MAX_UNUSED_ROWS
) -> tuple[list[ir.Node], list[ir.Node], ir.Value] | None:
    """``(replaced nodes, new nodes, the value that replaces the last one's output)`` running ``stem`` — and the
    temporal convolution after it, if there is one — on stacked frames (module docstring); ``None`` if the rows do
    not line up or too many of them would be unused. Registers the new initializers in ``graph``."""
    t, h, w, c = stem.clip
    channels, h_out, w_out = stem.out
    kernel, strides, pads = stem.kernel, stem.strides, stem.pads
    rows = stacked_rows(h, kernel[1], strides[1], pads[1], h_out)
    if rows is None or rows[1] > h_out * (1 + max_unused_rows):
        return None
    below, period = rows
    temporal = _temporal_after(stem.relu.outputs[0]) if stem.relu is not None else None
    relu2 = ir_sole_consumer(temporal[0].outputs[0], "Relu") if temporal is not None else None
    old = stem.nodes + ([temporal[0], *([relu2] if relu2 is not None else [])] if temporal is not None else [])
    nodes = IrNodes()
    u8 = nodes.op("Transpose", [stem.transpose.inputs[0]], f"{prefix}.u8", perm=[0, 4, 1, 2, 3])
    f = nodes.op("Cast", [u8], f"{prefix}.f", to=ir.DataType.FLOAT)
    normalised = stem.normalise(graph, nodes, f, 5, prefix)
    # Zeros of the normalised input, as the convolution's own padding would be, above and below every frame.
    padding = nodes.ints(f"{prefix}.rows", [0, 0, 0, pads[1], 0, 0, 0, 0, below, 0])
    padded = nodes.op("Pad", [normalised, padding], f"{prefix}.padded")
    stack_shape = nodes.ints(f"{prefix}.stack_shape", [-1, c, t * (pads[1] + h + below), w])
    x = nodes.op("Reshape", [padded, stack_shape], f"{prefix}.x")
    # The bottom padding only feeds the last frame's unused rows.
    last = stem.as_2d(nodes, x, [0, pads[2], max(0, kernel[1] - strides[1]), pads[5]], prefix)
    if temporal is not None:
        t_conv, t_kernel, t_pad, channels = temporal
        z = f"{prefix}.z"
        zwshape = nodes.ints(f"{prefix}.zwshape", [channels, stem.out[0], t_kernel, 1])
        zw = nodes.op("Reshape", [t_conv.inputs[1], zwshape], f"{prefix}.zw")
        last = nodes.op(  # a frame's row r lies `period` rows below the previous frame's row r
            "Conv",
            [last, zw, *t_conv.inputs[2:]],
            f"{z}.pre" if relu2 is not None else z,
            name=t_conv.name or "stem_temporal_over_stacked_frames",
            kernel_shape=[t_kernel, 1],
            dilations=[period, 1],
            pads=[t_pad * period, 0, t_pad * period, 0],
        )
        last = activated(nodes, relu2, last, z)
    by_frame = nodes.ints(f"{prefix}.by_frame", [-1, channels, t, period, w_out])
    # The last replaced output keeps its name and shape [N, C, T, H, W]: what reads it is unchanged. A Split
    # drops the unused rows with one contiguous copy per frame and channel (a Slice was slower: docs/performance.md).
    if period == h_out:
        return old, nodes.nodes, nodes.op("Reshape", [last, by_frame], f"{prefix}.out")
    framed = nodes.op("Reshape", [last, by_frame], f"{prefix}.framed")
    split_rows = nodes.ints(f"{prefix}.split_rows", [h_out, period - h_out])
    kept, _ = nodes.multi("Split", [framed, split_rows], [f"{prefix}.out", f"{prefix}.unused_rows"], axis=3)
    return old, nodes.nodes, kept
