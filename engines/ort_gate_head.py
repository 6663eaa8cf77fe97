"""Gate pass: the gate's descriptor on blocked kernels (docs/performance.md, "The gate").

The gate's head summarises the stem features ``F [N, C, T, H, W]`` per channel: the mean and the mean absolute
difference between consecutive frames, exported as two ``Slice`` copies, ``Sub``, ``Abs`` and two ``ReduceMean`` on
plain NCHW kernels. ``motion_head_for_ort`` computes the same numbers on a 4-D view in which every frame is a block of
rows (``ort_stacked``'s stacked tensor, else ``[N, C, T, H·W]``): frame means by one ``AveragePool``; ``|d| =
2·ReLU(d) - d`` for ``d = F[t+1] - F[t]`` by one depthwise ``2×1`` convolution with weights ``(-2, 2)`` and fused ReLU;
the mean of ``d`` telescopes to ``(m_{T-1} - m_0) / (T-1)``. Sums are regrouped, so results match to rounding.
Written with onnx-ir.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import ModelProto

from .ort_graph import SPECIALIZED_SUFFIX, IrNodes, copy_model, from_ir, ir_constant, ir_initializer, to_ir
from .ort_stacked import StackedFrames

ALL_BUT_BATCH_AND_CHANNEL = [2, 3, 4]


def _dims(value: ir.Value | None) -> list[int | None] | None:
    """``value``'s shape with unknown or symbolic axes as ``None``; ``None`` if its rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _is_mean_over_clip(node: ir.Node | None) -> bool:
    return (
        node is not None
        and node.op_type == "ReduceMean"
        and node.domain == ""
        and len(node.inputs) == 1
        and list(node.attributes.get_ints("axes", [])) == ALL_BUT_BATCH_AND_CHANNEL
        and node.attributes.get_int("keepdims") == 0
    )


def _time_slice(node: ir.Node | None, frames: int) -> tuple[ir.Value | None, int, int] | None:
    """``(input, start, stop)`` of a unit-step ``Slice`` along axis 2 with constant bounds, clamped to ``frames``."""
    if node is None or node.op_type != "Slice" or node.domain != "" or len(node.inputs) < 4:
        return None
    bounds = [ir_constant(value) for value in node.inputs[1:] if value is not None]
    if any(b is None or np.size(b) != 1 for b in bounds):
        return None
    start, stop, axis, step = [int(np.ravel(b)[0]) for b in bounds if b is not None] + [1] * (4 - len(bounds))
    if axis != 2 or step != 1:
        return None
    start, stop = (v + frames if v < 0 else v for v in (start, stop))
    return node.inputs[0], max(0, min(start, frames)), max(0, min(stop, frames))


def _match(concat: ir.Node) -> tuple[list[ir.Node], ir.Value] | None:
    """The nodes of the exported descriptor feeding ``concat`` (the two means first), and the features they read;
    ``None`` otherwise."""
    if concat.op_type != "Concat" or len(concat.inputs) != 2 or concat.attributes.get_int("axis") != 1:
        return None
    mean, motion = (_producer(value) for value in concat.inputs)
    if mean is None or motion is None or not (_is_mean_over_clip(mean) and _is_mean_over_clip(motion)):
        return None
    features = mean.inputs[0]
    shape = _dims(features)
    if features is None or shape is None or len(shape) != 5 or None in shape[1:]:
        return None
    frames = int(shape[2])  # type: ignore[arg-type]
    absolute = _producer(motion.inputs[0])
    sub = _producer(absolute.inputs[0]) if absolute is not None and absolute.op_type == "Abs" else None
    if sub is None or sub.op_type != "Sub" or absolute is None:
        return None
    later, earlier = (_time_slice(_producer(value), frames) for value in sub.inputs)
    if later != (features, 1, frames) or earlier != (features, 0, frames - 1) or frames < 2:
        return None
    slices = [node for value in sub.inputs if (node := _producer(value)) is not None]  # both exist: matched
    exclusive = [absolute, sub, *slices]
    if any(len(n.outputs[0].uses()) != 1 for n in exclusive):
        return None
    return [mean, motion, *exclusive], features


def _stacked_source(features: ir.Value) -> tuple[ir.Value, StackedFrames] | None:
    """The stacked 4-D tensor that ``features [N, C, T, H, W]`` was cut from by ``ort_stacked.stack_frames``, and
    its layout; ``None`` if the features were made some other way."""
    node = features.producer()
    rows: int | None = None
    if node is not None and node.op_type == "Split" and node.attributes.get_int("axis") == 3 and len(node.inputs) == 2:
        sizes = ir_constant(node.inputs[1])
        if sizes is not None and np.size(sizes) == 2 and node.outputs[0] is features:
            rows = int(np.ravel(sizes)[0])
            node = _producer(node.inputs[0])
    framed = _dims(node.outputs[0]) if node is not None and node.op_type == "Reshape" else None
    source = _dims(node.inputs[0]) if node is not None and framed is not None else None
    if node is None or node.inputs[0] is None or framed is None or source is None:
        return None
    if len(framed) != 5 or len(source) != 4 or None in framed[1:] or None in source[1:]:
        return None
    channels, frames, period, width = (int(d) for d in framed[1:])  # type: ignore[arg-type]
    rows = period if rows is None else rows
    if list(source[1:]) != [channels, frames * period, width] or not 0 < rows <= period:
        return None
    return node.inputs[0], StackedFrames(frames, period, rows, width)


