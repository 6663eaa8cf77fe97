"""The graphs strongly typed TensorRT engines are built from, run on ONNX Runtime's CPU: the fp16 graph against
PyTorch in fp32, the int8 Q/DQ graph against the fp32 graph, on a tiny exported model with random parameters.

Bounds, relative to the largest reference value of each output:
- fp16: 1e-2. fp16's unit roundoff is 2**-11 ≈ 4.9e-4; weights, inputs and every layer's output are rounded in
  series (about 20 roundings on the deepest path), so ~1 % is the worst plausible drift; measured 4e-4 to 1.1e-3.
- int8: 0.1 ("loose agreement"). 127 levels per tensor give a step of amax/127 ≈ 0.8 % of the range per
  quantized tensor, over about 17 quantized layers in series; measured 1.1 % to 3.2 %. A quantization with ranges
  50× too small (clipping) exceeds it, so the bound can fail.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from vared2.engines import tensorrt_graphs as graphs
from vared2.formats.errors import InputError

torch = pytest.importorskip("torch")
pytest.importorskip("onnxconverter_common")

FP16_BOUND, INT8_BOUND = 1e-2, 0.1


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feed))


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference over the reference's largest magnitude (floored: an untrained gate head outputs 0)."""
    return float(np.abs(got.astype(np.float32) - ref).max() / max(float(np.abs(ref).max()), 1e-3))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tiny_buckets import export_tiny

    from vared2.export.graphs import normalize_clip
    from vared2.models import r2plus1d_18

    model, exported, _ = export_tiny(r2plus1d_18, tmp_path_factory.mktemp("graphs") / "onnx")
    config = model.config
    generator = torch.Generator().manual_seed(0)
    clip = torch.randint(
        0, 256, (4, config.frames, config.size, config.size, 3), dtype=torch.uint8, generator=generator
    )
    with torch.no_grad():
        features = model.features(normalize_clip(clip, config.mean, config.std))
        bucket_logits = model.bucket_logits(features)
        logits = [model.forward_features(features, i).numpy() for i in range(len(exported.buckets))]
    return exported, clip.numpy(), features.numpy(), bucket_logits.numpy(), logits


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # fp16_graph keeps the converter's per-weight notes quiet
        return graphs.fp16_graph(model)


def test_fp16_gate_keeps_the_uint8_clip_and_fp32_bucket_logits(tiny) -> None:  # type: ignore[no-untyped-def]
    exported, clip, features, bucket_logits, _ = tiny
    half = _fp16(onnx.load(str(exported.gate)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]}
    assert types == {"clip": TensorProto.UINT8, "features": TensorProto.FLOAT16, "bucket_logits": TensorProto.FLOAT}
    assert {t.data_type for t in half.graph.initializer} <= {TensorProto.FLOAT16, TensorProto.INT64}
    got_features, got_logits = _run(half, {"clip": clip})
    assert got_features.dtype == np.float16 and got_logits.dtype == np.float32
    assert _relative(got_features, features) < FP16_BOUND
    assert _relative(got_logits, bucket_logits) < FP16_BOUND


def test_fp16_buckets_match_pytorch_fp32(tiny) -> None:  # type: ignore[no-untyped-def]
    exported, _, features, _, logits = tiny
    ops = set()
    for path, expected in zip(exported.buckets, logits, strict=True):
        source = onnx.load(str(path))
        ops |= {n.op_type for n in source.graph.node if n.domain == "vared2"}
        half = _fp16(source)
        assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
        assert not [t.name for t in half.graph.initializer if t.data_type == TensorProto.FLOAT]
        (got,) = _run(half, {"features": features.astype(np.float16)})
        assert got.dtype == np.float32
        assert _relative(got, expected) < FP16_BOUND, path.name
    assert ops == {"TemporalReconstruct", "ChannelReconstruct"}  # both function bodies ran in fp16


def test_fp16_refuses_a_converted_graph(tiny) -> None:  # type: ignore[no-untyped-def]
    exported = tiny[0]
    with pytest.raises(InputError, match="already has fp16 weights"):
        _fp16(_fp16(onnx.load(str(exported.buckets[1]))))


def test_int8_qdq_graph_is_tensorrt_explicit_quantization(tiny) -> None:  # type: ignore[no-untyped-def]
    exported, _, features, _, logits = tiny
    for path, expected in zip(exported.buckets, logits, strict=True):
        source = onnx.load(str(path))
        ranges = graphs.max_abs_ranges(source, [{"features": features[:2]}, {"features": features[2:]}])
        assert set(ranges) == set(graphs.conv_activation_inputs(source))
        probe = graphs.max_abs_ranges(source, [{"features": features}])
        assert probe == ranges  # max over batches = max over all
        quantized = graphs.qdq_graph(source, ranges)
        produced = {o: n for n in quantized.graph.node for o in n.output}
        init = {t.name: t for t in quantized.graph.initializer}
        convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
        assert len(convs) == sum(n.op_type == "Conv" for n in source.graph.node)
        for conv in convs:
            x, w = (produced[name] for name in conv.input[:2])
            assert x.op_type == w.op_type == "DequantizeLinear"
            assert produced[x.input[0]].op_type == "QuantizeLinear"
            assert numpy_helper.to_array(init[x.input[1]]).shape == ()  # per-tensor activations
            weight, scale, zero = (numpy_helper.to_array(init[name]) for name in w.input)
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 127 and not zero.any()  # symmetric
            assert scale.shape == (weight.shape[0],)  # per output channel
            assert next(a.i for a in w.attribute if a.name == "axis") == 0
        float_weights = {n.input[1] for n in source.graph.node if n.op_type == "Conv"}
        assert not float_weights & set(init)  # the fp32 weights are replaced, not kept beside the int8 ones
        (got,) = _run(quantized, {"features": features})
        assert _relative(got, expected) < INT8_BOUND, path.name


def test_int8_bound_fails_a_broken_quantization(tiny) -> None:  # type: ignore[no-untyped-def]
    exported, _, features, _, logits = tiny
    source = onnx.load(str(exported.buckets[-1]))
    ranges = graphs.max_abs_ranges(source, [{"features": features}])
    clipped = graphs.qdq_graph(source, {name: amax / 50 for name, amax in ranges.items()})
    (got,) = _run(clipped, {"features": features})
    assert _relative(got, logits[-1]) > INT8_BOUND


def test_int8_errors_name_the_tensor(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    source = onnx.load(str(tiny[0].buckets[0]))
    names = graphs.conv_activation_inputs(source)
    with pytest.raises(InputError, match="no activation range for 1 conv inputs"):
        graphs.qdq_graph(source, dict.fromkeys(names[1:], 1.0))
    with pytest.raises(InputError, match=f"activation range of '{names[0]}'"):
        graphs.qdq_graph(source, {**dict.fromkeys(names, 1.0), names[0]: 0.0})
    with pytest.raises(InputError, match="no calibration feeds"):
        graphs.max_abs_ranges(source, [])
