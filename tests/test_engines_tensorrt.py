"""TensorRT engines. The GPU tests build a tiny exported model's engines (with the plugins where this TensorRT has
them, and with the ONNX local functions) and compare every engine with ONNX Runtime through Polygraphy's
Comparator; they skip on machines without a GPU (tests/conftest.py). The CPU tests cover what runs anywhere."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ort_toy import write_toy_onnx_dir

from vared2.engines import tensorrt_engine as trt_engine
from vared2.engines.build import build_engines, build_key, source_digest, up_to_date
from vared2.engines.manifest import Manifest, read_export_spec


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from vared2.export.onnx_export import export_model
    from vared2.models import r2plus1d_18

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("trt") / "onnx"
    with torch.no_grad():
        export_model(r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5), out)
    return out


def test_profile_shapes_vary_only_the_batch_axis(tmp_path: Path) -> None:
    onnx_dir = write_toy_onnx_dir(tmp_path / "toy", frames=4, size=16)
    shapes = trt_engine.batch_profile_shapes(onnx_dir / "gate.onnx", max_batch=8, opt_batch=2)
    assert shapes == {"clip": ((1, 4, 16, 16, 3), (2, 4, 16, 16, 3), (8, 4, 16, 16, 3))}
    bucket = trt_engine.batch_profile_shapes(onnx_dir / "bucket_1.onnx", max_batch=4, opt_batch=1)
    assert list(bucket) == ["features"] and [s[0] for s in bucket["features"]] == [1, 1, 4]


def test_custom_op_detection_and_versions(tmp_path: Path) -> None:
    onnx_dir = write_toy_onnx_dir(tmp_path / "toy")
    assert not trt_engine.has_custom_ops(onnx_dir / "bucket_0.onnx")  # the full bucket: plain convolutions
    assert trt_engine.has_custom_ops(onnx_dir / "bucket_1.onnx")
    assert trt_engine.version_tuple("10.3.0.30") < trt_engine.AOT_PLUGIN_VERSION <= trt_engine.version_tuple("10.9.0")
    # TensorRT older than 10.9 (JetPack 6's 10.3) never imports the plugin module: local functions are used.
    reason = trt_engine.register_vared2_plugins("10.3.0.30", "8.7")
    assert reason is not None and "older than 10.9" in reason


def test_failed_registration_is_a_warning_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """A TensorRT new enough for AOT plugins whose registration fails here (this machine has no TensorRT
    libraries, the same ``PluginUnavailable`` a missing Triton or an unsupported GPU raises): the builder
    gets the reason, logs it, and goes on with the local functions."""
    from vared2.plugins.tensorrt_plugin import plugin_support

    if plugin_support() is None:
        pytest.skip("TensorRT >= 10.9 is importable here; the GPU tests cover registration")
    with caplog.at_level(logging.WARNING, logger=trt_engine.__name__):
        reason = trt_engine.register_vared2_plugins("10.13.0.35", "8.6")
    assert reason is not None and "ONNX local functions" in reason
    logged = [r.getMessage() for r in caplog.records if r.name == trt_engine.__name__]
    assert logged == [f"vared2 TensorRT plugins not registered: {reason}"]


def test_local_function_copy_drops_only_the_plugin_attributes(tiny_onnx: Path) -> None:
    """The copy parsed when the plugins are not used: no vared2 node names a plugin, the functions are all
    there, and it computes what the exported model computes."""
    source = tiny_onnx / "bucket_1.onnx"
    original = onnx.load(str(source))
    custom = [n for n in original.graph.node if n.domain == "vared2"]
    assert custom and all({"plugin_namespace", "plugin_version"} <= {a.name for a in n.attribute} for n in custom)

    stripped = onnx.load_from_string(trt_engine.local_function_bytes(source))
    onnx.checker.check_model(stripped)
    nodes = [n for n in stripped.graph.node if n.domain == "vared2"]
    assert len(nodes) == len(custom)
    for before, after in zip(custom, nodes, strict=True):
        kept = {a.name: a for a in before.attribute if a.name not in trt_engine.PLUGIN_ATTRIBUTES}
        assert {a.name: a for a in after.attribute} == kept
    assert [f.SerializeToString() for f in stripped.functions] == [f.SerializeToString() for f in original.functions]
    assert {f.name for f in stripped.functions} == set(trt_engine.CUSTOM_OPS)

    gate = ort.InferenceSession(str(tiny_onnx / "gate.onnx"), providers=["CPUExecutionProvider"])
    clip = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    features = gate.run(["features"], {"clip": clip})[0]
    outputs = []
    for model in (original, stripped):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(session.run(["logits"], {"features": features})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_onnxruntime_build_key_needs_no_gpu(tiny_onnx: Path) -> None:
    """Only the TensorRT key reads the GPU's compute capability (this machine has no NVIDIA driver)."""
    sources = source_digest(tiny_onnx, read_export_spec(tiny_onnx))
    options = {"max_batch": 4, "threads": None, "optimization": "all", "rewrite": 1}
    assert build_key(sources, "onnxruntime", options) == build_key(sources, "onnxruntime", options)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    onnx_dir = write_toy_onnx_dir(tmp_path / "toy")
    with pytest.raises(trt_engine.TensorRTUnavailableError, match="pip install tensorrt"):
        build_engines(onnx_dir, tmp_path / "out", backend="tensorrt", progress=False)
    assert not (tmp_path / "out").exists()


