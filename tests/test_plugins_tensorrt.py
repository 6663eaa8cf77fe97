"""The TensorRT plugin module: import-light, a clear error without TensorRT >= 10.9, and (GPU tier only)
engines built with the AOT plugins against the reference.

The GPU tests are marked ``gpu`` and skip with the reason elsewhere; nothing here claims they ran.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vared2.plugins import tensorrt_plugin


def test_importing_the_plugin_module_loads_no_heavy_package() -> None:
    code = (
        "import sys\n"
        "import vared2.plugins.tensorrt_plugin\n"
        "print(','.join(sorted(m for m in ('tensorrt', 'triton', 'torch', 'onnx') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("version", "ok"),
    [("10.3.0.30", False), ("10.8.0.43", False), ("10.9.0.34", True), ("10.13.0.35", True), ("11.0.0", True)],
)
def test_version_gate(version: str, ok: bool) -> None:
    problem = tensorrt_plugin.version_problem(version)
    assert (problem is None) == ok
    if not ok:
        assert problem is not None and "10.9" in problem and "ONNX local functions" in problem


def test_parse_version_rejects_garbage() -> None:
    assert tensorrt_plugin.parse_version("10.13.0.35") == (10, 13)
    with pytest.raises(ValueError, match="TensorRT version"):
        tensorrt_plugin.parse_version("ten")


def test_launch_geometry_counts_every_output_row() -> None:
    extra, grid_x, grid_y = tensorrt_plugin.temporal_launch([3, 5, 2, 7, 9], 4, 64)
    assert extra == [5, 2, 63, 4] and grid_x == 3 * 5 * 2 and grid_y == 1
    extra, grid_x, grid_y = tensorrt_plugin.channel_launch([2, 8, 3, 56, 56], 24, 1024)
    assert extra == [8, 24, 3, 56, 56] and grid_x == 2 * 24 * 3 and grid_y == 4


def test_register_plugins_explains_when_unavailable() -> None:
    reason = tensorrt_plugin.plugin_support()
    if reason is None:
        pytest.skip("TensorRT >= 10.9 is installed here; the GPU tests cover registration")
    with pytest.raises(tensorrt_plugin.PluginUnavailable, match="ONNX local functions"):
        tensorrt_plugin.register_plugins()


# ---- GPU tier (./build.sh gpu-check): build engines with the AOT plugins and compare with the reference ----


def _build_and_run(model_bytes: bytes, feeds: dict[str, np.ndarray], fp16: bool) -> np.ndarray:
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxBytes, Profile, TrtRunner

    builder, network, parser = NetworkFromOnnxBytes(model_bytes)()
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    assert trt.LayerType.PLUGIN_V3 in kinds, f"the parser did not pick the vared2 plugin: {kinds}"
    x = feeds["x"]
    profile = Profile().add("x", (1, *x.shape[1:]), x.shape, (2 * x.shape[0], *x.shape[1:]))
    engine = EngineFromNetwork((builder, network, parser), CreateConfig(fp16=fp16, profiles=[profile]))
    with TrtRunner(engine) as runner:
        return np.asarray(runner.infer(feeds)["y"])


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_aot_plugins_match_reference_on_gpu(fp16: bool) -> None:
    import torch

    from vared2.plugins import onnx_functions, reference

    tensorrt_plugin.register_plugins()
    rng = np.random.default_rng(0)
    tolerance = 2e-2 if fp16 else 1e-4
    x = rng.standard_normal((2, 6, 3, 5, 7)).astype(np.float32)
    scale, shift = rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal((2, 6)).astype(np.float32)
    model = onnx_functions.single_op_model("TemporalReconstruct", [["N", 6, 3, 5, 7], [2, 6], [2, 6]], factor=2)
    got = _build_and_run(model.SerializeToString(), {"x": x, "scale": scale, "shift": shift}, fp16)
    want = reference.temporal_reconstruct(torch.from_numpy(x), torch.from_numpy(scale), torch.from_numpy(shift), 2)
    np.testing.assert_allclose(got, want.numpy(), rtol=tolerance, atol=tolerance)

    weight, bias = rng.standard_normal((10, 1, 1, 3, 3)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    model = onnx_functions.single_op_model(
        "ChannelReconstruct", [["N", 6, 3, 5, 7], [10, 1, 1, 3, 3], [10]], out_channels=16
    )
    got = _build_and_run(model.SerializeToString(), {"x": x, "weight": weight, "bias": bias}, fp16)
    want = reference.channel_reconstruct(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), 16)
    np.testing.assert_allclose(got, want.numpy(), rtol=tolerance, atol=tolerance)
