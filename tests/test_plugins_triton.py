"""The Triton kernels: semantics under Triton's CPU interpreter, and compilation to PTX for the supported GPUs.

``TRITON_INTERPRET=1`` must be set before Triton is first imported, and other tests in the same process may
already have imported it, so the interpreter runs in a child process that reports its comparisons as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from vared2.plugins import ptx

TEMPORAL_CASES = [(2, 6, 3, 5, 7, 2), (1, 8, 2, 4, 4, 4), (1, 3, 1, 33, 35, 2), (3, 5, 2, 1, 1, 4)]
CHANNEL_CASES = [(2, 3, 8, 2, 5, 7), (1, 8, 16, 2, 4, 4), (1, 8, 9, 1, 3, 3), (3, 5, 7, 2, 1, 1), (1, 4, 12, 1, 33, 35)]

CHILD = r"""
import json, os, sys
assert os.environ["TRITON_INTERPRET"] == "1" and "triton" not in sys.modules
import torch
from vared2.plugins import reference, tensorrt_plugin, triton_kernels

temporal_cases, channel_cases = json.loads(sys.argv[1])
torch.manual_seed(0)
results = {}
for dtype in (torch.float32, torch.float16):
    for n, c, tc, h, w, r in temporal_cases:
        x, a, b = torch.randn(n, c, tc, h, w), torch.randn(r, c), torch.randn(r, c)
        x, a, b = x.to(dtype), a.to(dtype), b.to(dtype)
        got = triton_kernels.temporal_reconstruct(x, a, b, r)
        want = reference.temporal_reconstruct(x.float(), a.float(), b.float(), r)
        results[f"temporal-{dtype}-{[n, c, tc, h, w, r]}"] = [list(got.shape), list(want.shape), str(got.dtype),
            (got.float() - want.to(dtype).float()).abs().max().item(), want.abs().max().item()]
    for n, cc, out, t, h, w in channel_cases:
        g = out - cc
        x, wt, b = torch.randn(n, cc, t, h, w), torch.randn(g, 1, 1, 3, 3), torch.randn(g)
        x, wt, b = x.to(dtype), wt.to(dtype), b.to(dtype)
        got = triton_kernels.channel_reconstruct(x, wt, b, out)
        want = reference.channel_reconstruct(x.float(), wt.float(), b.float(), out)
        results[f"channel-{dtype}-{[n, cc, out, t, h, w]}"] = [list(got.shape), list(want.shape), str(got.dtype),
            (got.float() - want.to(dtype).float()).abs().max().item(), want.abs().max().item()]
# TensorRT's AOT launch, replayed: inputs, the plugin's int32 extra arguments, outputs, on the plugin's grid.
for n, c, tc, h, w, r in temporal_cases:
    x, a, b = torch.randn(n, c, tc, h, w), torch.randn(r, c), torch.randn(r, c)
    block = triton_kernels.block_for(h * w)
    extra, gx, gy = tensorrt_plugin.temporal_launch([n, c, tc, h, w], r, block)
    y = torch.full((n, c, tc * r, h, w), float("nan"))
    triton_kernels.temporal_reconstruct_kernel[(gx, gy)](x, a, b, *extra, y, BLOCK=block)
    want = reference.temporal_reconstruct(x, a, b, r)
    results[f"aot-temporal-{[n, c, tc, h, w, r]}"] = (y - want).abs().max().item()
for n, cc, out, t, h, w in channel_cases:
    g = out - cc
    x, wt, b = torch.randn(n, cc, t, h, w), torch.randn(g, 1, 1, 3, 3), torch.randn(g)
    block = triton_kernels.block_for(h * w)
    extra, gx, gy = tensorrt_plugin.channel_launch([n, cc, t, h, w], out, block)
    y = torch.full((n, out, t, h, w), float("nan"))
    triton_kernels.channel_reconstruct_kernel[(gx, gy)](x, wt, b, *extra, y, BLOCK=block)
    want = reference.channel_reconstruct(x, wt, b, out)
    results[f"aot-channel-{[n, cc, out, t, h, w]}"] = (y - want).abs().max().item()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict[str, list]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([TEMPORAL_CASES, CHANNEL_CASES])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check(result: list, dtype: str) -> None:
    got_shape, want_shape, got_dtype, error, scale = result
    assert got_shape == want_shape
    assert got_dtype == dtype
    # fp32: arithmetic-order differences only. fp16: both sides rounded to fp16, at most one unit apart.
    tolerance = 1e-5 if dtype == "torch.float32" else 2 * 2.0**-10 * max(1.0, scale)
    assert error <= tolerance, f"max abs error {error} > {tolerance}"


