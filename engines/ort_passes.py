"""The ONNX Runtime build-time graph passes, declared as data: which run, on what, in which order.

Every pass has one signature, ``run(model) -> model``: it returns a new model and leaves its input as it was; a
pass whose pattern is absent returns an unchanged copy. A pass reads shapes by inference on top of the model's
recorded ``value_info`` (``ort_graph.to_ir``) and keeps only the recorded shapes it vouches for
(``ort_graph.from_ir``): the exporter's shapes of the ``vared2`` nodes' outputs survive the passes that leave them
valid, and no pass relies on another having run. ``passes_for(kind, precision, skip)`` is the list the builder
runs (``GATE_PASSES`` or ``BUCKET_PASSES``, in order); ``run_passes`` runs one.
Each pass's measured gain is a row in docs/performance.md ("The passes").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from onnx import ModelProto

from vared2.formats.errors import InputError

from .ort_frames import skip_unread_frames
from .ort_gate_head import motion_head_for_ort
from .ort_graph import OPSET
from .ort_pad import pad_conv_pairs
from .ort_phases import split_temporal_phases
from .ort_specialize import specialize_reconstructions
from .ort_stem import stem_over_frames
from .ort_temporal2d import temporal_convs_as_2d

GATE = "gate"
BUCKET = "bucket"
KINDS = (GATE, BUCKET)
#: The precisions the passes are checked for (the parity check of every ONNX Runtime build). A pass is offered
#: for another precision only once that precision's builder lists it here and its parity check covers it.
FP32 = frozenset({"fp32"})


@dataclass(frozen=True)
class GraphPass:
    """One declared rewrite: its name (``vared2 build --skip-pass NAME``), the graphs it applies to, the
    precisions it is valid for, the function, and what it matches and emits (docs/design.md's table)."""

    name: str
    applies_to: frozenset[str]
    precisions: frozenset[str]
    run: Callable[[ModelProto], ModelProto]
    matches: str
    emits: str

    def __call__(self, model: ModelProto, kind: str, precision: str = "fp32") -> ModelProto:
        """``run(model)`` after its preconditions: a graph ``kind`` and ``precision`` the pass is declared for, of
        default opset ``OPSET`` (``InputError`` naming the pass otherwise)."""
        if kind not in self.applies_to:
            raise InputError(f"pass {self.name}: applies to {'/'.join(sorted(self.applies_to))} graphs, not {kind!r}")
        if precision not in self.precisions:
            valid = ", ".join(sorted(self.precisions))
            raise InputError(f"pass {self.name}: valid for {valid} engines, not {precision!r}")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != OPSET:
            raise InputError(
                f"pass {self.name}: expects a graph of default opset {OPSET} (the exporter's), got {opset}"
            )
        return self.run(model)


def _declare(
    name: str,
    kinds: set[str],
    run: Callable[[ModelProto], ModelProto],
    matches: str,
    emits: str,
    precisions: frozenset[str] = FP32,
) -> GraphPass:
    return GraphPass(name, frozenset(kinds), precisions, run, matches, emits)


#: Bucket passes the int8 builder runs before quantizing (its agreement check covers them). ``temporal-conv-2d`` is
#: not among them: ONNX Runtime runs int8 convolutions in NHWC, and each 2-D view's Reshape then costs a Transpose
#: pair that cannot cancel (measured slower in int8 on every bucket but t1c2: docs/performance.md).
FP32_INT8 = frozenset({"fp32", "int8"})


TEMPORAL_CONV_2D = _declare(
    "temporal-conv-2d",
    {GATE, BUCKET},
    temporal_convs_as_2d,
    "3-D Conv with spatial kernel and stride 1 [→ Relu]",
    "Reshape → 2-D Conv [→ Relu] → Reshape over [N, C, T, H·W]",
)


GATE_PASSES: tuple[GraphPass, ...] = (
    _declare(
        "pad-conv-pairs",
        {GATE},
        pad_conv_pairs,
        "Conv → Relu → Conv with middle channels not a multiple of 16 (≤ 12.5 % growth)",
        "zero-padded filters and weights (blocked NCHWc kernels for the second Conv)",
    ),
    _declare(
        "stem-over-frames",
        {GATE},
        stem_over_frames,
        "uint8 clip → Transpose → Cast → Mul → Add → frame-wise 3-D Conv [→ Relu → temporal Conv]",
        "2-D Conv on frames stacked along rows (temporal Conv dilated), or over N·T frames + one Transpose",
    ),
    TEMPORAL_CONV_2D,
    _declare(
        "motion-head",
        {GATE},
        motion_head_for_ort,
        "the descriptor: ReduceMean and Slice/Sub/Abs/ReduceMean feeding a Concat",
        "AveragePool frame means + depthwise (-2, 2) Conv with ReLU, pooled",
    ),
)

BUCKET_PASSES: tuple[GraphPass, ...] = (
    _declare(
        "skip-unread-frames",
        {BUCKET},
        skip_unread_frames,
        "frames no output reads (ϕt feeding temporal-stride readers)",
        "ϕt dropped, frame-wise ops on kept frames, adjusted strides, strided Slice",
        FP32_INT8,
    ),
    _declare(
        "split-temporal-phases",
        {BUCKET},
        split_temporal_phases,
        "ϕt (R = 2) → Relu → temporal Conv (kernel 3, padding 1, even stride)",
        "depthwise even/odd function + two 2-D Convs (kernels 1 and 2) + Add",
        FP32_INT8,
    ),
    _declare(
        "specialize-reconstructions",
        {BUCKET},
        specialize_reconstructions,
        "vared2::TemporalReconstruct / ChannelReconstruct [+ scale Mul, shift Add, Relu]",
        "vared2.ort functions: Mul + Add (ϕt); 2-D depthwise Conv blocks + Concat (ϕs)",
        FP32_INT8,
    ),
    TEMPORAL_CONV_2D,
)

_DECLARED = {GATE: GATE_PASSES, BUCKET: BUCKET_PASSES}


def pass_names() -> list[str]:
    """Every declared pass name, once, in declaration order."""
    return list(dict.fromkeys(p.name for passes in _DECLARED.values() for p in passes))


def check_skip(skip: Iterable[str]) -> tuple[str, ...]:
    """``skip`` as a sorted tuple of known pass names; ``InputError`` listing the known ones for any other."""
    skip = tuple(sorted(set(skip)))
    known = pass_names()
    unknown = [name for name in skip if name not in known]
    if unknown:
        raise InputError(f"unknown graph pass {', '.join(map(repr, unknown))}: the passes are {', '.join(known)}")
    return skip


def passes_for(kind: str, precision: str = "fp32", skip: Iterable[str] = ()) -> list[GraphPass]:
    """The passes the builder runs on a ``kind`` graph (``gate`` or ``bucket``) of a ``precision`` engine, in
    order, without those named in ``skip`` (all of which must be declared passes)."""
    if kind not in _DECLARED:
        raise InputError(f"graph kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    skipped = set(check_skip(skip))
    return [p for p in _DECLARED[kind] if p.name not in skipped and precision in p.precisions]


def run_passes(model: ModelProto, kind: str, passes: Iterable[GraphPass], precision: str = "fp32") -> ModelProto:
    """``model`` through ``passes`` in order (the input is left as it was; with no passes, ``model`` itself)."""
    for graph_pass in passes:
        model = graph_pass(model, kind, precision)
    return model
