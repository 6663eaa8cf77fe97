"""Build-time removal of reconstructed frames that nothing reads (docs/performance.md, "Frames nothing reads").

ϕt (``vared2::TemporalReconstruct``, factor ``R``) turns the partial convolution's ``T/R`` frames into ``T``:
frame ``R·k`` is computed frame ``k`` itself (``a[0] = 1``, ``b[0] = 0``, DESIGN.md §2) and the ``R - 1`` frames
after it are rebuilt. When every reader of the result — through per-frame ops: ϕs, a per-channel ``Add``, ``ReLU``
— is a convolution with a temporal kernel of 1, no temporal padding and a temporal stride ``s·R``, those readers
only ever see frames ``0, s·R, 2·s·R, …``: computed frames. The rebuilt frames are dead work.

In r(2+1)d that is the middle of every residual block of a temporally reduced stage: the first ``Conv2Plus1D``'s
temporal half is reconstructed, normalised and activated, then read only by the second one's spatial ``1×3×3``
convolution, which has temporal stride ``R``. In mc3's 2-D stages it is the first convolution of every block.
``skip_unread_frames`` drops such a ϕt node, lets the per-frame ops run on the ``T/R`` computed frames and divides
the readers' temporal stride by ``R``: exact (the same numbers reach every reader), and the per-frame ops run on a
``1/R`` of the frames. The exported files keep the node (DESIGN.md §4); only the ONNX Runtime engine drops it,
and the build's parity check compares the engine with the exported graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, NodeProto

from vared2.plugins import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

from .ort_specialize import _analyse, _attribute, _Graph, _prune

#: Ops between ϕt and its readers that treat every frame alike (so they commute with picking frames).
_PER_FRAME = {("", "Relu"), (DOMAIN, CHANNEL_RECONSTRUCT)}


def _per_frame_add(node: NodeProto, value: str, graph: _Graph) -> bool:
    """An ``Add`` of ``value`` and a constant that does not vary along time (a per-channel BatchNorm shift)."""
    if node.op_type != "Add" or node.domain != "" or len(node.input) != 2:
        return False
    other = graph.constants(node.input[1] if node.input[0] == value else node.input[0])
    return other is not None and (other.ndim < 3 or other.shape[-3] == 1)


def _reads_every_rth_frame(node: NodeProto, factor: int, graph: _Graph) -> bool:
    """A 3-D ``Conv`` with temporal kernel 1, no temporal padding and a temporal stride divisible by ``factor``."""
    if node.op_type != "Conv" or node.domain != "" or any(a.name == "auto_pad" for a in node.attribute):
        return False
    weight = graph.constants(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.ndim != 5:
        return False
    kernel = _attribute(node, "kernel_shape", list(weight.shape[2:]))
    strides = _attribute(node, "strides", [1, 1, 1])
    pads = _attribute(node, "pads", [0] * 6)
    return kernel[0] == 1 and pads[0] == 0 and pads[3] == 0 and strides[0] % factor == 0


def _unread_chain(node: NodeProto, graph: _Graph) -> tuple[list[str], list[NodeProto]] | None:
    """The per-frame values after a ϕt node whose rebuilt frames nothing reads and their readers (strided
    convolutions), else ``None``."""
    scale, shift = graph.constants(node.input[1]), graph.constants(node.input[2])
    if scale is None or shift is None or scale.ndim != 2 or not (np.all(scale[0] == 1) and np.all(shift[0] == 0)):
        return None
    factor = scale.shape[0]
    value = node.output[0]
    chain = [value]
    while True:
        if value in graph.outputs:
            return None
        users = graph.consumers.get(value, [])
        if len(users) == 1 and (
            (users[0].domain, users[0].op_type) in _PER_FRAME or _per_frame_add(users[0], value, graph)
        ):
            value = users[0].output[0]
            chain.append(value)
            continue
        if users and all(_reads_every_rth_frame(user, factor, graph) for user in users):
            return chain, users
        return None


def skip_unread_frames(model: ModelProto) -> ModelProto:
    """A copy of ``model`` without the ϕt nodes whose rebuilt frames nothing reads (see the module docstring)."""
    result = ModelProto()
    result.CopyFrom(model)
    if not any(n.domain == DOMAIN and n.op_type == TEMPORAL_RECONSTRUCT for n in result.graph.node):
        return result
    graph = _analyse(result)
    renamed: dict[str, str] = {}
    dropped: set[int] = set()
    fewer_frames: dict[str, int] = {}
    for position, node in enumerate(result.graph.node):
        if node.domain != DOMAIN or node.op_type != TEMPORAL_RECONSTRUCT:
            continue
        found = _unread_chain(node, graph)
        if found is None:
            continue
        chain, readers = found
        factor = int(graph.constants(node.input[1]).shape[0])  # type: ignore[union-attr]
        fewer_frames.update((value, factor) for value in chain[1:])
        for reader in readers:
            strides = next(a for a in reader.attribute if a.name == "strides")
            strides.ints[0] //= factor
        renamed[node.output[0]] = node.input[0]
        dropped.add(position)
    if not dropped:
        return result
    kept = [n for i, n in enumerate(result.graph.node) if i not in dropped]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    del result.graph.node[:]
    result.graph.node.extend(kept)
    _prune(result)  # the dropped nodes' coefficients
    # The per-frame values now carry T/R frames. Keep every other recorded shape: shape inference cannot see
    # through the generic functions of the remaining vared2 nodes, and the specialisation needs the shapes.
    for info in result.graph.value_info:
        factor = fewer_frames.get(info.name, 1)
        dims = info.type.tensor_type.shape.dim
        if factor > 1 and len(dims) == 5 and dims[2].HasField("dim_value"):
            dims[2].dim_value //= factor
    onnx.checker.check_model(result)
    return result
