"""Bucket pass: compute only the frames a bucket's outputs read (docs/performance.md, "Frames nothing reads").

ϕt (factor ``R``) rebuilds ``T`` frames from ``T/R``, frame ``R·k`` being computed frame ``k`` itself. A
convolution with temporal kernel 1, no temporal padding and temporal stride ``s`` reads only frames ``0, s, 2s, …``.
``skip_unread_frames`` works out backwards from the outputs the stride each value is needed at and keeps only those
frames: a ϕt whose output is needed at a multiple of ``R`` is dropped, ops that treat frames alike run on the kept
frames, convolution strides are adjusted, and an input needed more thinly than it is kept gets a strided ``Slice``.
Exact; the exported files keep their nodes, only the ONNX Runtime engine changes. Written with onnx-ir.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
import onnx_ir as ir
from onnx import ModelProto

from vared2.plugins import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

from .ort_graph import IrNodes, copy_model, from_ir, ir_constant, to_ir


@dataclass(frozen=True)
class TimeConv:
    """The temporal geometry of a 3-D ``Conv`` (``time_conv``)."""

    kernel: int
    stride: int
    pads: tuple[int, int]

    def reads(self, stride_out: int) -> int:
        """The stride at which its input is needed when its output is needed at ``stride_out``."""
        return self.stride * stride_out if self.kernel == 1 and self.pads == (0, 0) else 1

    def frames_out(self, frames_in: int, stride: int) -> int:
        return (frames_in + sum(self.pads) - self.kernel) // stride + 1


def ir_time_conv(node: ir.Node) -> TimeConv | None:
    """``time_conv`` of an onnx-ir node."""
    if node.op_type != "Conv" or node.domain != "" or "auto_pad" in node.attributes:
        return None
    weight = ir_constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim != 5 or node.attributes.get_ints("dilations", [1, 1, 1])[0] != 1:
        return None
    pads = list(node.attributes.get_ints("pads", [0] * 6))
    kernel = node.attributes.get_ints("kernel_shape", list(weight.shape[2:]))[0]
    return TimeConv(kernel, node.attributes.get_ints("strides", [1, 1, 1])[0], (pads[0], pads[3]))


def ir_droppable_factor(node: ir.Node) -> int | None:
    """``droppable_factor`` of an onnx-ir node."""
    if node.domain != DOMAIN or node.op_type != TEMPORAL_RECONSTRUCT:
        return None
    scale, shift = ir_constant(node.inputs[1]), ir_constant(node.inputs[2])
    if scale is None or shift is None or scale.ndim != 2 or not (np.all(scale[0] == 1) and np.all(shift[0] == 0)):
        return None
    return int(scale.shape[0])


def _ir_frame_wise_inputs(node: ir.Node) -> list[ir.Value] | None:
    """``_frame_wise_inputs`` of an onnx-ir node."""
    if (node.domain, node.op_type) in {("", "Relu"), (DOMAIN, CHANNEL_RECONSTRUCT)}:
        return [node.inputs[0]] if node.inputs[0] is not None else None
    if node.domain == "" and node.op_type in ("Add", "Mul") and len(node.inputs) == 2:
        varying = []
        for input_ in node.inputs:
            value = ir_constant(input_)
            if value is None and input_ is not None:
                varying.append(input_)
            elif value is not None and value.ndim >= 3 and value.shape[-3] != 1:
                return None  # a constant that varies along time
        return varying
    return None


def ir_count_frames(graph: ir.Graph) -> dict[ir.Value, int]:
    """``count_frames`` of an onnx-ir graph whose shapes were inferred (``to_ir``)."""
    frames: dict[ir.Value, int] = {}
    for value in [*graph.inputs, *(o for node in graph for o in node.outputs)]:
        shape = value.shape
        if shape is not None and len(shape) == 5 and isinstance(shape[2], int):
            frames[value] = shape[2]
    for node in graph:
        if len(node.outputs) != 1 or node.outputs[0] in frames:
            continue
        source = node.inputs[0] if node.inputs else None
        factor = ir_droppable_factor(node) if node.inputs else None
        conv = ir_time_conv(node)
        if conv is not None and source in frames:
            frames[node.outputs[0]] = conv.frames_out(frames[source], conv.stride)
        elif factor is not None and source in frames:
            frames[node.outputs[0]] = frames[source] * factor
        elif factor is None and (varying := _ir_frame_wise_inputs(node)) and varying[0] in frames:
            frames[node.outputs[0]] = frames[varying[0]]
    return frames


def _strides_needed(graph: ir.Graph, frame_counts: dict[ir.Value, int]) -> dict[ir.Value, int]:
    """The stride at which each value is kept: the gcd of what its readers need, where its producer can make it so
    (1 for graph inputs, graph outputs and anything not understood)."""
    needs: dict[ir.Value, list[int]] = {value: [1] for value in graph.outputs}
    kept: dict[ir.Value, int] = {}
    for node in reversed(graph):
        if len(node.outputs) != 1:
            for value in node.inputs:
                if value is not None:
                    needs.setdefault(value, []).append(1)
            continue
        out = node.outputs[0]
        wanted = gcd(*needs.get(out, [1]))
        frames = frame_counts.get(out)
        conv, factor, frame_wise = ir_time_conv(node), ir_droppable_factor(node), None
        if conv is None and factor is None:
            frame_wise = _ir_frame_wise_inputs(node)
        able = conv is not None or frame_wise is not None or (factor is not None and wanted % factor == 0)
        stride = wanted if able and frames is not None else 1
        kept[out] = stride
        inputs: dict[ir.Value | None, int]
        if conv is not None:
            inputs = {node.inputs[0]: conv.reads(stride)}
        elif factor is not None and stride > 1:
            inputs = {node.inputs[0]: stride // factor}
        elif frame_wise is not None:
            inputs = dict.fromkeys(frame_wise, stride)
        else:
            inputs = {}
        for value in node.inputs:
            if value is not None and ir_constant(value) is None:
                needs.setdefault(value, []).append(inputs.get(value, 1))
    for value in needs:
        kept.setdefault(value, 1)  # graph inputs
    return kept


def _kept_frames(frames: int, stride: int) -> int:
    """How many of ``frames`` frames are kept at ``stride``: ``0, stride, 2·stride, …``."""
    return -(-frames // stride)


def has_temporal_reconstruct(model: ModelProto) -> bool:
    """Whether ``model`` has a ϕt node — without one, the frame rewrites have nothing to do (and skip the shape
    inference)."""
    return any(n.domain == DOMAIN and n.op_type == TEMPORAL_RECONSTRUCT for n in model.graph.node)


def skip_unread_frames(model: ModelProto) -> ModelProto:
    """A copy of ``model`` computing only the frames its outputs depend on (module docstring); unchanged if every
    frame is read."""
    unchanged = copy_model(model)
    if not has_temporal_reconstruct(model):
        return unchanged
    result = to_ir(model)
    graph = result.graph
    frame_counts = ir_count_frames(graph)
    kept = _strides_needed(graph, frame_counts)
    if all(stride == 1 for stride in kept.values()):
        return unchanged

    renamed: dict[ir.Value, ir.Value] = {}
    thinned: dict[tuple[ir.Value, int], ir.Value] = {}
    dropped: list[ir.Node] = []

    def at_stride(value: ir.Value, stride: int, before: ir.Node) -> ir.Value:
        """``value`` (kept at ``kept[value]``) at ``stride``: itself, or a strided ``Slice`` of it (new nodes go
        before ``before``)."""
        source = renamed.get(value, value)
        step = stride // kept[value]
        if step == 1:
            return source
        if (source, step) not in thinned:
            out = f"{source.name}.ort.every{step}"
            frames = frame_counts.get(value)
            assert frames is not None  # a value needed thinner than kept is 5-D with a static frame count
            nodes = IrNodes()
            start, end = nodes.ints(f"{out}.start", [0]), nodes.ints(f"{out}.end", [frames])
            axis, step_value = nodes.ints(f"{out}.axis", [2]), nodes.ints(f"{out}.step", [step])
            thinned[source, step] = nodes.op("Slice", [source, start, end, axis, step_value], out)
            graph.insert_before(before, nodes.nodes)
        return thinned[source, step]

    def rename_inputs(node: ir.Node, frame_wise: list[ir.Value] | None = None, stride: int = 1) -> None:
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            new = at_stride(value, stride, node) if frame_wise and value in frame_wise else renamed.get(value, value)
            if new is not value:
                node.replace_input_with(index, new)

    for node in list(graph):
        if len(node.outputs) != 1:
            rename_inputs(node)
            continue
        out = node.outputs[0]
        stride = kept[out]
        conv, factor = ir_time_conv(node), ir_droppable_factor(node)
        source = node.inputs[0]
        if factor is not None and stride > 1:  # dropped: its output is its input, kept at stride / R
            assert source is not None
            renamed[out] = at_stride(source, stride // factor, node)
            dropped.append(node)
            continue
        if conv is not None and source is not None and (stride > 1 or kept[source] > 1):
            # Output frame k·stride reads input frame k·stride·s (+ taps); the input keeps every kept[input]-th.
            new_stride = conv.stride * stride // kept[source]
            frames_in, frames_out = frame_counts.get(source), frame_counts.get(out)
            if (
                frames_in is None
                or frames_out is None
                or conv.frames_out(_kept_frames(frames_in, kept[source]), new_stride)
                != _kept_frames(frames_out, stride)
            ):
                return unchanged  # frame counts that do not work out: leave the graph as it was
            strides = list(node.attributes.get_ints("strides", [1, 1, 1]))
            node.attributes["strides"] = ir.AttrInt64s("strides", [new_stride, *strides[1:]])
            rename_inputs(node)
        elif stride > 1 or any(kept.get(v, 1) > 1 for v in node.inputs if v is not None):
            rename_inputs(node, _ir_frame_wise_inputs(node) or [], stride)
        else:
            rename_inputs(node)
    graph.remove(dropped, safe=True)

    # Thinned values carry T/m frames. Every recorded shape is kept (and vouched for): shape inference cannot see
    # through the generic functions of the remaining vared2 nodes.
    recorded = {v.name for v in model.graph.value_info}
    for value, stride in kept.items():
        shape = value.shape
        if (
            value.name in recorded
            and stride > 1
            and shape is not None
            and len(shape) == 5
            and isinstance(shape[2], int)
        ):
            value.shape = ir.Shape([*shape[:2], _kept_frames(shape[2], stride), *shape[3:]])
    return from_ir(result, keep_shapes=recorded)
