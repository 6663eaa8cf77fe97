"""The ONNX function bodies and the torch.library ops against the reference (DESIGN.md §3, §4).

Every check runs real ONNX Runtime sessions and ``onnx.reference``; nothing is mocked.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from test_models_dynamic_conv import loop_channel, loop_temporal
from torch import nn

from vared2.plugins import DOMAIN, onnx_functions, reference, torch_ops

RNG = np.random.default_rng(1234)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "c", "tc", "h", "w", "r"),
    [(1, 8, 4, 6, 6, 2), (3, 6, 2, 5, 7, 2), (2, 24, 1, 3, 1, 4), (4, 5, 3, 7, 5, 4)],
)
def test_temporal_function_matches_reference(n: int, c: int, tc: int, h: int, w: int, r: int) -> None:
    model = onnx_functions.single_op_model("TemporalReconstruct", [["N", c, tc, h, w], [r, c], [r, c]], factor=r)
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": _randn(n, c, tc, h, w), "scale": _randn(r, c), "shift": _randn(r, c)}
    want = reference.temporal_reconstruct(*(torch.from_numpy(v) for v in feeds.values()), r).numpy()
    got = _session(model).run(None, feeds)[0]
    assert got.shape == (n, c, r * tc, h, w)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, feeds)[0], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("n", "cc", "out", "t", "h", "w"),
    [
        (1, 8, 16, 2, 6, 6),  # G = C_c (pc = 1)
        (2, 8, 32, 1, 5, 7),  # G = 3 C_c (pc = 2)
        (3, 6, 9, 2, 3, 5),  # G < C_c, non-power-of-two channels
        (2, 5, 17, 3, 4, 1),  # G not a multiple of C_c, W = 1
        (1, 3, 4, 1, 1, 1),  # 1x1 plane: only the centre tap sees data
    ],
)
def test_channel_function_matches_reference(n: int, cc: int, out: int, t: int, h: int, w: int) -> None:
    g = out - cc
    model = onnx_functions.single_op_model(
        "ChannelReconstruct", [["N", cc, t, h, w], [g, 1, 1, 3, 3], [g]], out_channels=out
    )
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": _randn(n, cc, t, h, w), "weight": _randn(g, 1, 1, 3, 3), "bias": _randn(g)}
    want = reference.channel_reconstruct(*(torch.from_numpy(v) for v in feeds.values()), out).numpy()
    got = _session(model).run(None, feeds)[0]
    assert got.shape == (n, out, t, h, w)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # The computed channels pass through the identity filters bit for bit.
    np.testing.assert_array_equal(got[:, :cc], feeds["x"])
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, feeds)[0], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("op", ["TemporalReconstruct", "ChannelReconstruct"])
def test_functions_type_check_and_run_in_fp16(op: str) -> None:
    """fp16 graphs (strongly typed TensorRT engines) call the same bodies: their constants follow the inputs'
    type. The reference runs in fp32 on the fp16 values; the bound is a few fp16 roundings of |y| <~ 10."""
    if op == "TemporalReconstruct":
        shapes, attrs = [["N", 6, 2, 5, 7], [2, 6], [2, 6]], {"factor": 2}
        call = reference.temporal_reconstruct
    else:
        shapes, attrs = [["N", 4, 2, 5, 7], [6, 1, 1, 3, 3], [6]], {"out_channels": 10}
        call = reference.channel_reconstruct
    model = onnx_functions.single_op_model(op, shapes, onnx.TensorProto.FLOAT16, **attrs)
    onnx.checker.check_model(model, full_check=True)
    feeds = {
        name: _randn(*[2 if d == "N" else d for d in shape]).astype(np.float16)
        for name, shape in zip(["x", "a", "b"], shapes, strict=True)
    }
    feeds = dict(zip([i.name for i in model.graph.input], feeds.values(), strict=True))
    want = call(*(torch.from_numpy(v.astype(np.float32)) for v in feeds.values()), *attrs.values()).numpy()
    got = _session(model).run(None, feeds)[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=0, atol=2e-2)


def test_functions_declare_the_plugin_attributes() -> None:
    for function in onnx_functions.functions():
        assert function.domain == DOMAIN
        declared = {*function.attribute, *(a.name for a in function.attribute_proto)}
        assert {"plugin_namespace", "plugin_version"} <= declared
        # Standard operators only, from ONNX's default domain at opset 17.
        assert {n.domain for n in function.node} <= {""}
        assert [(o.domain, o.version) for o in function.opset_import] == [("", 17)]


def test_attach_functions_only_when_used_and_idempotent() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    plain = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    onnx_functions.attach_functions(plain)
    assert not plain.functions and all(o.domain != DOMAIN for o in plain.opset_import)

    model = onnx_functions.single_op_model("TemporalReconstruct", [[1, 2, 1, 1, 1], [2, 2], [2, 2]], factor=2)
    onnx_functions.attach_functions(model)
    assert sorted(f.name for f in model.functions) == ["ChannelReconstruct", "TemporalReconstruct"]
    assert [o.version for o in model.opset_import if o.domain == DOMAIN] == [1]


def test_attach_functions_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="ModelProto"):
        onnx_functions.attach_functions("model.onnx")  # type: ignore[arg-type]
    model = onnx_functions.single_op_model("TemporalReconstruct", [[1, 2, 1, 1, 1], [2, 2], [2, 2]], factor=2)
    model.graph.node[0].op_type = "Frobnicate"
    with pytest.raises(ValueError, match="Frobnicate"):
        onnx_functions.attach_functions(model)


class TinyGated(nn.Module):
    """Conv3d -> temporal reconstruction -> channel reconstruction, as a gated layer exports."""

    def __init__(self, cin: int = 3, computed: int = 6, out: int = 10, factor: int = 2) -> None:
        super().__init__()
        self.factor, self.out = factor, out
        self.conv = nn.Conv3d(cin, computed, (3, 3, 3), stride=(factor, 1, 1), padding=1)
        self.scale = nn.Parameter(torch.randn(factor, computed))
        self.shift = nn.Parameter(torch.randn(factor, computed))
        self.weight = nn.Parameter(torch.randn(out - computed, 1, 1, 3, 3))
        self.bias = nn.Parameter(torch.randn(out - computed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.ops.vared2.temporal_reconstruct(y, self.scale, self.shift, self.factor)
        return torch.ops.vared2.channel_reconstruct(y, self.weight, self.bias, self.out)


def _export(module: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    torch_ops.register_onnx_symbolics(17)
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (example,),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["clip"],
        output_names=["out"],
        dynamic_axes={"clip": {0: "N"}, "out": {0: "N"}},
    )
    return onnx_functions.attach_functions(onnx.load_from_string(buffer.getvalue()))


def test_torchscript_export_path_end_to_end() -> None:
    torch.manual_seed(0)
    module = TinyGated().eval()
    model = _export(module, torch.randn(1, 3, 8, 7, 5))
    onnx.checker.check_model(model, full_check=True)

    nodes = {n.op_type: n for n in model.graph.node if n.domain == DOMAIN}
    assert set(nodes) == {"TemporalReconstruct", "ChannelReconstruct"}
    attributes = {k: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for k, n in nodes.items()}
    assert attributes["TemporalReconstruct"] == {"factor": 2, "plugin_namespace": b"vared2", "plugin_version": b"1"}
    assert attributes["ChannelReconstruct"] == {
        "out_channels": 10,
        "plugin_namespace": b"vared2",
        "plugin_version": b"1",
    }
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N"

    clip = torch.randn(3, 3, 8, 7, 5)  # batch 3, exported with batch 1
    with torch.no_grad():
        want = module(clip).numpy()
    got = _session(model).run(None, {"clip": clip.numpy()})[0]
    assert got.shape == want.shape == (3, 10, 8, 7, 5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    evaluated = ReferenceEvaluator(model).run(None, {"clip": clip.numpy()})[0]
    np.testing.assert_allclose(evaluated, got, rtol=0, atol=1e-5)


def test_custom_ops_match_reference_and_shapes() -> None:
    """The torch ops forward to ``plugins.reference``, so their values are checked against the loop formulas of
    DESIGN.md §2 (tests/test_models_dynamic_conv.py), written independently of both."""
    x, a, b = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4), torch.randn(2, 4)
    got = torch.ops.vared2.temporal_reconstruct(x, a, b, 2)
    assert got.shape == (2, 4, 6, 5, 5)
    torch.testing.assert_close(got.double(), loop_temporal(x, a, b, 2), rtol=1e-5, atol=1e-5)
    # 7 generated channels from 4 computed ones: the sources wrap around (g mod C_c).
    w, bias = torch.randn(7, 1, 1, 3, 3), torch.randn(7)
    got = torch.ops.vared2.channel_reconstruct(x, w, bias, 11)
    assert got.shape == (2, 11, 3, 5, 5)
    torch.testing.assert_close(got.double(), loop_channel(x, w, bias, 11), rtol=1e-5, atol=1e-5)
    with torch.device("meta"):
        assert torch.ops.vared2.temporal_reconstruct(x.to("meta"), a, b, 2).shape == (2, 4, 6, 5, 5)
        assert torch.ops.vared2.channel_reconstruct(x.to("meta"), w, bias, 11).shape == (2, 11, 3, 5, 5)


def test_custom_ops_are_differentiable_like_the_reference() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def chain(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.ops.vared2.channel_reconstruct(torch.ops.vared2.temporal_reconstruct(x, a, b, 2), w, bias, 5)

    assert torch.autograd.gradcheck(chain, (x, a, b, w, bias), fast_mode=True)
