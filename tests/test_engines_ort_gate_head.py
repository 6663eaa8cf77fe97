"""The gate-descriptor rewrite of the ONNX Runtime builder (``vared2.engines.ort_gate_head``): the same numbers as
PyTorch's ``SoftModulationGate.descriptor``, on blocked-layout ops, for every backbone's gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from ort_levels import LEVELS, run_at_level

from vared2.engines.ort_gate_head import motion_head_for_ort
from vared2.engines.ort_specialize import specialize
from vared2.engines.ort_stem import stem_for_ort
from vared2.export.graphs import GateGraph
from vared2.export.onnx_export import to_onnx
from vared2.models import mc3_18, r2plus1d_18, r3d_18


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _with_descriptor_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """The gate graph with the MLP's input exposed, so the descriptor itself is compared, not just the logits."""
    concat = next(n for n in model.graph.node if n.op_type == "Concat" and n.output[0].startswith("/gate"))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    identity = onnx.helper.make_node("Identity", [concat.output[0]], ["descriptor"])
    copy.graph.node.append(identity)
    copy.graph.output.append(onnx.helper.make_tensor_value_info("descriptor", onnx.TensorProto.FLOAT, ["N", "D"]))
    return copy


@pytest.mark.parametrize(
    ("build", "stacked"),
    [(r2plus1d_18, True), (r2plus1d_18, False), (r3d_18, False), (mc3_18, False)],
    ids=["r2plus1d-stacked", "r2plus1d", "r3d", "mc3"],
)
def test_descriptor_rewrite_matches_pytorch(build, stacked: bool) -> None:  # type: ignore[no-untyped-def]
    """r2plus1d's stem on frames stacked along the rows (``ort_stacked``): the head reads that stacked tensor frame
    by frame, through strided pools and a dilated conv. Otherwise it reads one row per frame: the view r2plus1d's
    temporal conv run as 2-D writes, or a reshape of r3d/mc3's 3-D conv output. Every way: no Abs/Sub/ReduceMean
    left, one frame-difference conv, and the descriptor, features and logits equal PyTorch's at both optimisation
    levels."""
    torch.manual_seed(0)
    model = build(width=0.25, frames=4, size=32, num_classes=5)
    torch.nn.init.normal_(model.gate.fc2.weight)
    gate = GateGraph(model).eval()
    clip = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8)
    exported = to_onnx(gate, (clip[:2],), ["clip"], ["features", "bucket_logits"])
    allowed = 1.0 if stacked else 0.0  # at 32×32, 2 of every 18 rows go unused: over the default limit
    rewritten = motion_head_for_ort(_with_descriptor_output(specialize(stem_for_ort(exported, allowed))))
    ops = _ops(rewritten)
    assert not {"Abs", "ReduceMean", "Sub"} & set(ops), ops
    assert (ops.count("GlobalAveragePool"), ops.count("AveragePool")) == (2, 2)
    assert "Slice" not in ops and ops.count("Split") == int(stacked)  # the features cut from the stacked rows
    difference = next(n for n in rewritten.graph.node if n.op_type == "Conv" and n.input[1].endswith("head_rising"))
    dilation = next(a.ints for a in difference.attribute if a.name == "dilations")
    assert (dilation[0] > 1) == stacked  # frame t+1 is one frame's rows further down
    head_reads = {n.op_type for n in rewritten.graph.node if difference.input[0] in n.input}
    beside = {"Reshape"} if build is r2plus1d_18 else set()  # r2plus1d's view also feeds the features' reshape
    assert head_reads == {"AveragePool", "Conv"} | beside, head_reads
    with torch.no_grad():
        features, logits = gate(clip)
        descriptor = model.gate.descriptor(features)
    for level in LEVELS:
        outputs = ["features", "bucket_logits", "descriptor"]
        got_features, got_logits, got_descriptor = run_at_level(rewritten, {"clip": clip.numpy()}, level, outputs)
        np.testing.assert_allclose(got_features, features.numpy(), atol=2e-5, rtol=0)
        np.testing.assert_allclose(got_descriptor, descriptor.numpy(), atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(got_logits, logits.numpy(), atol=2e-5, rtol=1e-5)


def test_a_graph_without_the_descriptor_is_unchanged() -> None:
    """A single-frame gate has no frame differences (the descriptor's motion half is zeros): nothing to rewrite."""
    torch.manual_seed(0)
    gate = GateGraph(r2plus1d_18(width=0.125, frames=1, size=32, num_classes=5)).eval()
    exported = to_onnx(
        gate, (torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8),), ["clip"], ["features", "bucket_logits"]
    )
    assert motion_head_for_ort(exported) == exported
