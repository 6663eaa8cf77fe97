"""A build-time rewrite of the gate's descriptor for ONNX Runtime's CPU kernels (docs/performance.md, "The gate").

The gate's head (``SoftModulationGate.descriptor``) summarises the stem features ``F [N, C, T, H, W]`` per channel:
the mean, and the mean absolute difference between consecutive frames. Exported, the difference is two ``Slice``
copies of ``F``, a ``Sub``, an ``Abs`` and two ``ReduceMean`` — five passes over the largest tensor of the gate,
all on plain NCHW kernels behind a reorder out of the blocked layout the stem's convolution wrote. With
r2plus1d_18 at 8×112×112 that was a quarter of the gate's time.

``motion_head_for_ort`` computes the same numbers on a 4-D view of the features in which every frame is a block of
rows: the stacked tensor ``[N, C, T·period, W]`` of ``ort_stacked`` where the stem ran on stacked frames, else
``[N, C, T, H·W]`` (one row per frame, the view the temporal conv run as 2-D writes, its ReLU moved before the
reshape by ``ort_specialize.temporal_convs_as_2d``). All with ops ONNX Runtime runs blocked:

* frame means ``m_t``: one ``AveragePool`` over a frame's rows, stepping ``period`` rows; the mean is their
  ``GlobalAveragePool``;
* ``|d| = 2·ReLU(d) - d`` for ``d = F[t+1] - F[t]``: one depthwise ``2×1`` convolution with weights ``(-2, 2)``,
  dilated by ``period``, its ReLU fused, averaged frame by frame and then over the ``T-1`` pairs; the mean of ``d``
  itself telescopes to ``(m_{T-1} - m_0) / (T-1)``, a depthwise ``T×1`` convolution of the frame means.

One pass over the features for the frame means and one for the differences (the earlier ``ReLU(d) + ReLU(-d)``
took two convolutions and three pools). Sums are regrouped, so results match to float rounding; the build's
parity check still compares against the unrewritten graph.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from .ort_specialize import (
    SPECIALIZED_SUFFIX,
    _analyse,
    _attribute,
    _attribute_int,
    _Graph,
    _int64,
    _replace_nodes,
)
from .ort_stacked import StackedFrames, stacked_source

ALL_BUT_BATCH_AND_CHANNEL = [2, 3, 4]


def _producer(model: ModelProto, name: str) -> NodeProto | None:
    return next((n for n in model.graph.node if name in n.output), None)


def _is_mean_over_clip(node: NodeProto | None) -> bool:
    return (
        node is not None
        and node.op_type == "ReduceMean"
        and node.domain == ""
        and len(node.input) == 1
        and _attribute(node, "axes", []) == ALL_BUT_BATCH_AND_CHANNEL
        and _attribute_int(node, "keepdims") == 0
    )


def _time_slice(node: NodeProto | None, graph: _Graph, frames: int) -> tuple[str, int, int] | None:
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


def _match(model: ModelProto, graph: _Graph, concat: NodeProto) -> tuple[list[NodeProto], str] | None:
    """The nodes of the exported descriptor feeding ``concat``, and the features they read; ``None`` otherwise."""
    if concat.op_type != "Concat" or len(concat.input) != 2 or _attribute_int(concat, "axis") != 1:
        return None
    mean, motion = (_producer(model, name) for name in concat.input)
    if not (_is_mean_over_clip(mean) and _is_mean_over_clip(motion)):
        return None
    assert mean is not None and motion is not None
    features = mean.input[0]
    shape = graph.shapes.get(features)
    if shape is None or len(shape) != 5 or None in shape[1:]:
        return None
    frames = int(shape[2])  # type: ignore[arg-type]
    absolute = _producer(model, motion.input[0])
    sub = _producer(model, absolute.input[0]) if absolute is not None and absolute.op_type == "Abs" else None
    if sub is None or sub.op_type != "Sub" or absolute is None:
        return None
    later, earlier = (_time_slice(_producer(model, name), graph, frames) for name in sub.input)
    if later != (features, 1, frames) or earlier != (features, 0, frames - 1) or frames < 2:
        return None
    slices = [node for name in sub.input if (node := _producer(model, name)) is not None]  # both exist: matched
    exclusive = [absolute, sub, *slices]
    if any(len(graph.consumers.get(n.output[0], [])) != 1 for n in exclusive):
        return None
    return [mean, motion, *exclusive], features


def _frames_view(
    graph: _Graph, model: ModelProto, features: str, prefix: str
) -> tuple[list[NodeProto], str, StackedFrames]:
    """(nodes to add, name, layout) of a 4-D view of the features in which every frame is a block of rows.

    The stacked tensor of ``ort_stacked.stack_frames`` if the features were cut from one; else the
    ``[N, C, T, H·W]`` view (one row per frame) that the temporal conv run as 2-D already produces (its ReLU
    moved before the reshape by ``ort_specialize.temporal_convs_as_2d``); else a reshape of the features to it."""
    stacked = stacked_source(model, graph, features)
    if stacked is not None:
        return [], *stacked
    shape = graph.shapes[features]
    c, t, h, w = (int(d) for d in shape[1:])  # type: ignore[arg-type]
    layout = StackedFrames(frames=t, period=1, rows=1, width=h * w)
    reshape = _producer(model, features)
    view = [shape[0], c, t, h * w]
    if reshape is not None and reshape.op_type == "Reshape" and graph.shapes.get(reshape.input[0]) == view:
        return [], reshape.input[0], layout
    return (
        [
            _int64(f"{prefix}.shape4", [-1, c, t, h * w]),
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
    result = ModelProto()
    result.CopyFrom(model)
    graph = _analyse(result)
    for concat in result.graph.node:
        found = _match(result, graph, concat)
        if found is None:
            continue
        old, features = found
        prefix = f"{features}{SPECIALIZED_SUFFIX}.head"
        added, view, layout = _frames_view(graph, result, features, prefix)
        channels = int(graph.shapes[features][1])  # type: ignore[arg-type]
        head, weights = _head(view, layout, channels, old[0].output[0], old[1].output[0], prefix)
        removed = {n.output[0] for n in old}  # nodes by their (unique) first output
        nodes: list[NodeProto] = []
        for node in result.graph.node:
            if node.output[0] == concat.output[0]:  # the head (and a fallback reshape) go before the Concat
                nodes += [*added, *head]
            if node.output[0] not in removed:
                nodes.append(node)
        _replace_nodes(result, nodes, weights)
        return result
    return result
