"""The gate's stem on frames stacked along the rows (docs/performance.md, "The gate on stacked frames").

Run as 2-D convolutions, r(2+1)d's frame-wise stem convolution wants the frames in the batch and its temporal one
wants them as rows, with reorders and a transpose between. Stacking every normalised frame, zero-padded, one above
the other as ``[N, C, T·period, W]`` lets the first convolve them as one image and the second read frame ``t ± 1``
``period`` rows away (a ``kt×1`` convolution dilated by ``period``) on the same blocked tensor. The ``period -
H_out`` rows after each frame's output are computed and never read, so ``ort_stem`` stacks only while their share
stays within ``MAX_UNUSED_ROWS``; the gate head (``ort_gate_head``) reads the stacked tensor frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import NodeProto, TensorProto, helper

from .ort_frame_conv import FrameConv, activated, conv_weight
from .ort_graph import Graph, attribute_ints, int64_constant, sole_consumer

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


def _temporal_after(graph: Graph, value: str) -> tuple[NodeProto, int, int, int] | None:
    """``(conv, kernel, padding, output channels)`` of the sole consumer of ``value`` if it is a 3-D convolution
    over time only (spatial kernel and stride 1, no spatial padding, stride 1) that keeps the number of frames."""
    conv = sole_consumer(graph, value, "Conv")
    weight = conv_weight(conv, graph) if conv is not None else None
    if conv is None or weight is None or weight.ndim != 5 or conv.input[0] != value:
        return None
    kernel = attribute_ints(conv, "kernel_shape", list(weight.shape[2:]))
    strides = attribute_ints(conv, "strides", [1, 1, 1])
    pads = attribute_ints(conv, "pads", [0] * 6)
    same_frames = kernel[0] == 2 * pads[0] + 1 and pads[0] == pads[3]
    if kernel[1:] != [1, 1] or strides != [1, 1, 1] or pads[1:3] + pads[4:] != [0] * 4 or not same_frames:
        return None
    if any(a.name == "auto_pad" for a in conv.attribute):
        return None
    return conv, kernel[0], pads[0], int(weight.shape[0])


def stack_frames(
    stem: FrameConv, graph: Graph, prefix: str, max_unused_rows: float = MAX_UNUSED_ROWS
) -> tuple[list[NodeProto], list[NodeProto], list[TensorProto]] | None:
    """``(replaced nodes, new nodes, new initializers)`` running ``stem`` — and the temporal convolution after it,
    if there is one — on stacked frames (module docstring); ``None`` if the rows do not line up or too many of them
    would be unused."""
    t, h, w, c = stem.clip
    channels, h_out, w_out = stem.out
    kernel, strides, pads = stem.kernel, stem.strides, stem.pads
    rows = stacked_rows(h, kernel[1], strides[1], pads[1], h_out)
    if rows is None or rows[1] > h_out * (1 + max_unused_rows):
        return None
    below, period = rows
    temporal = _temporal_after(graph, stem.relu.output[0]) if stem.relu is not None else None
    relu2 = sole_consumer(graph, temporal[0].output[0], "Relu") if temporal is not None else None
    old = stem.nodes + ([temporal[0], *([relu2] if relu2 is not None else [])] if temporal is not None else [])
    normalise, tensors = stem.normalise(f"{prefix}.f", 5, prefix)
    y = f"{prefix}.y"
    new = [
        helper.make_node("Transpose", [stem.transpose.input[0]], [f"{prefix}.u8"], perm=[0, 4, 1, 2, 3]),
        helper.make_node("Cast", [f"{prefix}.u8"], [f"{prefix}.f"], to=TensorProto.FLOAT),
        *normalise,
        # Zeros of the normalised input, as the convolution's own padding would be, above and below every frame.
        int64_constant(f"{prefix}.rows", [0, 0, 0, pads[1], 0, 0, 0, 0, below, 0]),
        helper.make_node("Pad", [f"{prefix}.normalised", f"{prefix}.rows"], [f"{prefix}.padded"]),
        int64_constant(f"{prefix}.stack_shape", [-1, c, t * (pads[1] + h + below), w]),
        helper.make_node("Reshape", [f"{prefix}.padded", f"{prefix}.stack_shape"], [f"{prefix}.x"]),
        # The bottom padding only feeds the last frame's unused rows.
        *stem.as_2d(f"{prefix}.x", [0, pads[2], max(0, kernel[1] - strides[1]), pads[5]], prefix),
    ]
    last = y
    if temporal is not None:
        t_conv, t_kernel, t_pad, channels = temporal
        last = f"{prefix}.z"
        new += [
            int64_constant(f"{prefix}.zwshape", [channels, stem.out[0], t_kernel, 1]),
            helper.make_node("Reshape", [t_conv.input[1], f"{prefix}.zwshape"], [f"{prefix}.zw"]),
            helper.make_node(  # a frame's row r lies `period` rows below the previous frame's row r
                "Conv",
                [y, f"{prefix}.zw", *t_conv.input[2:]],
                [f"{last}.pre" if relu2 is not None else last],
                name=t_conv.name or "stem_temporal_over_stacked_frames",
                kernel_shape=[t_kernel, 1],
                dilations=[period, 1],
                pads=[t_pad * period, 0, t_pad * period, 0],
            ),
            *activated(relu2, last),
        ]
    new += [
        int64_constant(f"{prefix}.by_frame", [-1, channels, t, period, w_out]),
    ]
    # The last replaced output keeps its name and shape [N, C, T, H, W]: what reads it is unchanged. A Split
    # drops the unused rows with one contiguous copy per frame and channel (a Slice was slower: docs/performance.md).
    if period == h_out:
        new.append(helper.make_node("Reshape", [last, f"{prefix}.by_frame"], [old[-1].output[0]]))
    else:
        new += [
            helper.make_node("Reshape", [last, f"{prefix}.by_frame"], [f"{prefix}.framed"]),
            int64_constant(f"{prefix}.split_rows", [h_out, period - h_out]),
            helper.make_node(
                "Split",
                [f"{prefix}.framed", f"{prefix}.split_rows"],
                [old[-1].output[0], f"{prefix}.unused_rows"],
                axis=3,
            ),
        ]
    return old, new, tensors
