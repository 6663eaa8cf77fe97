"""The TensorRT plugin module: import-light, a clear error without TensorRT >= 10.9, and (GPU tier only)
engines built with the AOT plugins against the reference.

The GPU tests are marked ``gpu`` and skip with the reason elsewhere; nothing here claims they ran.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from tensorrt_api import STUBS_VERSION, WHEELS, api_dir, install_hint

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
        tensorrt_plugin.register_plugins(86)


#: The TensorRT versions whose ``tensorrt.plugin`` sources are installed for the tests (AOT plugins: 10.9+).
PLUGIN_VERSIONS = [STUBS_VERSION, *(v for v, (_, aot) in WHEELS.items() if aot)]


def _shape_expr_member_kinds(version: str = STUBS_VERSION) -> dict[str, str]:
    """``"property"`` or ``"method"`` for ``is_constant`` and ``constant_value`` of ``tensorrt.plugin.ShapeExpr``
    (what ``x.shape_expr[i]`` is in ``aot_impl``), read from TensorRT ``version``'s plugin module sources: the
    first definition along the class's bases wins, as in Python's attribute lookup."""
    directory = api_dir()
    if directory is not None and version != STUBS_VERSION:
        directory = directory.parent / f"tensorrt-api-{version}"
    if directory is None or not (directory / "tensorrt_bindings" / "plugin").is_dir():
        pytest.fail(f"TensorRT {version}'s API is not installed; install it with:\n  {install_hint(version)}")
    with warnings.catch_warnings():  # its docstrings have invalid escapes
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse((directory / "tensorrt_bindings" / "plugin" / "_tensor.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def kind(cls: str, member: str) -> str | None:
        node = classes.get(cls)
        if node is None:
            return None
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == member:
                names = {d.id for d in item.decorator_list if isinstance(d, ast.Name)}
                return "property" if "property" in names else "method"
        for base in node.bases:
            found = kind(base.id, member) if isinstance(base, ast.Name) else None
            if found is not None:
                return found
        return None

    kinds = {member: kind("ShapeExpr", member) for member in ("is_constant", "constant_value")}
    assert all(kinds.values()), f"ShapeExpr lacks a member _static uses: {kinds}"
    return {member: str(found) for member, found in kinds.items()}


def _shape_expr_like(value: int, constant: bool, kinds: dict[str, str]) -> Any:
    """An object with ``ShapeExpr``'s constant-access members, each a property or a method exactly as the
    installed ``tensorrt.plugin`` defines it (a ``ShapeExpr`` with a value needs TensorRT's expression builder,
    which exists only inside an engine build). Like ``tensorrt.plugin`` 11's symbolic expressions, it refuses to
    be truth-tested; arithmetic on it gives a non-constant one."""
    results = {"is_constant": constant, "constant_value": value}
    members: dict[str, Any] = {}
    for member, how in kinds.items():
        getter = (lambda result: lambda self: result)(results[member])
        members[member] = property(getter) if how == "property" else getter

    def refuse(self: Any) -> bool:
        raise RuntimeError("Cannot evaluate symbolic expression as boolean")

    def symbolic(self: Any, other: Any) -> Any:
        return _shape_expr_like(0, False, kinds)

    members |= {"__bool__": refuse, "__add__": symbolic, "__mul__": symbolic, "__floordiv__": symbolic}
    return type("ShapeExprLike", (), members)()


@pytest.mark.parametrize("version", PLUGIN_VERSIONS)
def test_static_reads_shape_expressions_the_way_tensorrt_plugin_defines_them(version: str) -> None:
    kinds = _shape_expr_member_kinds(version)
    assert kinds == {"is_constant": "property", "constant_value": "method"}
    assert tensorrt_plugin._static(_shape_expr_like(7, True, kinds), "H") == 7
    assert tensorrt_plugin._static(5, "W") == 5
    with pytest.raises(ValueError, match="W must be static"):
        tensorrt_plugin._static(_shape_expr_like(7, False, kinds), "W")


def test_aot_launch_geometry_from_shape_expressions() -> None:
    """What ``aot_impl`` computes besides the PTX: C, T, H, W read through ``_static``; N (dynamic) as given."""
    kinds = _shape_expr_member_kinds()

    def dims(n: int, *static: int) -> list[Any]:
        return [n, *(_shape_expr_like(d, True, kinds) for d in static)]

    # 5x7 plane: block 64 (next power of two), one block per row; grid x = N*C*Tc rows.
    assert tensorrt_plugin.aot_launch("temporal_reconstruct", dims(2, 6, 3, 5, 7), 2) == (64, [6, 3, 35, 2], 36, 1)
    # 56x56 plane: block capped at 1024, four blocks per row; grid x = N*C_out*T rows.
    got = tensorrt_plugin.aot_launch("channel_reconstruct", dims(2, 6, 3, 56, 56), 24)
    assert got == (1024, [6, 24, 3, 56, 56], 2 * 24 * 3, 4)
    with pytest.raises(ValueError, match="T must be static"):
        tensorrt_plugin.aot_launch("temporal_reconstruct", [2, 6, _shape_expr_like(3, False, kinds), 5, 7], 2)
    # N symbolic, as in an engine build: the launch is computed without truth-testing any expression.
    symbolic_n = _shape_expr_like(0, False, kinds)
    for kernel in ("temporal_reconstruct", "channel_reconstruct"):
        block, _, grid_x, grid_y = tensorrt_plugin.aot_launch(kernel, [symbolic_n, *dims(1, 6, 3, 5, 7)[1:]], 2)
        assert type(grid_x).__name__ == "ShapeExprLike" and grid_y == 1 and block == 64


def test_min_ptx_per_arch() -> None:
    """PTX ISA minimums from the PTX ISA release notes (Triton targets sm_XXa from Hopper on), floored at 7.8."""
    from vared2.plugins import ptx

    want = {75: 78, 80: 78, 86: 78, 87: 78, 89: 78, 90: 80, 100: 86, 103: 88, 120: 87, 121: 88}
    assert {arch: ptx.min_ptx_version(arch) for arch in ptx.SUPPORTED_ARCHS} == want
    for arch in (70, 101, 110):  # Volta; Jetson Thor (sm_101, renamed sm_110): not compiled for
        with pytest.raises(ValueError, match=rf"sm_{arch} is not a target"):
            ptx.min_ptx_version(arch)


@pytest.mark.parametrize(("capability", "arch"), [("7.5", 75), ("8.6", 86), ("10.0", 100), ("12.1", 121)])
def test_arch_from_capability(capability: str, arch: int) -> None:
    assert tensorrt_plugin.arch_from_capability(capability) == arch


def test_unsupported_arch_falls_back_to_local_functions() -> None:
    with pytest.raises(ValueError, match="compute capability"):
        tensorrt_plugin.arch_from_capability("sm_86")
    assert tensorrt_plugin.arch_problem(86) is None
    problem = tensorrt_plugin.arch_problem(110)
    assert problem is not None and "sm_110" in problem and "ONNX local functions" in problem


# ---- GPU tier (./build.sh gpu-check): build engines with the AOT plugins and compare with the reference ----


def _build_and_run(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """A strongly typed engine of a one-op model: its precision is the model's (fp16 or fp32 tensors)."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxBytes, Profile, TrtRunner

    builder, network, parser = NetworkFromOnnxBytes(model_bytes, strongly_typed=True)()
    kinds = [network.get_layer(i).type for i in range(network.num_layers)]
    assert trt.LayerType.PLUGIN_V3 in kinds, f"the parser did not pick the vared2 plugin: {kinds}"
    x = feeds["x"]
    profile = Profile().add("x", (1, *x.shape[1:]), x.shape, (2 * x.shape[0], *x.shape[1:]))
    engine = EngineFromNetwork((builder, network, parser), CreateConfig(profiles=[profile]))
    with TrtRunner(engine) as runner:
        return np.asarray(runner.infer(feeds)["y"])


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_aot_plugins_match_reference_on_gpu(fp16: bool) -> None:
    import torch

    from vared2.engines.tensorrt_engine import gpu_info
    from vared2.plugins import onnx_functions, reference

    tensorrt_plugin.register_plugins(tensorrt_plugin.arch_from_capability(gpu_info()["compute_capability"]))
    rng = np.random.default_rng(0)
    tolerance = 2e-2 if fp16 else 1e-4  # fp16: the kernels compute in fp32 and round the output once
    dtype, elem = (np.float16, onnx.TensorProto.FLOAT16) if fp16 else (np.float32, onnx.TensorProto.FLOAT)
    x = rng.standard_normal((2, 6, 3, 5, 7)).astype(dtype)
    scale, shift = rng.standard_normal((2, 6)).astype(dtype), rng.standard_normal((2, 6)).astype(dtype)
    model = onnx_functions.single_op_model("TemporalReconstruct", [["N", 6, 3, 5, 7], [2, 6], [2, 6]], elem, factor=2)
    got = _build_and_run(model.SerializeToString(), {"x": x, "scale": scale, "shift": shift})
    assert got.dtype == dtype
    torch_in = [torch.from_numpy(v.astype(np.float32)) for v in (x, scale, shift)]
    want = reference.temporal_reconstruct(*torch_in, 2)
    np.testing.assert_allclose(got.astype(np.float32), want.numpy(), rtol=tolerance, atol=tolerance)

    weight, bias = rng.standard_normal((10, 1, 1, 3, 3)).astype(dtype), rng.standard_normal(10).astype(dtype)
    model = onnx_functions.single_op_model(
        "ChannelReconstruct", [["N", 6, 3, 5, 7], [10, 1, 1, 3, 3], [10]], elem, out_channels=16
    )
    got = _build_and_run(model.SerializeToString(), {"x": x, "weight": weight, "bias": bias})
    assert got.dtype == dtype
    torch_in = [torch.from_numpy(v.astype(np.float32)) for v in (x, weight, bias)]
    want = reference.channel_reconstruct(*torch_in, 16)
    np.testing.assert_allclose(got.astype(np.float32), want.numpy(), rtol=tolerance, atol=tolerance)
