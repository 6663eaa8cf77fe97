"""Gate pass: the gate's descriptor on blocked kernels (docs/performance.md, "The gate").

The gate's head summarises the stem features ``F [N, C, T, H, W]`` per channel: the mean and the mean absolute
difference between consecutive frames, exported as two ``Slice`` copies, ``Sub``, ``Abs`` and two ``ReduceMean`` on
plain NCHW kernels. ``motion_head_for_ort`` computes the same numbers on a 4-D view in which every frame is a block of
rows (``ort_stacked``'s stacked tensor, else ``[N, C, T, H·W]``): frame means by one ``AveragePool``; ``|d| =
2·ReLU(d) - d`` for ``d = F[t+1] - F[t]`` by one depthwise ``2×1`` convolution with weights ``(-2, 2)`` and fused ReLU;
the mean of ``d`` telescopes to ``(m_{T-1} - m_0) / (T-1)``. Sums are regrouped, so results match to rounding.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .ort_graph import (
    SPECIALIZED_SUFFIX,
    Graph,
    analyse,
    attribute_int,
    attribute_ints,
    copy_model,
    int64_constant,
    splice,
)
from .ort_stacked import StackedFrames, stacked_source

ALL_BUT_BATCH_AND_CHANNEL = [2, 3, 4]


def _is_mean_over_clip(node: NodeProto | None) -> bool:
    return (
        node is not None
        and node.op_type == "ReduceMean"
        and node.domain == ""
        and len(node.input) == 1
        and attribute_ints(node, "axes", []) == ALL_BUT_BATCH_AND_CHANNEL
        and attribute_int(node, "keepdims") == 0
    )


def _time_slice(node: NodeProto | None, graph: Graph, frames: int) -> tuple[str, int, int] | None:
    """``(input, start, stop)`` of a unit-step ``Slice`` along axis 2 with constant bounds, clamped to ``frames``."""
    if node is None or node.op_type != "Slice" or node.domain != "" or len(node.input) < 4:
        return None
    bounds = [graph.constants(name) for name in node.input[1:] if name]
    if any(b is None or np.size(b) != 1 for b in bounds):
        return None
    start, stop, axis, step = [int(np.ravel(b)[0]) for b in bounds if b is not None] + [1] * (4 - len(bounds))
    if axis != 2 or step != 1:
        return None
    start, stop = (v + frames if v < 0 else v for v in (start, stop))
    return node.input[0], max(0, min(start, frames)), max(0, min(stop, frames))


def _match(graph: Graph, concat: NodeProto) -> tuple[list[NodeProto], str] | None:
    """The nodes of the exported descriptor feeding ``concat``, and the features they read; ``None`` otherwise."""
    if concat.op_type != "Concat" or len(concat.input) != 2 or attribute_int(concat, "axis") != 1:
        return None
    mean, motion = (graph.producers.get(name) for name in concat.input)
    if not (_is_mean_over_clip(mean) and _is_mean_over_clip(motion)):
        return None
    assert mean is not None and motion is not None
    features = mean.input[0]
    shape = graph.shapes.get(features)
    if shape is None or len(shape) != 5 or None in shape[1:]:
        return None
    frames = int(shape[2])  # type: ignore[arg-type]
    absolute = graph.producers.get(motion.input[0])
    sub = graph.producers.get(absolute.input[0]) if absolute is not None and absolute.op_type == "Abs" else None
    if sub is None or sub.op_type != "Sub" or absolute is None:
        return None
    later, earlier = (_time_slice(graph.producers.get(name), graph, frames) for name in sub.input)
    if later != (features, 1, frames) or earlier != (features, 0, frames - 1) or frames < 2:
        return None
    slices = [node for name in sub.input if (node := graph.producers.get(name)) is not None]  # both exist: matched
    exclusive = [absolute, sub, *slices]
    if any(len(graph.consumers.get(n.output[0], [])) != 1 for n in exclusive):
        return None
    return [mean, motion, *exclusive], features


def _frames_view(graph: Graph, features: str, prefix: str) -> tuple[list[NodeProto], str, StackedFrames]:
    """(nodes to add, name, layout) of a 4-D view of the features in which every frame is a block of rows.

    The stacked tensor of ``ort_stacked.stack_frames`` if the features were cut from one; else the
    ``[N, C, T, H·W]`` view (one row per frame) that the temporal conv run as 2-D already produces (its ReLU
    moved before the reshape by ``ort_specialize.temporal_convs_as_2d``); else a reshape of the features to it."""
    stacked = stacked_source(graph, features)
    if stacked is not None:
        return [], *stacked
    shape = graph.shapes[features]
    c, t, h, w = (int(d) for d in shape[1:])  # type: ignore[arg-type]
    layout = StackedFrames(frames=t, period=1, rows=1, width=h * w)
    reshape = graph.producers.get(features)
    view = [shape[0], c, t, h * w]
    if reshape is not None and reshape.op_type == "Reshape" and graph.shapes.get(reshape.input[0]) == view:
        return [], reshape.input[0], layout
    return (
        [
            int64_constant(f"{prefix}.shape4", [-1, c, t, h * w]),
            helper.make_node("Reshape", [features, f"{prefix}.shape4"], [f"{prefix}.f4"]),
        ],
        f"{prefix}.f4",
        layout,
    )


def _head(
    view: str, layout: StackedFrames, channels: int, mean_out: str, motion_out: str, prefix: str
) -> tuple[list[NodeProto], list[TensorProto]]:
    """Mean and mean absolute frame difference of ``view`` (laid out as ``layout``) as ``[N, C]`` each (module
    docstring)."""
    frames, period = layout.frames, layout.period
    window, step = [layout.rows, layout.width], [period, 1]  # one frame's rows, frame after frame
    rising = np.zeros((channels, 1, 2, 1), np.float32)
    rising[:, 0, 0, 0], rising[:, 0, 1, 0] = -2.0, 2.0
    drift = np.zeros((channels, 1, frames, 1), np.float32)
    drift[:, 0, 0, 0], drift[:, 0, -1, 0] = 1.0 / (frames - 1), -1.0 / (frames - 1)
    weights = [numpy_helper.from_array(rising, f"{prefix}_rising"), numpy_helper.from_array(drift, f"{prefix}_drift")]
    nodes = [
        helper.make_node("AveragePool", [view], [f"{prefix}.frame_means"], kernel_shape=window, strides=step),
        helper.make_node("GlobalAveragePool", [f"{prefix}.frame_means"], [f"{prefix}.mean4"]),
        helper.make_node("Flatten", [f"{prefix}.mean4"], [mean_out], axis=1),
        helper.make_node(
            "Conv",
            [view, weights[0].name],
            [f"{prefix}.rising"],
            group=channels,
            kernel_shape=[2, 1],
            dilations=[period, 1],
        ),
        helper.make_node("Relu", [f"{prefix}.rising"], [f"{prefix}.rising.relu"]),
        helper.make_node(
            "AveragePool", [f"{prefix}.rising.relu"], [f"{prefix}.rising.frames"], kernel_shape=window, strides=step
        ),
        helper.make_node("GlobalAveragePool", [f"{prefix}.rising.frames"], [f"{prefix}.rising.mean"]),
        helper.make_node(
            "Conv",
            [f"{prefix}.frame_means", weights[1].name],
            [f"{prefix}.drift"],
            group=channels,
            kernel_shape=[frames, 1],
        ),
        helper.make_node("Add", [f"{prefix}.rising.mean", f"{prefix}.drift"], [f"{prefix}.motion4"]),
        helper.make_node("Flatten", [f"{prefix}.motion4"], [motion_out], axis=1),
    ]
    return nodes, weights


def motion_head_for_ort(model: ModelProto) -> ModelProto:
    """A copy of a gate graph with its descriptor rewritten (module docstring); unchanged if none matches."""
    result = copy_model(model)
    graph = analyse(result)
    for concat in result.graph.node:
        found = _match(graph, concat)
        if found is None:
            continue
        old, features = found
        prefix = f"{features}{SPECIALIZED_SUFFIX}.head"
        added, view, layout = _frames_view(graph, features, prefix)
        channels = int(graph.shapes[features][1])  # type: ignore[arg-type]
        head, weights = _head(view, layout, channels, old[0].output[0], old[1].output[0], prefix)
        removed = {n.output[0] for n in old}  # nodes by their (unique) first output
        nodes: list[NodeProto] = []
        for node in result.graph.node:
            if node.output[0] == concat.output[0]:  # the head (and a fallback reshape) go before the Concat
                nodes += [*added, *head]
            if node.output[0] not in removed:
                nodes.append(node)
        splice(result, nodes, weights)
        return result
    return result
