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
from vared2.formats.errors import InputError
from vared2.formats.export_spec import read_export_spec
from vared2.formats.manifest import Manifest


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
    # TensorRT >= 10.15's parser prefers a node's local function over a registered plugin unless the node carries
    # plugin_namespace (or the parser flag ENABLE_PLUGIN_OVERRIDE is set): every exported vared2 node carries it.
    namespaces = [{a.name: a.s for a in n.attribute}.get("plugin_namespace") for n in custom]
    assert custom and namespaces == [b"vared2"] * len(custom)
    assert all("plugin_version" in {a.name for a in n.attribute} for n in custom)

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


def test_precision_options_are_refused_before_tensorrt_is_needed(tmp_path: Path) -> None:
    onnx_dir = write_toy_onnx_dir(tmp_path / "toy")
    with pytest.raises(InputError, match="precision: expected one of fp32, fp16, int8, got 'int4'"):
        trt_engine.build_tensorrt(onnx_dir, tmp_path / "out", precision="int4")
    with pytest.raises(InputError, match="int8 engines need calibration clips"):
        trt_engine.build_tensorrt(onnx_dir, tmp_path / "out", precision="int8")
    with pytest.raises(InputError, match="only int8 engines use them"):
        trt_engine.build_tensorrt(onnx_dir, tmp_path / "out", precision="fp16", calibration=[])
    assert not (tmp_path / "out").exists()


def test_one_precision_option_for_both_backends() -> None:
    """``vared2 build --precision fp32|fp16|int8`` on either backend; ``--fp16`` is ``--precision fp16``. Refusals
    come before TensorRT is needed; a valid TensorRT request then names the missing TensorRT."""
    from vared2.engines.build import check_build_options
    from vared2.engines.tensorrt_engine import TensorRTUnavailableError

    with pytest.raises(InputError, match="precision fp16: a TensorRT option"):
        check_build_options("onnxruntime", precision="fp16")
    with pytest.raises(InputError, match="precision fp16: a TensorRT option"):
        check_build_options("onnxruntime", fp16=True)
    with pytest.raises(InputError, match="--fp16 is --precision fp16; it cannot be combined with --precision int8"):
        check_build_options("tensorrt", fp16=True, precision="int8", calibration=Path("data"))
    with pytest.raises(InputError, match="precision int8: calibration clips are needed"):
        check_build_options("tensorrt", precision="int8")
    with pytest.raises(InputError, match="only int8 engines are calibrated"):
        check_build_options("tensorrt", precision="fp16", calibration=Path("data"))
    with pytest.raises(InputError, match="precision: expected one of fp32, fp16, int8, got 'int4'"):
        check_build_options("tensorrt", precision="int4")
    check_build_options("onnxruntime", precision="int8", calibration=Path("data"))
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(TensorRTUnavailableError):
            check_build_options("tensorrt", precision="int8", calibration=Path("data"))


