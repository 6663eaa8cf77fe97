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


@pytest.mark.parametrize("build", [r2plus1d_18, r3d_18, mc3_18])
def test_descriptor_rewrite_matches_pytorch(build) -> None:  # type: ignore[no-untyped-def]
    """r2plus1d's stem ends in a temporal conv run as 2-D, so the stem's ReLU moves onto the 4-D view; r3d/mc3
    end in a 3-D conv and are reshaped to 4-D. Either way: no Slice/Abs left, and the descriptor, features and
    logits equal PyTorch's at both optimisation levels."""
    torch.manual_seed(0)
    model = build(width=0.25, frames=4, size=32, num_classes=5)
    torch.nn.init.normal_(model.gate.fc2.weight)
    gate = GateGraph(model).eval()
    clip = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8)
    exported = to_onnx(gate, (clip[:2],), ["clip"], ["features", "bucket_logits"])
    rewritten = motion_head_for_ort(_with_descriptor_output(specialize(stem_for_ort(exported))))
    assert not {"Slice", "Abs", "ReduceMean", "Sub"} & set(_ops(rewritten)), _ops(rewritten)
    assert _ops(rewritten).count("GlobalAveragePool") == 3
    relu_before_reshape = build is r2plus1d_18
    features_producer = next(n for n in rewritten.graph.node if "features" in n.output)
    assert features_producer.op_type == ("Reshape" if relu_before_reshape else "Relu")
    head_reads = {n.op_type for n in rewritten.graph.node if features_producer.input[0] in n.input}
    if relu_before_reshape:  # the head reads the 4-D view the ReLU wrote, beside the reshape to the features
        assert head_reads == {"Reshape", "GlobalAveragePool", "Conv"}, head_reads
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
