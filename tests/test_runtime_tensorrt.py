"""The TensorRT backend. What needs no GPU runs everywhere (backend choice, version and GPU checks); the engines
themselves run only on a GPU host (``gpu`` marker, ``./build.sh gpu-check``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime_models import BUCKETS, FRAMES, SIZE, fill_engine_dir, reference

from vared2.cli import cli
from vared2.formats.manifest import BucketEntry, GateEntry, Manifest, sha256_file, write_engine_dir
from vared2.runtime import BackendError, BackendVersionError, DeviceMismatchError, Runtime
from vared2.runtime.backends import check_backend_version
from vared2.runtime.tensorrt_backend import TrtBackend, _EngineInfo, check_device


def trt_manifest(directory: Path, onnx_manifest: Manifest, version: str, capability: str) -> Manifest:
    """The toy engines' manifest, rewritten for ``.plan`` files already in ``directory``."""

    def entry(file: str) -> tuple[str, str]:
        plan = file.replace(".onnx", ".plan")
        return plan, sha256_file(directory / plan)

    gate_file, gate_sha = entry(onnx_manifest.gate.file)
    buckets = []
    for b in onnx_manifest.buckets:
        file, sha = entry(b.file)
        buckets.append(BucketEntry(b.id, b.name, b.policy, b.gflops, file, sha, path="local-functions"))
    return Manifest(
        name="toy-trt",
        backend="tensorrt",
        backend_version=version,
        precision="fp32",
        device={"name": "test GPU", "compute_capability": capability},
        max_batch=onnx_manifest.max_batch,
        model=onnx_manifest.model,
        gate=GateEntry(gate_file, gate_sha, onnx_manifest.gate.gflops),
        buckets=tuple(buckets),
    )


def test_tensorrt_engines_without_tensorrt_are_a_clear_error(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass

    def fill(directory: Path) -> Manifest:
        onnx_manifest = fill_engine_dir(directory)
        for file in ["gate", *(f"bucket_{b[0]}" for b in BUCKETS)]:
            (directory / f"{file}.plan").write_bytes(f"not really a plan: {file}".encode())
        return trt_manifest(directory, onnx_manifest, "10.13.0.35", "8.6")

    write_engine_dir(tmp_path / "e", fill)
    with pytest.raises(BackendError, match="TensorRT engines, which need the tensorrt and pycuda packages"):
        Runtime.open(tmp_path / "e")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path / "e"), str(tmp_path / "e" / "gate.plan")])
    assert result.exit_code == 2, result.output
    assert "vared2: error:" in result.output and "tensorrt and pycuda" in result.output
    with pytest.raises(TypeError, match="ONNX Runtime options"):
        Runtime.open(tmp_path / "e", threads=2)
    with pytest.raises(TypeError, match="ONNX Runtime options"):
        Runtime.open(tmp_path / "e", shared_thread_pool=True)


def test_tensorrt_plans_need_the_exact_version_and_gpu(tmp_path: Path) -> None:
    directory = tmp_path / "e"
    directory.mkdir()
    onnx_manifest = fill_engine_dir(directory)
    for file in ["gate", *(f"bucket_{b[0]}" for b in BUCKETS)]:
        (directory / f"{file}.plan").write_bytes(file.encode())
    manifest = trt_manifest(directory, onnx_manifest, "10.13.0.35", "8.6")
    check_backend_version(manifest, "10.13.0.35", exact=3)
    with pytest.warns(UserWarning, match=r"built with tensorrt 10\.13\.0\.35, running with 10\.13\.0\.40"):
        check_backend_version(manifest, "10.13.0.40", exact=3)
    with pytest.raises(BackendVersionError, match=r"built with tensorrt 10\.13\.0\.35, but 10\.13\.1\.0 is installed"):
        check_backend_version(manifest, "10.13.1.0", exact=3)
    check_device(manifest, "NVIDIA A10", (8, 6))
    with pytest.raises(DeviceMismatchError, match=r"built for compute capability 8\.6 \(test GPU\); this GPU \(L4\)"):
        check_device(manifest, "L4", (8, 9))