def test_precision_graphs_of_an_export(tiny_onnx: Path) -> None:
    """What each precision hands TensorRT's parser, built here on the CPU: the calibration through the fp32 gate
    covers every bucket's convolution inputs, the int8 gate stays the exported graph."""
    spec = read_export_spec(tiny_onnx)
    clips = [np.random.default_rng(s).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8) for s in (1, 2)]
    ranges, count = trt_engine.calibration_ranges(tiny_onnx, spec, clips)
    assert count == 4 and set(ranges) == {b["file"] for b in spec["buckets"]}
    with pytest.raises(InputError, match="no calibration clips"):
        trt_engine.calibration_ranges(tiny_onnx, spec, [])
    with pytest.raises(InputError, match=r"calibration batch 1: expected uint8 clips \[N, 4, 32, 32, 3\], got float32"):
        trt_engine.calibration_ranges(tiny_onnx, spec, [clips[0], clips[1].astype(np.float32)])
    gate = tiny_onnx / spec["gate"]["file"]
    assert trt_engine.precision_graph(gate, "int8", None) == onnx.load(str(gate))
    half_gate = trt_engine.precision_graph(gate, "fp16")
    assert half_gate.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # features
    for bucket in spec["buckets"]:
        path = tiny_onnx / bucket["file"]
        quantized = trt_engine.precision_graph(path, "int8", ranges[bucket["file"]])
        kinds = {n.op_type for n in quantized.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
        assert trt_engine.has_custom_ops(quantized) == trt_engine.has_custom_ops(path)
        shapes = trt_engine.batch_profile_shapes(quantized, max_batch=4, opt_batch=2)
        assert shapes == trt_engine.batch_profile_shapes(path, max_batch=4, opt_batch=2)


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


def _run_plan(plan: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    with TrtRunner(EngineFromBytes(BytesFromPath(str(plan)))) as runner:
        return {name: np.array(value) for name, value in runner.infer(feed).items()}


def _compare_with_ort(onnx_path: Path, plan: Path, feed: dict[str, np.ndarray], bound: float) -> None:
    """The engine against the exported fp32 graph on ONNX Runtime: max |difference| over the output's largest
    magnitude at most ``bound``. The engine's float inputs get their own type (fp16 for fp16 engines)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    typed = dict(feed)
    if "features" in typed and _plan_input_dtype(plan, "features") == np.float16:
        typed["features"] = typed["features"].astype(np.float16)
    got = _run_plan(plan, typed)
    for name, want in expected.items():
        error = np.abs(got[name].astype(np.float32) - want).max() / max(float(np.abs(want).max()), 1e-3)
        assert error <= bound, f"{plan.name}: {name} differs by {error:.3g} of its range (bound {bound})"


def _plan_input_dtype(plan: Path, name: str) -> np.dtype:
    trt = trt_engine.import_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    return np.dtype(trt.nptype(engine.get_tensor_dtype(name)))


@pytest.mark.gpu
# The order matters: (fp32, False) runs after a build in this process registered the plugins, which must not
# leak into it (a registration cannot be undone; the builder strips the plugin attributes instead).
@pytest.mark.parametrize(
    ("precision", "use_plugins"), [("fp32", True), ("fp32", False), ("fp16", True), ("int8", True)]
)
def test_tensorrt_engines_match_onnxruntime(tiny_onnx: Path, tmp_path: Path, precision: str, use_plugins: bool) -> None:
    clip = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    if precision == "int8":  # the Python API: the build command's int8 options belong to the calibration reader
        calibration = [np.random.default_rng(s).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8) for s in (1, 2)]
        out = tmp_path / "trt"
        manifest = trt_engine.build_tensorrt(
            tiny_onnx, out, precision="int8", calibration=calibration, max_batch=4, use_plugins=use_plugins
        )
        assert manifest.build_options["calibration"] == {"clips": 4, "method": "max-abs", "gate_precision": "fp32"}
    else:
        out = build_engines(
            tiny_onnx,
            tmp_path / "trt",
            backend="tensorrt",
            fp16=precision == "fp16",
            max_batch=4,
            use_plugins=use_plugins,
            progress=False,
        )
        manifest = Manifest.load(out)
        # The key names this GPU, so the same build here is up to date.
        sources = source_digest(tiny_onnx, read_export_spec(tiny_onnx))
        assert up_to_date(out, build_key(sources, "tensorrt", manifest.build_options["build_options"]))
    trt = trt_engine.import_tensorrt()
    assert manifest.backend == "tensorrt" and manifest.backend_version == trt.__version__
    assert manifest.precision == precision and manifest.max_batch == 4
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

    gate = ort.InferenceSession(str(tiny_onnx / "gate.onnx"), providers=["CPUExecutionProvider"])
    features = gate.run(["features"], {"clip": clip})[0]
    # Relative to each output's range: fp32 1e-3; fp16 2e-2 (the CPU test's fp16 bound, 1e-2, doubled for GPU
    # tactics); int8 0.1 (tests/test_engines_tensorrt_graphs.py); the int8 gate is fp32.
    bound = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.1}[precision]
    gate_bound = 2e-2 if precision == "fp16" else 1e-3
    _compare_with_ort(tiny_onnx / "gate.onnx", out / manifest.gate.file, {"clip": clip}, gate_bound)
    for bucket in manifest.buckets:
        source = tiny_onnx / Path(bucket.file).with_suffix(".onnx").name
        _compare_with_ort(source, out / bucket.file, {"features": features}, bound)
    assert (out.parent / trt_engine.TIMING_CACHE).stat().st_size > 0  # one cache, shared by every build