@pytest.mark.parametrize("dtype", ["torch.float32", "torch.float16"])
@pytest.mark.parametrize("case", TEMPORAL_CASES, ids=str)
def test_temporal_kernel_matches_reference(interpreted: dict[str, list], case: tuple, dtype: str) -> None:
    _check(interpreted[f"temporal-{dtype}-{list(case)}"], dtype)


@pytest.mark.parametrize("dtype", ["torch.float32", "torch.float16"])
@pytest.mark.parametrize("case", CHANNEL_CASES, ids=str)
def test_channel_kernel_matches_reference(interpreted: dict[str, list], case: tuple, dtype: str) -> None:
    _check(interpreted[f"channel-{dtype}-{list(case)}"], dtype)


@pytest.mark.parametrize("case", TEMPORAL_CASES, ids=str)
def test_temporal_kernel_with_tensorrt_launch_geometry(interpreted: dict[str, list], case: tuple) -> None:
    """The AOT plugin's extra arguments and grid drive the kernel to the reference result (NaN-filled output:
    every element must be written)."""
    assert interpreted[f"aot-temporal-{list(case)}"] <= 1e-5


@pytest.mark.parametrize("case", CHANNEL_CASES, ids=str)
def test_channel_kernel_with_tensorrt_launch_geometry(interpreted: dict[str, list], case: tuple) -> None:
    assert interpreted[f"aot-channel-{list(case)}"] <= 1e-5


def test_launchers_reject_bad_input() -> None:
    import torch

    from vared2.plugins import triton_kernels

    x = torch.zeros(1, 4, 2, 3, 3)
    with pytest.raises(ValueError, match=r"scale and shift must be \[2, 4\]"):
        triton_kernels.temporal_reconstruct(x, torch.zeros(2, 3), torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="must exceed C_c"):
        triton_kernels.channel_reconstruct(x, torch.zeros(0, 1, 1, 3, 3), torch.zeros(0), 4)
    with pytest.raises(TypeError, match="float32 or float16"):
        triton_kernels.temporal_reconstruct(x.double(), torch.zeros(2, 4), torch.zeros(2, 4), 2)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        triton_kernels.channel_reconstruct(x, torch.zeros(4, 1, 1, 3, 3).half(), torch.zeros(4), 8)
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="CUDA device"):
            triton_kernels.temporal_reconstruct(x, torch.zeros(2, 4), torch.zeros(2, 4), 2)


@pytest.mark.parametrize("kernel", sorted(ptx.KERNELS))
def test_kernels_compile_to_ptx_for_every_supported_gpu(kernel: str) -> None:
    start = time.perf_counter()
    spec = ptx.KERNELS[kernel]
    n_params = len(spec.inputs) + len(spec.scalars) + len(spec.outputs)
    for arch in ptx.SUPPORTED_ARCHS:
        for dtype in ptx.DTYPES:
            compiled = ptx.compile_kernel(kernel, arch, dtype)
            text = compiled.ptx
            target = re.search(r"^\.target (sm_\d+a?)", text, flags=re.M)
            assert target is not None and target.group(1) in (f"sm_{arch}", f"sm_{arch}a"), (arch, dtype)
            entry = re.search(rf"\.visible \.entry {compiled.name}\((.*?)\)", text, flags=re.S)
            assert entry is not None and compiled.name == f"{kernel}_kernel"
            # Exactly TensorRT's arguments: inputs, int32 scalars, outputs (Triton's hidden scratch removed).
            params = re.findall(r"\.param \.(u64|u32)", entry.group(1))
            want = ["u64"] * len(spec.inputs) + ["u32"] * len(spec.scalars) + ["u64"] * len(spec.outputs)
            assert params == want and len(params) == n_params
            version = re.search(r"^\.version (\d+)\.(\d+)", text, flags=re.M)
            assert version is not None and int(version.group(1) + version.group(2)) == ptx.min_ptx_version(arch)
            if dtype == "fp16":
                assert ".b16" in text or ".f16" in text
            # The edited PTX still assembles for its target.
            assert ptx.assemble(text, arch)[:4] == b"\x7fELF"
    print(f"{kernel}: {len(ptx.SUPPORTED_ARCHS) * len(ptx.DTYPES)} PTX compiles in {time.perf_counter() - start:.1f}s")


def test_compile_ptx_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown kernel"):
        ptx.compile_ptx("temporal", 80, "fp32")
    with pytest.raises(ValueError, match="dtype"):
        ptx.compile_ptx("temporal_reconstruct", 80, "bf16")
    with pytest.raises(ValueError, match="arch"):
        ptx.compile_ptx("temporal_reconstruct", 61, "fp32")
