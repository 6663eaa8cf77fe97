"""Temporal-only 3-D convolutions run as 2-D ones, for ONNX Runtime's CPU kernels (docs/performance.md).

A 3-D ``Conv`` whose kernel and stride are 1 in both spatial axes (the temporal half of every r(2+1)d block, the
second conv of its stem) becomes ``Reshape → 2-D Conv → Reshape`` over the free view ``[N, C, T, H·W]``: the same
sums on ONNX Runtime's 2-D kernels instead of its 3-D im2col path. The weight is a ``Reshape`` of the shared
initializer (folded at load), so the engines still share one ``weights.bin``; a ``ReLU`` right after moves before
the reshape back to 5-D, where ONNX Runtime fuses it into the convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import ModelProto, NodeProto, helper

from .ort_graph import (
    SPECIALIZED_SUFFIX,
    Graph,
    analyse,
    attribute_int,
    attribute_ints,
    copy_model,
    int64_constant,
    sole_consumer,
    splice,
    static_5d,
)


@dataclass
class _Rewrite2d:
    """A temporal convolution's 2-D replacement and the node (its ReLU) it absorbed."""

    nodes: list[NodeProto]
    absorbed: list[NodeProto]


def _temporal_conv_as_2d(node: NodeProto, index: int, graph: Graph) -> _Rewrite2d | None:
    """A 3-D ``Conv`` whose kernel and stride are 1 in both spatial axes (the temporal halves of r(2+1)d, its
    stem's second conv) as a 2-D ``Conv`` over the free view ``[N, C, T, H·W]``: the same sums, on ONNX Runtime's
    2-D kernels instead of its 3-D im2col path (docs/performance.md). A ``ReLU`` right after moves before the
    reshape back to 5-D, where ONNX Runtime fuses it into the convolution. ``None`` if the node is anything
    else."""
    if node.op_type != "Conv" or node.domain != "" or len(node.input) < 2:
        return None
    dims = static_5d(graph, node.input[0])
    weight = graph.constants(node.input[1])
    out_shape = graph.shapes.get(node.output[0])
    if dims is None or weight is None or weight.ndim != 5 or out_shape is None or len(out_shape) != 5:
        return None
    kernel = attribute_ints(node, "kernel_shape", list(weight.shape[2:]))
    strides = attribute_ints(node, "strides", [1, 1, 1])
    pads = attribute_ints(node, "pads", [0] * 6)
    spatial_one = kernel[1:] == [1, 1] and strides[1:] == [1, 1] and pads[1:3] + pads[4:] == [0, 0, 0, 0]
    group = attribute_int(node, "group", 1)
    plain = attribute_ints(node, "dilations", [1, 1, 1]) == [1, 1, 1] and group == 1
    if not (spatial_one and plain) or any(a.name == "auto_pad" for a in node.attribute):
        return None
    c, _, h, w = dims
    c_out, t_out = int(weight.shape[0]), out_shape[2]
    if t_out is None:
        return None
    prefix = f"{node.output[0]}{SPECIALIZED_SUFFIX}2d"
    x4, w4, y4 = f"{prefix}.x", f"{prefix}.w", f"{prefix}.y"
    relu = sole_consumer(graph, node.output[0], "Relu")
    output = relu.output[0] if relu is not None else node.output[0]
    activated = [helper.make_node("Relu", [y4], [f"{prefix}.r"])] if relu is not None else []
    conv = helper.make_node(
        "Conv",
        [x4, w4, *node.input[2:]],
        [y4],
        name=node.name or f"temporal_conv_2d_{index}",
        kernel_shape=[kernel[0], 1],
        strides=[strides[0], 1],
        pads=[pads[0], 0, pads[3], 0],
    )
    nodes = [
        int64_constant(f"{prefix}.xshape", [0, c, dims[1], h * w]),
        helper.make_node("Reshape", [node.input[0], f"{prefix}.xshape"], [x4]),
        int64_constant(f"{prefix}.wshape", [c_out, c, kernel[0], 1]),  # folded by ONNX Runtime at load (a constant)
        helper.make_node("Reshape", [node.input[1], f"{prefix}.wshape"], [w4]),
        conv,
        *activated,
        int64_constant(f"{prefix}.yshape", [0, c_out, int(t_out), h, w]),
        helper.make_node("Reshape", [activated[-1].output[0] if activated else y4, f"{prefix}.yshape"], [output]),
    ]
    return _Rewrite2d(nodes, [relu] if relu is not None else [])


def temporal_convs_as_2d(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every top-level ``Conv`` that ``_temporal_conv_as_2d`` accepts run as a 2-D one
    (module docstring); unchanged if there is none."""
    result = copy_model(model)
    graph = analyse(result)
    rewrites: list[_Rewrite2d | None] = []
    for node in result.graph.node:
        rewrites.append(_temporal_conv_as_2d(node, sum(r is not None for r in rewrites), graph))
    if not any(rewrites):
        return result
    absorbed = {o for r in rewrites if r is not None for a in r.absorbed for o in a.output}
    nodes = [
        new
        for node, rewrite in zip(result.graph.node, rewrites, strict=True)
        if not (rewrite is None and any(o in absorbed for o in node.output))
        for new in (rewrite.nodes if rewrite is not None else [node])
    ]
    splice(result, nodes)
    return result