def _frames_view(features: ir.Value, prefix: str) -> tuple[list[ir.Node], ir.Value, StackedFrames]:
    """(nodes to add, value, layout) of a 4-D view of the features in which every frame is a block of rows: the
    stacked tensor they were cut from; else the ``[N, C, T, H·W]`` view the temporal conv run as 2-D already wrote
    (``temporal-conv-2d``); else a reshape of the features to it."""
    stacked = _stacked_source(features)
    if stacked is not None:
        return [], *stacked
    shape = _dims(features)
    assert shape is not None  # matched: static but the batch
    c, t, h, w = (int(d) for d in shape[1:])  # type: ignore[arg-type]
    layout = StackedFrames(frames=t, period=1, rows=1, width=h * w)
    reshape = features.producer()
    if reshape is not None and reshape.op_type == "Reshape" and _dims(reshape.inputs[0]) == [shape[0], c, t, h * w]:
        return [], reshape.inputs[0], layout  # type: ignore[return-value]
    nodes = IrNodes()
    target = nodes.op("Constant", [], f"{prefix}.shape4", value_ints=[-1, c, t, h * w])
    view = nodes.op("Reshape", [features, target], f"{prefix}.f4")
    return nodes.nodes, view, layout


def _head(
    graph: ir.Graph, view: ir.Value, layout: StackedFrames, channels: int, prefix: str
) -> tuple[list[ir.Node], ir.Value, ir.Value]:
    """(nodes, mean, motion): the mean and mean absolute frame difference of ``view`` (laid out as ``layout``) as
    ``[N, C]`` each (module docstring); its two weights become initializers of ``graph``."""
    frames, period = layout.frames, layout.period
    window, step = [layout.rows, layout.width], [period, 1]  # one frame's rows, frame after frame
    rising = np.zeros((channels, 1, 2, 1), np.float32)
    rising[:, 0, 0, 0], rising[:, 0, 1, 0] = -2.0, 2.0
    drift = np.zeros((channels, 1, frames, 1), np.float32)
    drift[:, 0, 0, 0], drift[:, 0, -1, 0] = 1.0 / (frames - 1), -1.0 / (frames - 1)
    weights = [
        ir_initializer(graph, name, array) for name, array in ((f"{prefix}_rising", rising), (f"{prefix}_drift", drift))
    ]
    nodes = IrNodes()
    frame_means = nodes.op("AveragePool", [view], f"{prefix}.frame_means", kernel_shape=window, strides=step)
    mean4 = nodes.op("GlobalAveragePool", [frame_means], f"{prefix}.mean4")
    mean = nodes.op("Flatten", [mean4], f"{prefix}.mean", axis=1)
    rise = nodes.op(
        "Conv", [view, weights[0]], f"{prefix}.rising", group=channels, kernel_shape=[2, 1], dilations=[period, 1]
    )
    relu = nodes.op("Relu", [rise], f"{prefix}.rising.relu")
    rise_frames = nodes.op("AveragePool", [relu], f"{prefix}.rising.frames", kernel_shape=window, strides=step)
    rise_mean = nodes.op("GlobalAveragePool", [rise_frames], f"{prefix}.rising.mean")
    drift_conv = nodes.op(
        "Conv", [frame_means, weights[1]], f"{prefix}.drift", group=channels, kernel_shape=[frames, 1]
    )
    motion4 = nodes.op("Add", [rise_mean, drift_conv], f"{prefix}.motion4")
    motion = nodes.op("Flatten", [motion4], f"{prefix}.motion", axis=1)
    return nodes.nodes, mean, motion


def motion_head_for_ort(model: ModelProto) -> ModelProto:
    """A copy of a gate graph with its descriptor rewritten (module docstring); unchanged if none matches."""
    result = to_ir(model)
    graph = result.graph
    for concat in list(graph):
        found = _match(concat)
        if found is None:
            continue
        old, features = found
        prefix = f"{features.name}{SPECIALIZED_SUFFIX}.head"
        added, view, layout = _frames_view(features, prefix)
        channels = _dims(features)[1]  # type: ignore[index]
        head, mean, motion = _head(graph, view, layout, int(channels), prefix)  # type: ignore[arg-type]
        graph.insert_before(concat, [*added, *head])  # the head (and a fallback reshape) go before the Concat
        for before, after in ((old[0].outputs[0], mean), (old[1].outputs[0], motion)):
            name = before.name
            ir.convenience.replace_all_uses_with(before, after, replace_graph_outputs=True)
            before.name = None
            after.name = name  # the descriptor's halves keep their names
        graph.remove(old, safe=True)
        return from_ir(result)
    return copy_model(model)
