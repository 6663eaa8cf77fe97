"""Gate pass: middle channels padded to ONNX Runtime's channel block (docs/performance.md, "The gate").

``Conv → Relu → Conv`` whose middle channel count is not a multiple of 16 (r2plus1d's stem has 45) gets zero
filters (and zero biases) up to the next multiple, and the second convolution zero weights for them: ReLU(0) is 0
and a zero weight adds nothing, so the sums are the same, and the second convolution then runs on ONNX Runtime's
blocked NCHWc kernels. Only while the growth stays within ``MAX_PADDING_GROWTH``. Written with onnx-ir.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import ModelProto

from .ort_graph import SPECIALIZED_SUFFIX, copy_model, from_ir, ir_constant, ir_initializer, ir_sole_consumer, to_ir

#: ONNX Runtime's widest NCHWc block (AVX-512); a multiple of it is also one of the AVX2 block of 8.
CHANNEL_BLOCK = 16
#: Padding is worth it only while the extra zero filters stay cheap against the faster kernel.
MAX_PADDING_GROWTH = 0.125


def ir_conv_weight(node: ir.Node) -> np.ndarray | None:
    """The constant weight of a plain (ungrouped, undilated) default-domain ``Conv``, else ``None``."""
    if node.op_type != "Conv" or node.domain != "" or len(node.inputs) < 2:
        return None
    weight = ir_constant(node.inputs[1]) if node.attributes.get_int("group", 1) == 1 else None
    if weight is None or list(node.attributes.get_ints("dilations", [1] * (weight.ndim - 2))) != [1] * (
        weight.ndim - 2
    ):
        return None
    return weight


def _pad_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, axis: int, size: int) -> None:
    """Feed ``node``'s input ``index`` from a new initializer ``<name>.ort.pad``: ``array`` zero-padded to ``size``
    along ``axis``."""
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    name = f"{node.inputs[index].name}{SPECIALIZED_SUFFIX}.pad"  # type: ignore[union-attr]
    node.replace_input_with(index, ir_initializer(graph, name, np.pad(array, widths).astype(np.float32)))


def pad_conv_pairs(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with the middle channels of every ``Conv → Relu → Conv`` chain padded to a multiple of
    ``CHANNEL_BLOCK`` (module docstring); unchanged if none needs it cheaply."""
    result = to_ir(model)
    graph = result.graph
    padded_any = False
    for first in list(graph):
        w1 = ir_conv_weight(first)
        relu = ir_sole_consumer(first.outputs[0], "Relu") if w1 is not None else None
        second = ir_sole_consumer(relu.outputs[0], "Conv") if relu is not None else None
        w2 = ir_conv_weight(second) if second is not None and second.inputs[0] is relu.outputs[0] else None  # type: ignore[union-attr]
        if w1 is None or second is None or w2 is None:
            continue
        channels = int(w1.shape[0])
        padded = -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK
        if padded == channels or padded > channels * (1 + MAX_PADDING_GROWTH):
            continue
        has_bias = len(first.inputs) > 2 and first.inputs[2] is not None
        bias = ir_constant(first.inputs[2]) if has_bias else None
        if has_bias and bias is None:
            continue
        _pad_input(graph, first, 1, w1, 0, padded)
        _pad_input(graph, second, 1, w2, 1, padded)
        if bias is not None:
            _pad_input(graph, first, 2, bias, 0, padded)
        padded_any = True
    # The padded convolutions' shapes changed: no recorded shape is kept.
    return from_ir(result) if padded_any else copy_model(model)
