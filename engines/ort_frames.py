"""Bucket pass: compute only the frames a bucket's outputs read (docs/performance.md, "Frames nothing reads").

ϕt (factor ``R``) rebuilds ``T`` frames from ``T/R``, frame ``R·k`` being computed frame ``k`` itself. A
convolution with temporal kernel 1, no temporal padding and temporal stride ``s`` reads only frames ``0, s, 2s, …``.
``skip_unread_frames`` works out backwards from the outputs the stride each value is needed at and keeps only those
frames: a ϕt whose output is needed at a multiple of ``R`` is dropped, ops that treat frames alike run on the kept
frames, convolution strides are adjusted, and an input needed more thinly than it is kept gets a strided ``Slice``.
Exact; the exported files keep their nodes, only the ONNX Runtime engine changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
import onnx
import onnx_ir as ir
from onnx import ModelProto, NodeProto

from vared2.plugins import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

from .ort_graph import Graph, analyse, attribute_ints, copy_model, int64_constant, ir_constant, splice


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


def time_conv(node: NodeProto, graph: Graph) -> TimeConv | None:
    """The temporal geometry of a plain default-domain 3-D ``Conv`` with a constant weight, else ``None``."""
    if node.op_type != "Conv" or node.domain != "" or any(a.name == "auto_pad" for a in node.attribute):
        return None
    weight = graph.constants(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.ndim != 5 or attribute_ints(node, "dilations", [1, 1, 1])[0] != 1:
        return None
    pads = attribute_ints(node, "pads", [0] * 6)
    kernel = attribute_ints(node, "kernel_shape", list(weight.shape[2:]))[0]
    return TimeConv(kernel, attribute_ints(node, "strides", [1, 1, 1])[0], (pads[0], pads[3]))


def droppable_factor(node: NodeProto, graph: Graph) -> int | None:
    """``R`` of a ϕt node whose frame ``R·k`` is its input frame ``k`` (constant coefficients, first row (1, 0))."""
    if node.domain != DOMAIN or node.op_type != TEMPORAL_RECONSTRUCT:
        return None
    scale, shift = graph.constants(node.input[1]), graph.constants(node.input[2])
    if scale is None or shift is None or scale.ndim != 2 or not (np.all(scale[0] == 1) and np.all(shift[0] == 0)):
        return None
    return int(scale.shape[0])


def _frame_wise_inputs(node: NodeProto, graph: Graph) -> list[str] | None:
    """The time-varying inputs of an op that treats every frame alike, else ``None``."""
    if (node.domain, node.op_type) in {("", "Relu"), (DOMAIN, CHANNEL_RECONSTRUCT)}:
        return [node.input[0]]
    if node.domain == "" and node.op_type in ("Add", "Mul") and len(node.input) == 2:
        varying = []
        for name in node.input:
            value = graph.constants(name)
            if value is None:
                varying.append(name)
            elif value.ndim >= 3 and value.shape[-3] != 1:
                return None  # a constant that varies along time
        return varying
    return None


def count_frames(model: ModelProto, graph: Graph) -> dict[str, int]:
    """Frame counts of the 5-D values: as inferred, or worked out past the functions shape inference cannot see
    through (ϕt multiplies by ``R``, ops that treat frames alike keep their input's)."""
    frames = {name: int(shape[2]) for name, shape in graph.shapes.items() if len(shape) == 5 and shape[2] is not None}
    for node in model.graph.node:
        if len(node.output) != 1 or node.output[0] in frames:
            continue
        factor = droppable_factor(node, graph) if node.input else None
        conv = time_conv(node, graph)
        if conv is not None and node.input[0] in frames:
            frames[node.output[0]] = conv.frames_out(frames[node.input[0]], conv.stride)
        elif factor is not None and node.input[0] in frames:
            frames[node.output[0]] = frames[node.input[0]] * factor
        elif factor is None and (varying := _frame_wise_inputs(node, graph)) and varying[0] in frames:
            frames[node.output[0]] = frames[varying[0]]
    return frames


def _strides_needed(model: ModelProto, graph: Graph, frame_counts: dict[str, int]) -> dict[str, int]:
    """The stride at which each value is kept: the gcd of what its readers need, where its producer can make it so
    (1 for graph inputs, graph outputs and anything not understood)."""
    needs: dict[str, list[int]] = {name: [1] for name in graph.outputs}
    kept: dict[str, int] = {}
    for node in reversed(model.graph.node):
        if len(node.output) != 1:
            for name in node.input:
                needs.setdefault(name, []).append(1)
            continue
        out = node.output[0]
        wanted = gcd(*needs.get(out, [1]))
        frames = frame_counts.get(out)
        conv, factor, frame_wise = time_conv(node, graph), droppable_factor(node, graph), None
        if conv is None and factor is None:
            frame_wise = _frame_wise_inputs(node, graph)
        able = conv is not None or frame_wise is not None or (factor is not None and wanted % factor == 0)
        stride = wanted if able and frames is not None else 1
        kept[out] = stride
        if conv is not None:
            inputs = {node.input[0]: conv.reads(stride)}
        elif factor is not None and stride > 1:
            inputs = {node.input[0]: stride // factor}
        elif frame_wise is not None:
            inputs = dict.fromkeys(frame_wise, stride)
        else:
            inputs = {}
        for name in node.input:
            if name and graph.constants(name) is None:
                needs.setdefault(name, []).append(inputs.get(name, 1))
    for name in needs:
        kept.setdefault(name, 1)  # graph inputs
    return kept


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


def _kept_frames(frames: int, stride: int) -> int:
    """How many of ``frames`` frames are kept at ``stride``: ``0, stride, 2·stride, …``."""
    return -(-frames // stride)


def has_temporal_reconstruct(model: ModelProto) -> bool:
    """Whether ``model`` has a ϕt node — without one, the frame rewrites have nothing to do (and skip the shape
    inference)."""
    return any(n.domain == DOMAIN and n.op_type == TEMPORAL_RECONSTRUCT for n in model.graph.node)


def _set_time_stride(node: NodeProto, stride: int) -> None:
    strides = next((a for a in node.attribute if a.name == "strides"), None)
    if strides is None:
        node.attribute.append(onnx.helper.make_attribute("strides", [stride, 1, 1]))
    else:
        strides.ints[0] = stride


def skip_unread_frames(model: ModelProto) -> ModelProto:
    """A copy of ``model`` computing only the frames its outputs depend on (module docstring); unchanged if every
    frame is read."""
    result = copy_model(model)
    if not has_temporal_reconstruct(result):
        return result
    graph = analyse(result)
    frame_counts = count_frames(result, graph)
    kept = _strides_needed(result, graph, frame_counts)
    if all(stride == 1 for stride in kept.values()):
        return result

    nodes: list[NodeProto] = []
    renamed: dict[str, str] = {}
    thinned: dict[tuple[str, int], str] = {}

    def at_stride(name: str, stride: int) -> str:
        """``name`` (kept at ``kept[name]``) at ``stride``: itself, or a strided ``Slice`` of it."""
        source = renamed.get(name, name)
        step = stride // kept[name]
        if step == 1:
            return source
        if (source, step) not in thinned:
            out = f"{source}.ort.every{step}"
            frames = frame_counts.get(name)
            assert frames is not None  # a value needed thinner than kept is 5-D with a static frame count
            nodes.extend(
                [
                    int64_constant(f"{out}.start", [0]),
                    int64_constant(f"{out}.end", [frames]),
                    int64_constant(f"{out}.axis", [2]),
                    int64_constant(f"{out}.step", [step]),
                    onnx.helper.make_node(
                        "Slice", [source, f"{out}.start", f"{out}.end", f"{out}.axis", f"{out}.step"], [out]
                    ),
                ]
            )
            thinned[source, step] = out
        return thinned[source, step]

    for node in result.graph.node:
        if len(node.output) != 1:
            node.input[:] = [renamed.get(n, n) for n in node.input]
            nodes.append(node)
            continue
        stride = kept[node.output[0]]
        conv, factor = time_conv(node, graph), droppable_factor(node, graph)
        if factor is not None and stride > 1:  # dropped: its output is its input, kept at stride / R
            renamed[node.output[0]] = at_stride(node.input[0], stride // factor)
            continue
        if conv is not None and (stride > 1 or kept[node.input[0]] > 1):
            # Output frame k·stride reads input frame k·stride·s (+ taps); the input keeps every kept[input]-th.
            new_stride = conv.stride * stride // kept[node.input[0]]
            frames_in, frames_out = frame_counts.get(node.input[0]), frame_counts.get(node.output[0])
            if (
                frames_in is None
                or frames_out is None
                or conv.frames_out(_kept_frames(frames_in, kept[node.input[0]]), new_stride)
                != _kept_frames(frames_out, stride)
            ):
                return copy_model(model)  # frame counts that do not work out: leave the graph as it was
            _set_time_stride(node, new_stride)
            node.input[0] = renamed.get(node.input[0], node.input[0])
        elif stride > 1 or any(kept.get(n, 1) > 1 for n in node.input if n):
            frame_wise = _frame_wise_inputs(node, graph) or []
            node.input[:] = [at_stride(n, stride) if n in frame_wise else renamed.get(n, n) for n in node.input]
        else:
            node.input[:] = [renamed.get(n, n) for n in node.input]
        nodes.append(node)

    # Thinned values carry T/m frames. Every recorded shape is kept (and vouched for): shape inference cannot see
    # through the generic functions of the remaining vared2 nodes.
    for info in result.graph.value_info:
        stride = kept.get(info.name, 1)
        dims = info.type.tensor_type.shape.dim
        if stride > 1 and len(dims) == 5 and dims[2].HasField("dim_value"):
            dims[2].dim_value = _kept_frames(dims[2].dim_value, stride)
    splice(result, nodes, keep_shapes=[v.name for v in result.graph.value_info])
    return result
