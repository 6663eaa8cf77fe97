"""A build-time rewrite of the gate's descriptor for ONNX Runtime's CPU kernels (docs/performance.md, "The gate").

The gate's head (``SoftModulationGate.descriptor``) summarises the stem features ``F [N, C, T, H, W]`` per channel:
the mean, and the mean absolute difference between consecutive frames. Exported, the difference is two ``Slice``
copies of ``F``, a ``Sub``, an ``Abs`` and two ``ReduceMean`` — five passes over the largest tensor of the gate,
all on plain NCHW kernels behind a reorder out of the blocked layout the stem's convolution wrote. With
r2plus1d_18 at 8×112×112 that was a quarter of the gate's time.

``motion_head_for_ort`` computes the same numbers on the 4-D view ``[N, C, T, H·W]`` the stem's temporal
convolution already produces (``ort_specialize.temporal_convs_as_2d``), with ops ONNX Runtime runs blocked:

* mean: ``GlobalAveragePool``;
* ``|d| = ReLU(d) + ReLU(-d)`` for ``d = F[t+1] - F[t]``: two depthwise ``2×1`` convolutions with weights
  ``(-1, 1)`` and ``(1, -1)``, each with its ReLU fused, each followed by ``GlobalAveragePool``; their sum is the
  mean absolute difference over the ``T-1`` pairs.

The stem's last ReLU sits before the reshape to 5-D, fused into the convolution (``temporal_convs_as_2d`` moves it),
so the head reads that 4-D view itself. Sums are regrouped, so
results match to float rounding; the build's parity check still compares against the unrewritten graph.
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


def _four_d_source(graph: _Graph, model: ModelProto, features: str, prefix: str) -> tuple[list[NodeProto], str]:
    """(nodes to add, name of the ``[N, C, T, H·W]`` view) of the features.

    If the features are a reshape of such a view (the temporal conv run as 2-D, its ReLU already moved before the
    reshape by ``ort_specialize.temporal_convs_as_2d``), that view is read directly; otherwise the features are
    reshaped to 4-D."""
    shape = graph.shapes[features]
    c, t, h, w = (int(d) for d in shape[1:])  # type: ignore[arg-type]
    reshape = _producer(model, features)
    view = [shape[0], c, t, h * w]
    if reshape is not None and reshape.op_type == "Reshape" and graph.shapes.get(reshape.input[0]) == view:
        return [], reshape.input[0]
    return (
        [
            _int64(f"{prefix}.shape4", [-1, c, t, h * w]),
            helper.make_node("Reshape", [features, f"{prefix}.shape4"], [f"{prefix}.f4"]),
        ],
        f"{prefix}.f4",
    )


def _head(
    f4: str, channels: int, mean_out: str, motion_out: str, prefix: str
) -> tuple[list[NodeProto], list[TensorProto]]:
    """Mean and mean absolute frame difference of ``f4 [N, C, T, H·W]`` as ``[N, C]`` each (module docstring)."""
    rising = np.zeros((channels, 1, 2, 1), np.float32)
    rising[:, 0, 0, 0], rising[:, 0, 1, 0] = -1.0, 1.0
    weights: list[TensorProto] = []
    nodes = [
        helper.make_node("GlobalAveragePool", [f4], [f"{prefix}.mean4"]),
        helper.make_node("Flatten", [f"{prefix}.mean4"], [mean_out], axis=1),
    ]
    halves = []
    for part, kernel in (("rising", rising), ("falling", -rising)):
        weights.append(numpy_helper.from_array(kernel, f"{prefix}_{part}"))
        nodes += [
            helper.make_node("Conv", [f4, weights[-1].name], [f"{prefix}.{part}"], group=channels, kernel_shape=[2, 1]),
            helper.make_node("Relu", [f"{prefix}.{part}"], [f"{prefix}.{part}.relu"]),
            helper.make_node("GlobalAveragePool", [f"{prefix}.{part}.relu"], [f"{prefix}.{part}.mean"]),
        ]
        halves.append(f"{prefix}.{part}.mean")
    nodes += [
        helper.make_node("Add", halves, [f"{prefix}.motion4"]),
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
        added, f4 = _four_d_source(graph, result, features, prefix)
        head, weights = _head(f4, int(graph.shapes[features][1]), old[0].output[0], old[1].output[0], prefix)  # type: ignore[arg-type]
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
