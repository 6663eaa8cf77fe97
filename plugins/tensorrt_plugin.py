"""TensorRT plugins for the two ops through TensorRT's Python plugin API, ahead of time (DESIGN.md §3).

``register_plugins()`` registers ``vared2::TemporalReconstruct`` and ``vared2::ChannelReconstruct`` with
``tensorrt.plugin``: a ``register`` function describing the output (shape and type), an ``autotune`` function
offering fp32 and fp16, and an ``aot_impl`` that compiles the Triton kernel to PTX for the build GPU and
returns it with its launch geometry. TensorRT embeds that PTX in the plan, so an engine deserializes and runs
in any TensorRT runtime (C++, ``trtexec``, Python) without this module, Triton or Python plugin code.

The ONNX nodes carry ``plugin_namespace="vared2"`` and ``plugin_version="1"``, so once the plugins are
registered TensorRT's ONNX parser builds them instead of inlining the local functions. AOT plugins need
TensorRT >= 10.9; with older TensorRT (JetPack 6 ships 10.3) ``register_plugins`` raises
``PluginUnavailable`` and the engine builder parses the ONNX local functions into ordinary layers instead.

Importing this module does not import TensorRT. This file deliberately has no ``from __future__ import
annotations``: ``tensorrt.plugin`` reads the real annotation objects of the functions it is given.
"""

import threading
from collections.abc import Sequence
from typing import Any

from . import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

MIN_TENSORRT = (10, 9)
PLUGIN_IDS = (f"{DOMAIN}::{TEMPORAL_RECONSTRUCT}", f"{DOMAIN}::{CHANNEL_RECONSTRUCT}")

_lock = threading.Lock()
_registered_version: str | None = None


class PluginUnavailable(RuntimeError):
    """TensorRT's ahead-of-time Python plugins cannot be used here; build from the ONNX local functions."""


def parse_version(version: str) -> tuple[int, int]:
    """``"10.13.0.35"`` -> ``(10, 13)``."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from None


def _cdiv(a: Any, b: int) -> Any:
    """Ceiling division that works on ints and on TensorRT's symbolic shape expressions alike."""
    return (a + (b - 1)) // b


def temporal_launch(dims: Sequence[Any], factor: int, block: int) -> tuple[list[Any], Any, Any]:
    """Extra int32 arguments (kernel order) and grid (x, y) of ``temporal_reconstruct_kernel`` for
    ``x = [N, C, Tc, H, W]``; ``dims`` may be ints or symbolic expressions (N is dynamic in an engine)."""
    n, c, tc, h, w = dims
    return [c, tc, h * w, factor], n * c * tc, _cdiv(h * w, block)


def channel_launch(dims: Sequence[Any], out_channels: int, block: int) -> tuple[list[Any], Any, Any]:
    """Extra int32 arguments (kernel order) and grid (x, y) of ``channel_reconstruct_kernel`` for
    ``x = [N, C_c, T, H, W]``."""
    n, computed, t, h, w = dims
    return [computed, out_channels, t, h, w], n * out_channels * t, _cdiv(h * w, block)


def version_problem(version: str) -> str | None:
    """Why TensorRT ``version`` cannot take the AOT plugin path, or None when it can."""
    if parse_version(version) >= MIN_TENSORRT:
        return None
    wanted = ".".join(map(str, MIN_TENSORRT))
    return (
        f"TensorRT {version} is older than {wanted}, which ahead-of-time Python plugins need; "
        "older TensorRT parses the ONNX local functions into ordinary layers instead"
    )


def plugin_support() -> str | None:
    """Why the AOT plugin path is unavailable here, or None when ``register_plugins`` can work."""
    try:
        import tensorrt as trt
    except ImportError as error:
        return f"TensorRT is not importable ({error}); the ONNX local functions will be parsed instead"
    version = getattr(trt, "__version__", None)
    if not isinstance(version, str):
        return "the installed 'tensorrt' has no __version__ (stubs only?); the ONNX local functions will be parsed"
    problem = version_problem(version)
    if problem is not None:
        return problem
    if not hasattr(trt, "QuickPluginCreationRequest"):
        return f"TensorRT {version} lacks ahead-of-time plugin support (no QuickPluginCreationRequest)"
    return None


