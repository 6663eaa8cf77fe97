"""The ONNX graphs TensorRT builds from, per precision: strongly typed networks take precision from the graph.

``fp16_graph``: weights and activations fp16 (onnxconverter-common's ``convert_float_to_float16``; why this
converter: docs/design.md), the uint8 clip input as it is, the named logits cast back to fp32 at the edge.
``qdq_graph``: symmetric int8 QuantizeLinear/DequantizeLinear pairs on the top-level convolutions (per-channel
weights, per-tensor activations from ``{tensor name: amax}``), TensorRT's explicit quantization; everything
else stays fp32. ``max_abs_ranges`` is a plain max-|x| calibration over feeds. Both graphs also run on ONNX
Runtime's CPU, which is how they are tested here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vared2.formats.errors import InputError

#: The graph outputs that stay fp32 in an fp16 graph: the gate's bucket choice and every bucket's logits.
FP32_OUTPUTS = ("bucket_logits", "logits")
INT8_MAX = 127  # symmetric int8: [-127, 127], zero point 0 (TensorRT's explicit quantization)


def fp16_graph(model: onnx.ModelProto, fp32_outputs: Sequence[str] = FP32_OUTPUTS) -> onnx.ModelProto:
    """A copy of ``model`` computing in fp16: float inputs, initializers and activations become fp16, non-float
    inputs (the uint8 clip) stay, and the outputs named in ``fp32_outputs`` are cast back to fp32."""
    from onnxconverter_common.float16 import convert_float_to_float16

    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        raise InputError(f"fp16_graph: graph {model.graph.name!r} already has fp16 weights (converted twice?)")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for node in work.graph.node:  # the converter keeps Cast's target: the clip's Cast must produce fp16 now
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
    with warnings.catch_warnings():  # one warning per weight beyond fp16's range (clamped to it), expected
        warnings.simplefilter("ignore", UserWarning)
        half = convert_float_to_float16(work, keep_io_types=False, check_fp16_ready=False)
    graph = half.graph
    for output in graph.output:
        if output.name not in fp32_outputs or output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = f"{output.name}_fp16"
        for node in graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
        graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
        output.type.tensor_type.elem_type = TensorProto.FLOAT
        kept = [v for v in graph.value_info if v.name != output.name]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    onnx.checker.check_model(half, full_check=True)  # also type-checks the vared2 function bodies in fp16
    return half


def conv_activation_inputs(model: onnx.ModelProto) -> list[str]:
    """The tensors that need an activation range for ``qdq_graph``: the data input of every top-level ``Conv``
    whose weight is an initializer, in graph order, each once."""
    initializers = {t.name for t in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        top_level_conv = node.domain == "" and node.op_type == "Conv" and node.input[1] in initializers
        if top_level_conv and node.input[0] not in names:
            names.append(node.input[0])
    return names


def _scale(amax: float, what: str) -> float:
    if not math.isfinite(amax) or amax <= 0:
        raise InputError(f"activation range of {what}: expected a finite amax > 0, got {amax!r}")
    return float(amax) / INT8_MAX


def qdq_graph(model: onnx.ModelProto, ranges: Mapping[str, float]) -> onnx.ModelProto:
    """A copy of ``model`` with symmetric int8 Q/DQ on its top-level convolutions: each activation input
    ``x`` (amax ``ranges[x]``) through one QuantizeLinear/DequantizeLinear pair shared by its readers, each
    weight stored as int8 with one fp32 scale per output channel and a DequantizeLinear (axis 0)."""
    activations = conv_activation_inputs(model)
    missing = [name for name in activations if name not in ranges]
    if missing:
        raise InputError(f"qdq_graph: no activation range for {len(missing)} conv inputs, e.g. {missing[:3]}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    added: list[onnx.NodeProto] = []
    for x in activations:
        scale = _scale(ranges[x], repr(x))
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), f"{x}_qscale"),
                numpy_helper.from_array(np.array(0, np.int8), f"{x}_qzero"),
            ]
        )
        added.append(helper.make_node("QuantizeLinear", [x, f"{x}_qscale", f"{x}_qzero"], [f"{x}_q"]))
        added.append(helper.make_node("DequantizeLinear", [f"{x}_q", f"{x}_qscale", f"{x}_qzero"], [f"{x}_dq"]))
    convs = [n for n in graph.node if n.domain == "" and n.op_type == "Conv" and n.input[1] in weights]
    quantized_weights: set[str] = set()
    for node in convs:
        node.input[0] = f"{node.input[0]}_dq"
        name = node.input[1]
        node.input[1] = f"{name}_dq"
        readers[name] -= 1
        if name in quantized_weights:  # a weight shared by several convolutions: one DequantizeLinear
            continue
        quantized_weights.add(name)
        w = numpy_helper.to_array(weights[name]).astype(np.float32)
        amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scales = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)  # an all-zero filter stays zero
        view = scales.reshape((-1,) + (1,) * (w.ndim - 1))
        quantized = np.clip(np.rint(w / view), -INT8_MAX, INT8_MAX).astype(np.int8)
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int8"),
                numpy_helper.from_array(scales, f"{name}_wscale"),
                numpy_helper.from_array(np.zeros(len(scales), np.int8), f"{name}_wzero"),
            ]
        )
        inputs = [f"{name}_int8", f"{name}_wscale", f"{name}_wzero"]
        added.append(helper.make_node("DequantizeLinear", inputs, [f"{name}_dq"], axis=0))
    kept = [t for t in graph.initializer if t.name not in quantized_weights or readers.get(t.name, 0) > 0]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*added, *graph.node]  # Q/DQ read only graph inputs, initializers or earlier outputs: sorted below
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer}))
    onnx.checker.check_model(out, full_check=True)
    return out


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every input is produced before it is read (stable otherwise)."""
    ready, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                order.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise InputError(f"graph has a cycle or reads unknown tensors at node {waiting[0].name!r}")
        pending = waiting
    return order


def max_abs_ranges(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """``{tensor: max |x|}`` over ``feeds`` for every tensor ``qdq_graph`` needs, run on ONNX Runtime's CPU."""
    import onnxruntime as ort

    names = conv_activation_inputs(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    seen = 0
    for feed in feeds:
        values = session.run(names, dict(feed))
        for name, value in zip(names, values, strict=True):
            amax[name] = max(amax[name], float(np.abs(value).max()))
        seen += 1
    if seen == 0:
        raise InputError("max_abs_ranges: no calibration feeds were given")
    return amax
