"""TensorRT plugins for the two ops through TensorRT's Python plugin API, ahead of time (DESIGN.md §3).

``register_plugins()`` registers ``vared2::TemporalReconstruct`` and ``vared2::ChannelReconstruct`` with
``tensorrt.plugin`` (``register``, ``autotune``, ``aot_impl``: the Triton kernel's PTX is embedded in the plan, so
an engine runs in any TensorRT runtime without this module). It raises ``PluginUnavailable`` where it cannot (TensorRT
< 10.9, Triton missing, an unsupported GPU); the builder then parses the ONNX local functions instead
(docs/plugins.md). Importing this module does not import TensorRT. This file deliberately has no ``from __future__
import annotations``: ``tensorrt.plugin`` reads the real annotation objects of the functions it is given.
"""

import threading
from collections.abc import Sequence
from typing import Any

from vared2.formats.errors import InputError

from . import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

MIN_TENSORRT = (10, 9)
PLUGIN_IDS = (f"{DOMAIN}::{TEMPORAL_RECONSTRUCT}", f"{DOMAIN}::{CHANNEL_RECONSTRUCT}")

_FALLBACK = "the ONNX local functions will be parsed instead"
_lock = threading.Lock()
_registered_version: str | None = None
_target_arch: int | None = None  # the sm_<arch> aot_impl compiles for: the last successful register_plugins


class PluginUnavailable(InputError, RuntimeError):
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


def arch_from_capability(capability: str) -> int:
    """``"8.6"`` -> 86, ``"12.0"`` -> 120: the ``sm_<arch>`` number of a compute capability (as ``gpu_info``
    reports it)."""
    try:
        major, minor = (int(part) for part in capability.split("."))
    except ValueError:
        raise ValueError(f"cannot read a compute capability from {capability!r} (expected e.g. '8.6')") from None
    return major * 10 + minor


def arch_problem(arch: int) -> str | None:
    """Why the kernels cannot be compiled for ``sm_<arch>`` here (Triton or PyTorch missing, or an arch outside
    ``ptx.SUPPORTED_ARCHS``), or None when they can."""
    try:
        from .ptx import SUPPORTED_ARCHS
    except (ImportError, OSError) as error:  # triton, torch, or a shared library they load
        return f"the plugin kernels need Triton and PyTorch, which are not importable ({error}); {_FALLBACK}"
    if arch not in SUPPORTED_ARCHS:
        known = ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS)
        return (
            f"this GPU is sm_{arch}, which the vared2 plugin kernels are not compiled for (only {known}); {_FALLBACK}"
        )
    return None


def _compile_problem(arch: int) -> str | None:
    """Compile both kernels once now (Triton caches them), so a toolchain failure surfaces here, where the
    builder can fall back, rather than inside TensorRT's engine build."""
    from .ptx import KERNELS, compile_kernel

    for kernel in KERNELS:
        try:
            compile_kernel(kernel, arch, "fp32")
        except Exception as error:  # Triton's compile errors have no common base class
            return f"Triton could not compile {kernel} for sm_{arch} ({type(error).__name__}: {error}); {_FALLBACK}"
    return None


def register_plugins(arch: int) -> str:
    """Register both plugins with ``tensorrt.plugin`` (once per process), compiling for ``sm_<arch>`` (the build
    GPU, e.g. 86), and return TensorRT's version.

    Raises ``PluginUnavailable`` saying why when TensorRT is missing or older than 10.9, Triton or PyTorch is
    missing, or the kernels cannot be compiled for this arch. A failed call leaves no arch to compile for, so a
    plugin registered earlier in the process refuses to build rather than emit PTX for another GPU.
    """
    global _registered_version, _target_arch
    with _lock:
        _target_arch = None
        reason = plugin_support() or arch_problem(arch) or _compile_problem(arch)
        if reason is not None:
            raise PluginUnavailable(reason)
        if _registered_version is None:
            import tensorrt as trt
            import tensorrt.plugin as trtp

            _define_plugins(trt, trtp)
            _registered_version = str(trt.__version__)
        _target_arch = arch
        return _registered_version


def _static(expr: Any, what: str) -> int:
    """A dimension TensorRT knows at build time (every axis but the batch). In ``tensorrt.plugin``,
    ``ShapeExpr.is_constant`` is a property and ``constant_value()`` a method; plain ints pass through."""
    if isinstance(expr, int):
        return expr
    if not expr.is_constant:
        raise ValueError(f"{what} must be static for the vared2 plugins (only the batch axis is dynamic)")
    return int(expr.constant_value())


def aot_launch(kernel: str, dims: Sequence[Any], attribute: int) -> tuple[int, list[Any], Any, Any]:
    """Block, int32 extra arguments and grid (x, y) of ``kernel`` for input dims ``[N, C, T, H, W]``, as
    ``aot_impl`` returns them; ``attribute`` is ``factor`` or ``out_channels``. In a build the dims are
    TensorRT's shape expressions: C, T, H, W are read as build-time constants, N stays symbolic."""
    from .triton_kernels import block_for

    n, *rest = dims
    c, t, h, w = (_static(d, axis) for d, axis in zip(rest, "CTHW", strict=True))
    block = block_for(h * w)
    if kernel == "temporal_reconstruct":
        return block, *temporal_launch([n, c, t, h, w], attribute, block)
    if kernel == "channel_reconstruct":
        return block, *channel_launch([n, c, t, h, w], attribute, block)
    raise ValueError(f"unknown kernel {kernel!r}")


def _define_plugins(trt: Any, trtp: Any) -> None:
    """The ``tensorrt.plugin`` definitions; annotations must be the real classes of ``trtp``."""
    from .ptx import compile_kernel

    def storage(desc: Any) -> str:
        if desc.dtype == trt.float32:
            return "fp32"
        if desc.dtype == trt.float16:
            return "fp16"
        raise TypeError(f"vared2 plugins take float32 or float16 tensors, got {desc.dtype}")

    def aot_result(kernel: str, x: Any, attribute: int) -> tuple[str, str, Any, Any]:
        if _target_arch is None:
            raise RuntimeError("the vared2 plugins have no GPU to compile for: register_plugins(arch) failed")
        block, extra, grid_x, grid_y = aot_launch(kernel, list(x.shape_expr), attribute)
        compiled = compile_kernel(kernel, _target_arch, storage(x), block)
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
        return aot_result("temporal_reconstruct", x, factor)

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
        return aot_result("channel_reconstruct", x, out_channels)