def register_plugins() -> str:
    """Register both plugins with ``tensorrt.plugin`` (once per process) and return TensorRT's version.

    Raises ``PluginUnavailable`` when TensorRT is missing or older than 10.9.
    """
    global _registered_version
    with _lock:
        if _registered_version is not None:
            return _registered_version
        reason = plugin_support()
        if reason is not None:
            raise PluginUnavailable(reason)
        import tensorrt as trt
        import tensorrt.plugin as trtp

        _define_plugins(trt, trtp)
        _registered_version = str(trt.__version__)
        return _registered_version


def _current_arch() -> int:
    """Compute capability of the build GPU, as Triton's active driver reports it (e.g. 86)."""
    import triton

    target = triton.runtime.driver.active.get_current_target()
    return int(target.arch)


def _static(expr: Any, what: str) -> int:
    """A shape expression TensorRT knows at build time (every axis but the batch)."""
    if not expr.is_constant:
        raise ValueError(f"{what} must be static for the vared2 plugins (only the batch axis is dynamic)")
    return int(expr.constant_value)


def _define_plugins(trt: Any, trtp: Any) -> None:
    """The ``tensorrt.plugin`` definitions; annotations must be the real classes of ``trtp``."""
    from .ptx import compile_kernel
    from .triton_kernels import block_for

    def storage(desc: Any) -> str:
        if desc.dtype == trt.float32:
            return "fp32"
        if desc.dtype == trt.float16:
            return "fp16"
        raise TypeError(f"vared2 plugins take float32 or float16 tensors, got {desc.dtype}")

    def aot_result(
        kernel: str, dtype: str, block: int, extra: list[Any], grid_x: Any, grid_y: Any
    ) -> tuple[str, str, Any, Any]:
        compiled = compile_kernel(kernel, _current_arch(), dtype, block)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = grid_x
        launch.grid_y = grid_y
        launch.block_x = compiled.num_warps * 32
        launch.shared_mem = compiled.shared_mem
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in extra])
        return compiled.name, compiled.ptx, launch, extra_args

    same_types = trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")

    @trtp.register(PLUGIN_IDS[0])
    def temporal_desc(
        x: trtp.TensorDesc, scale: trtp.TensorDesc, shift: trtp.TensorDesc, factor: int
    ) -> trtp.TensorDesc:
        out = x.like()
        out.shape_expr[2] = x.shape_expr[2] * factor
        return out

    @trtp.autotune(PLUGIN_IDS[0])
    def temporal_autotune(
        x: trtp.TensorDesc, scale: trtp.TensorDesc, shift: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        return [same_types]

    @trtp.aot_impl(PLUGIN_IDS[0])
    def temporal_aot(
        x: trtp.TensorDesc,
        scale: trtp.TensorDesc,
        shift: trtp.TensorDesc,
        factor: int,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        dims = list(x.shape_expr)
        block = block_for(_static(dims[3], "H") * _static(dims[4], "W"))
        extra, grid_x, grid_y = temporal_launch(dims, factor, block)
        return aot_result("temporal_reconstruct", storage(x), block, extra, grid_x, grid_y)

    @trtp.register(PLUGIN_IDS[1])
    def channel_desc(
        x: trtp.TensorDesc, weight: trtp.TensorDesc, bias: trtp.TensorDesc, out_channels: int
    ) -> trtp.TensorDesc:
        out = x.like()
        out.shape_expr[1] = out_channels
        return out

    @trtp.autotune(PLUGIN_IDS[1])
    def channel_autotune(
        x: trtp.TensorDesc, weight: trtp.TensorDesc, bias: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        return [same_types]

    @trtp.aot_impl(PLUGIN_IDS[1])
    def channel_aot(
        x: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        out_channels: int,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        dims = list(x.shape_expr)
        block = block_for(_static(dims[3], "H") * _static(dims[4], "W"))
        extra, grid_x, grid_y = channel_launch(dims, out_channels, block)
        return aot_result("channel_reconstruct", storage(x), block, extra, grid_x, grid_y)
