"""Ahead-of-time compilation of the Triton kernels to PTX, without a GPU (DESIGN.md §3, §8).

``compile_ptx("channel_reconstruct", 86, "fp16")`` returns PTX for ``sm_86``, compiled by Triton's bundled LLVM
and ``ptxas`` for a named target, so it runs on a CPU-only machine. Two adjustments make the PTX fit TensorRT's AOT
plugins (docs/plugins.md): its ISA version is lowered to the oldest the target supports (``MIN_PTX``), so older
drivers can JIT it; and Triton's two hidden scratch-pointer parameters are removed from the entry point after
checking the kernel does not use them.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_kernels

#: PTX ISA (Triton's ``ptx_version`` option: 78 = 7.8) to emit per compute capability (86 = sm_86): the oldest
#: ISA that has the target, but not below 7.8 (CUDA 11.8, the oldest CUDA TensorRT 10 runs on). Triton compiles
#: for the arch-specific ``sm_XXa`` from Hopper on, so those rows are the ``a`` targets' minimums (PTX ISA release
#: notes: 8.0 added sm_90a, 8.6 sm_100a, 8.7 sm_120a, 8.8 sm_103a and sm_121a).
MIN_PTX = {75: 78, 80: 78, 86: 78, 87: 78, 89: 78, 90: 80, 100: 86, 103: 88, 120: 87, 121: 88}
#: The compute capabilities the kernels are compiled (and, in the tests, assembled with ``ptxas``) for. Others
#: (e.g. Jetson Thor's sm_110, which the bundled ``ptxas`` cannot assemble) take the ONNX local functions.
SUPPORTED_ARCHS = tuple(MIN_PTX)
DTYPES = ("fp32", "fp16")


@dataclass(frozen=True)
class KernelSpec:
    """What TensorRT needs to know about one kernel: its arguments in launch order."""

    function: triton.JITFunction
    inputs: tuple[str, ...]
    scalars: tuple[str, ...]
    outputs: tuple[str, ...]

    def signature(self, dtype: str) -> dict[str, str]:
        pointers = {name: f"*{dtype}" for name in (*self.inputs, *self.outputs)}
        return {name: pointers.get(name, "i32") for name in (*self.inputs, *self.scalars, *self.outputs)}


KERNELS: dict[str, KernelSpec] = {
    "temporal_reconstruct": KernelSpec(
        triton_kernels.temporal_reconstruct_kernel,
        inputs=("x_ptr", "scale_ptr", "shift_ptr"),
        scalars=("channels", "frames", "plane", "factor"),
        outputs=("y_ptr",),
    ),
    "channel_reconstruct": KernelSpec(
        triton_kernels.channel_reconstruct_kernel,
        inputs=("x_ptr", "weight_ptr", "bias_ptr"),
        scalars=("computed", "out_channels", "frames", "height", "width"),
        outputs=("y_ptr",),
    ),
}


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel compiled for one target: PTX text plus what a launch needs."""

    name: str  # the PTX entry point
    ptx: str
    num_warps: int
    shared_mem: int
    block: int


def min_ptx_version(arch: int) -> int:
    """The PTX ISA (as Triton's ``ptx_version`` option, e.g. 78 = 7.8) to emit for ``sm_<arch>``: ``MIN_PTX``.

    An arch the table lacks is refused: a guess would be either too old for ``ptxas`` or too new for the driver.
    """
    if arch not in MIN_PTX:
        known = ", ".join(f"sm_{a}" for a in SUPPORTED_ARCHS)
        raise ValueError(f"sm_{arch} is not a target the vared2 kernels are compiled for (supported: {known})")
    return MIN_PTX[arch]


def _strip_hidden_params(ptx: str, entry: str, keep: int) -> str:
    """Drop the entry's parameters after the first ``keep`` when nothing in the PTX references them."""
    header = re.search(rf"\.entry {re.escape(entry)}\((.*?)\)", ptx, flags=re.S)
    if header is None:
        raise RuntimeError(f"no .entry {entry} in the compiled PTX")
    params = [p.strip() for p in header.group(1).split(",") if p.strip()]
    extra = params[keep:]
    for param in extra:
        name = param.split()[-1]
        if len(re.findall(rf"\b{re.escape(name)}\b", ptx)) != 1:
            raise RuntimeError(f"{entry}: hidden parameter {name} is used by the kernel; it cannot be dropped")
    if not extra:
        return ptx
    body = ",\n".join(f"\t{p}" for p in params[:keep])
    return ptx[: header.start(1)] + "\n" + body + "\n" + ptx[header.end(1) :]


@functools.cache
def compile_kernel(
    kernel_name: str, arch: int, dtype: str, block: int = 256, ptx_version: int | None = -1
) -> CompiledKernel:
    """Compile ``kernel_name`` for ``sm_<arch>`` with ``dtype`` storage ("fp32" or "fp16").

    ``ptx_version``: -1 picks ``min_ptx_version(arch)``; None keeps Triton's default (the newest).
    """
    if kernel_name not in KERNELS:
        raise ValueError(f"unknown kernel {kernel_name!r}; known: {sorted(KERNELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not isinstance(arch, int) or arch < 75:
        raise ValueError(f"arch must be a compute capability as an int >= 75 (e.g. 86 for sm_86), got {arch!r}")
    if block < 32 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 32, got {block}")
    spec = KERNELS[kernel_name]
    options: dict[str, int] = {"num_warps": triton_kernels.warps_for(block)}
    version = min_ptx_version(arch) if ptx_version == -1 else ptx_version
    if version is not None:
        options["ptx_version"] = version
    source = ASTSource(fn=spec.function, signature=spec.signature(dtype), constexprs={"BLOCK": block})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    metadata = compiled.metadata
    for field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(metadata, field, 0):
            raise RuntimeError(f"{kernel_name}: needs {field}={getattr(metadata, field)}; TensorRT cannot provide it")
    keep = len(spec.inputs) + len(spec.scalars) + len(spec.outputs)
    ptx = _strip_hidden_params(compiled.asm["ptx"], metadata.name, keep)
    return CompiledKernel(metadata.name, ptx, metadata.num_warps, metadata.shared, block)


def compile_ptx(kernel_name: str, arch: int, dtype: str, block: int = 256) -> str:
    """PTX text of ``kernel_name`` ("temporal_reconstruct" or "channel_reconstruct") for ``sm_<arch>``."""
    return compile_kernel(kernel_name, arch, dtype, block).ptx


def assemble(ptx: str, arch: int) -> bytes:
    """Assemble PTX to a cubin with the ``ptxas`` bundled in Triton: proves the (edited) PTX is valid."""
    from triton import knobs

    tool = knobs.nvidia.ptxas
    if tool is None:
        raise FileNotFoundError("Triton's bundled ptxas was not found")
    target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        source, cubin = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
        source.write_text(ptx)
        result = subprocess.run(
            [tool.path, f"-arch={target}", str(source), "-o", str(cubin)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"ptxas -arch={target} failed: {result.stderr.strip()}")
        return cubin.read_bytes()