def _compare_with_ort(onnx_path: Path, plan: Path, feed: dict[str, np.ndarray], atol: float) -> None:
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path))), TrtRunner(EngineFromBytes(BytesFromPath(str(plan))))]
    results = Comparator.run(runners, data_loader=[feed])
    assert bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=atol)))


@pytest.mark.gpu
# The order matters: (False, False) runs after a build in this process registered the plugins, which must not
# leak into it (a registration cannot be undone; the builder strips the plugin attributes instead).
@pytest.mark.parametrize(("fp16", "use_plugins"), [(False, True), (False, False), (True, True)])
def test_tensorrt_engines_match_onnxruntime(tiny_onnx: Path, tmp_path: Path, fp16: bool, use_plugins: bool) -> None:
    out = build_engines(
        tiny_onnx, tmp_path / "trt", backend="tensorrt", fp16=fp16, max_batch=4, use_plugins=use_plugins, progress=False
    )
    manifest = Manifest.load(out)
    trt = trt_engine.import_tensorrt()
    assert manifest.backend == "tensorrt" and manifest.backend_version == trt.__version__
    assert manifest.precision == ("fp16" if fp16 else "fp32") and manifest.max_batch == 4
    assert manifest.device["compute_capability"].count(".") == 1 and manifest.device["name"]
    aot = trt_engine.version_tuple(trt.__version__)[:2] >= trt_engine.AOT_PLUGIN_VERSION
    registered = manifest.build_options["plugins_registered"]
    assert registered == (manifest.build_options["plugins_unavailable"] is None)
    assert not registered or (use_plugins and aot)
    for bucket in manifest.buckets:
        if not trt_engine.has_custom_ops(tiny_onnx / Path(bucket.file).with_suffix(".onnx").name):
            assert bucket.path is None
        else:
            assert bucket.path == ("plugin" if registered else "local-functions")
    # The key names this GPU, so the same build here is up to date.
    sources = source_digest(tiny_onnx, read_export_spec(tiny_onnx))
    assert up_to_date(out, build_key(sources, "tensorrt", manifest.build_options["build_options"]))

    gate = ort.InferenceSession(str(tiny_onnx / "gate.onnx"), providers=["CPUExecutionProvider"])
    clip = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    features = gate.run(["features"], {"clip": clip})[0]
    atol = 5e-2 if fp16 else 1e-3
    _compare_with_ort(tiny_onnx / "gate.onnx", out / manifest.gate.file, {"clip": clip}, atol)
    for bucket in manifest.buckets:
        source = tiny_onnx / Path(bucket.file).with_suffix(".onnx").name
        _compare_with_ort(source, out / bucket.file, {"features": features}, atol)
    assert (out.parent / trt_engine.TIMING_CACHE).stat().st_size > 0  # one cache, shared by every build
