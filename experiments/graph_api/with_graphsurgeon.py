"""Prototype: the same two ONNX Runtime passes written with NVIDIA's onnx-graphsurgeon (issue 23 item 1).

GraphSurgeon has no pattern language: both passes walk ``graph.nodes`` and rewire ``gs.Variable`` / ``gs.Constant``
objects by hand, then ``cleanup()`` and ``toposort()``. Compared with the engines' onnx-ir passes by ``compare.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

CHANNEL_BLOCK = 16
MAX_PADDING_GROWTH = 0.125


def _static_5d(tensor: gs.Tensor) -> list[int] | None:
    shape = tensor.shape
    if shape is None or len(shape) != 5 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return [int(d) for d in shape[1:]]


def _sole_consumer(tensor: gs.Tensor, op: str, graph: gs.Graph) -> gs.Node | None:
    users = tensor.outputs
    if len(users) != 1 or users[0].op != op or tensor in graph.outputs:
        return None
    return users[0]


def _constant(name: str, values: list[int]) -> gs.Constant:
    return gs.Constant(name, np.asarray(values, dtype=np.int64))


def temporal_conv_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    for index, node in enumerate(list(graph.nodes)):
        if node.op != "Conv" or node.domain not in ("", None) or len(node.inputs) < 2:
            continue
        x, w = node.inputs[0], node.inputs[1]
        dims, out = _static_5d(x), _static_5d(node.outputs[0])
        if dims is None or out is None or not isinstance(w, gs.Constant) or w.values.ndim != 5:
            continue
        kernel = node.attrs.get("kernel_shape", list(w.values.shape[2:]))
        strides, pads = node.attrs.get("strides", [1, 1, 1]), node.attrs.get("pads", [0] * 6)
        if list(kernel[1:]) != [1, 1] or list(strides[1:]) != [1, 1] or list(pads[1:3]) + list(pads[4:]) != [0] * 4:
            continue
        if node.attrs.get("dilations", [1, 1, 1]) != [1, 1, 1] or node.attrs.get("group", 1) != 1:
            continue
        if "auto_pad" in node.attrs:
            continue
        c, t, h, width = dims
        c_out = int(w.values.shape[0])
        prefix = f"{node.outputs[0].name}.ort2d"
        relu = _sole_consumer(node.outputs[0], "Relu", graph)
        output = relu.outputs[0] if relu is not None else node.outputs[0]
        x4, w4, y4 = (gs.Variable(f"{prefix}.{part}", dtype=np.float32) for part in ("x", "w", "y"))
        new = [
            gs.Node("Reshape", inputs=[x, _constant(f"{prefix}.xshape", [0, c, t, h * width])], outputs=[x4]),
            gs.Node("Reshape", inputs=[w, _constant(f"{prefix}.wshape", [c_out, c, kernel[0], 1])], outputs=[w4]),
            gs.Node(
                "Conv",
                name=node.name or f"temporal_conv_2d_{index}",
                inputs=[x4, w4, *node.inputs[2:]],
                outputs=[y4],
                attrs={"kernel_shape": [kernel[0], 1], "strides": [strides[0], 1], "pads": [pads[0], 0, pads[3], 0]},
            ),
        ]
        if relu is not None:
            r = gs.Variable(f"{prefix}.r", dtype=np.float32)
            new.append(gs.Node("Relu", inputs=[y4], outputs=[r]))
            y4 = r
            relu.outputs.clear()
        node.outputs.clear()
        shape = _constant(f"{prefix}.yshape", [0, c_out, out[1], h, width])
        new.append(gs.Node("Reshape", inputs=[y4, shape], outputs=[output]))
        graph.nodes.extend(new)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def pad_conv_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    for first in list(graph.nodes):
        if first.op != "Conv" or first.attrs.get("group", 1) != 1 or len(first.inputs) < 2:
            continue
        w1 = first.inputs[1]
        relu = _sole_consumer(first.outputs[0], "Relu", graph) if isinstance(w1, gs.Constant) else None
        second = _sole_consumer(relu.outputs[0], "Conv", graph) if relu is not None else None
        if second is None or second.inputs[0] is not relu.outputs[0] or second.attrs.get("group", 1) != 1:
            continue
        w2, bias = second.inputs[1], first.inputs[2] if len(first.inputs) > 2 else None
        if not isinstance(w2, gs.Constant) or (bias is not None and not isinstance(bias, gs.Constant)):
            continue
        channels = w1.values.shape[0]
        padded = -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK
        if padded == channels or padded > channels * (1 + MAX_PADDING_GROWTH):
            continue
        for node, index, axis in ((first, 1, 0), (second, 1, 1), *(((first, 2, 0),) if bias is not None else ())):
            old = node.inputs[index]
            widths = [(0, 0)] * old.values.ndim
            widths[axis] = (0, padded - old.values.shape[axis])
            node.inputs[index] = gs.Constant(f"{old.name}.ort.pad", np.pad(old.values, widths).astype(np.float32))
    graph.cleanup()
    return gs.export_onnx(graph)
