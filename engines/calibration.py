"""Calibration for int8 engines: clip sets passed in as data, and per-tensor activation ranges measured on them.

The engines layer does not read videos (it may not import ``vared2.runtime`` or ``vared2.models``): the caller
decodes DATA_DIR's clips and hands them over as a ``ClipSet``. ``activation_ranges`` is the calibration reader
every int8 path shares (ONNX Runtime's QDQ here; TensorRT's explicit Q/DQ can call it too): it runs a graph on
each feed with every float tensor as an output and keeps a running min/max, so memory stays that of one run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from vared2.formats.errors import InputError

#: Ops whose output holds (a subset of) their first input's values: quantized with the input's scale.
SCALE_PRESERVING = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice")


@dataclass(frozen=True)
class ClipSet:
    """Clips for calibration or validation: uint8 ``[T, H, W, 3]`` each, their labels (-1 when unknown), and
    where they came from (``source``, ``names``: the clip list, hashed into the manifest)."""

    clips: Sequence[np.ndarray]
    labels: Sequence[int]
    source: str
    names: Sequence[str]

    def __post_init__(self) -> None:
        if not self.clips:
            raise InputError(f"{self.source}: no clips to calibrate or validate with")
        if not len(self.clips) == len(self.labels) == len(self.names):
            raise InputError(
                f"{self.source}: {len(self.clips)} clips, {len(self.labels)} labels and {len(self.names)} names"
            )
        first = self.clips[0].shape
        for name, clip in zip(self.names, self.clips, strict=True):
            if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape != first:
                raise InputError(
                    f"{self.source}: clip {name}: expected uint8 {list(first)} [T, H, W, 3] like the first, "
                    f"got {clip.dtype} {list(clip.shape)}"
                )

    def digest(self) -> str:
        """sha256 of the clip list (names in order): the same clips in the same order give the same hash."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    def batches(self, size: int) -> Iterable[np.ndarray]:
        """The clips stacked ``[N, T, H, W, 3]``, ``size`` at a time."""
        for start in range(0, len(self.clips), size):
            yield np.stack(self.clips[start : start + size])


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float32 tensor a node of the main graph reads or writes, and the float graph inputs (initializers
    excluded: they are weights, quantized by their own values), in graph order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    names: list[str] = []
    seen: set[str] = set()
    for name in [*(i.name for i in graph.input), *(t for n in graph.node for t in [*n.input, *n.output])]:
        if name and name not in seen and name not in constants and types.get(name) == onnx.TensorProto.FLOAT:
            seen.add(name)
            names.append(name)
    return names


def activation_ranges(
    model: onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str] | None = None,
    *,
    threads: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Per-tensor ``(min, max)`` of ``tensors`` (default: ``float_tensors(model)``) over every feed (MinMax).

    ``model`` holds its weights (in memory or next to it); local functions must be inlined first for their
    insides to be seen. The ranges always include 0, as a quantizer's zero point needs it.
    """
    names = list(tensors) if tensors is not None else float_tensors(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    runs = 0
    for feed in feeds:
        for name, value in zip(names, session.run(names, dict(feed)), strict=True):
            if value.size:
                low[name] = min(low[name], float(value.min()))
                high[name] = max(high[name], float(value.max()))
        runs += 1
    if not runs:
        raise InputError("activation_ranges: no calibration feeds")
    return {n: (min(low[n], 0.0), max(high[n], 0.0)) for n in names if np.isfinite(low[n])}


def share_concat_ranges(
    model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """``ranges`` with every ``Concat``'s inputs and output given their union range, so they quantize with one
    scale and the Concat runs on int8 directly instead of re-quantizing each input (a DQ → Q pair before it).
    The union is transitive: through a tensor that feeds two Concats, and through the ops that only move values
    (``SCALE_PRESERVING``: a Concat input that is a ``Reshape`` of a convolution's output shares the convolution
    output's scale, else the pair comes back in front of the ``Reshape``)."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for node in model.graph.node:
        if node.op_type == "Concat":
            group = [t for t in [*node.input, *node.output] if t in ranges]
        elif node.op_type in SCALE_PRESERVING and node.input and node.output:
            group = [t for t in (node.input[0], node.output[0]) if t in ranges]
        else:
            continue
        for t in group[1:]:
            parent[root(t)] = root(group[0])
    concats = {root(t) for n in model.graph.node if n.op_type == "Concat" for t in n.output if t in ranges}
    union: dict[str, tuple[float, float]] = {}
    for t in parent:
        r, (low, high) = root(t), ranges[t]
        old = union.get(r, (low, high))
        union[r] = (min(old[0], low), max(old[1], high))
    return {t: union[root(t)] if t in parent and root(t) in concats else value for t, value in ranges.items()}