def _engine_io(path: str, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]) -> _EngineInfo:
    """The I/O record ``_EngineInfo`` reads from a deserialised plan (float32 tensors), for the interface check."""
    info = object.__new__(_EngineInfo)
    info.path = Path(path)
    info.inputs = {name: (np.dtype(np.float32), shape) for name, shape in inputs.items()}
    info.outputs = {name: (np.dtype(np.float32), shape) for name, shape in outputs.items()}
    return info


def test_engines_must_have_exactly_the_expected_tensors() -> None:
    """A worker binds exactly these tensors, and ``execute_async_v3`` fails on any tensor without an address."""
    features = (4, FRAMES, SIZE, SIZE)
    gate = _engine_io("e/gate.plan", {"clip": (FRAMES, SIZE, SIZE, 3)}, {"features": features, "bucket_logits": (3,)})
    bucket = _engine_io("e/bucket_0.plan", {"features": features}, {"logits": (5,)})
    TrtBackend._check_interface(gate, [bucket, bucket])

    extra = _engine_io("e/gate.plan", {"clip": (FRAMES, SIZE, SIZE, 3)}, {**gate.outputs, "debug": (1,)})
    with pytest.raises(BackendError, match=r"e/gate\.plan: a gate engine has exactly input 'clip'.*'debug'"):
        TrtBackend._check_interface(extra, [bucket])
    missing = _engine_io("e/gate.plan", {"clip": (FRAMES, SIZE, SIZE, 3)}, {"features": features})
    with pytest.raises(BackendError, match=r"e/gate\.plan: .*outputs \['features'\]"):
        TrtBackend._check_interface(missing, [bucket])
    two_outputs = _engine_io("e/bucket_1.plan", {"features": features}, {"logits": (5,), "probs": (5,)})
    with pytest.raises(BackendError, match=r"e/bucket_1\.plan: a bucket engine has exactly input 'features'"):
        TrtBackend._check_interface(gate, [bucket, two_outputs])
    other_features = _engine_io("e/bucket_1.plan", {"features": (8, FRAMES, SIZE, SIZE)}, {"logits": (5,)})
    with pytest.raises(BackendError, match=r"e/bucket_1\.plan: input 'features' is .*the gate writes"):
        TrtBackend._check_interface(gate, [bucket, other_features])


@pytest.mark.gpu
def test_tensorrt_engines_match_onnxruntime(tmp_path: Path) -> None:
    """Build fp32 plans of the toy engines with Polygraphy and compare the runtime's results with ORT's."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    onnx_manifest = fill_engine_dir(onnx_dir, max_batch=4)
    features = (4, FRAMES, SIZE, SIZE)

    def fill(directory: Path) -> Manifest:
        for file, name, shape in [("gate", "clip", (FRAMES, SIZE, SIZE, 3))] + [
            (f"bucket_{b[0]}", "features", features) for b in BUCKETS
        ]:
            profile = Profile().add(name, min=(1, *shape), opt=(1, *shape), max=(4, *shape))
            network = NetworkFromOnnxPath(str(onnx_dir / f"{file}.onnx"), strongly_typed=True)
            build = EngineFromNetwork(network, CreateConfig(profiles=[profile]))
            SaveEngine(build, str(directory / f"{file}.plan"))()
        import pycuda.driver as cuda

        cuda.init()
        major, minor = cuda.Device(0).compute_capability()
        return trt_manifest(directory, onnx_manifest, trt.__version__, f"{major}.{minor}")

    write_engine_dir(tmp_path / "trt", fill)
    clips = np.random.default_rng(0).integers(0, 256, (6, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for graphs in (False, True):
        runtime = Runtime.open(tmp_path / "trt", cuda_graphs=graphs)
        for _ in range(3):  # the third call replays CUDA graphs
            results = runtime.classify(clips)
            assert isinstance(results, list)
            choice, probs = reference(onnx_dir, clips)
            assert [r.bucket for r in results] == list(choice)
            np.testing.assert_allclose(np.stack([r.probabilities for r in results]), probs, atol=1e-4)
        refused = r"gate\.plan: TensorRT refused shape .* for input 'clip'"
        with runtime.backend.session() as worker, pytest.raises(BackendError, match=refused):
            worker._bind_gate(5)  # a batch beyond the profile: set_input_shape returns False
        runtime.close()
        with pytest.raises(BackendError, match="closed"):  # not a wait for a worker that will never return
            runtime.classify(clips)
