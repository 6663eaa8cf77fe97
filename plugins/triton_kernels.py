"""Triton kernels for the two ops: one launch each, every output element written once (DESIGN.md §3).

Arguments follow TensorRT's ahead-of-time plugin convention (input pointers, int32 scalars, output pointer; the
block size is the only compile-time constant). The same kernels run on a CUDA device through the launchers below,
on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, the tests), and compiled to PTX inside TensorRT
engines (``plugins/ptx.py``). Arithmetic is fp32 whatever the storage type (fp32 or fp16); offsets are 64-bit.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCK = 1024


@triton.jit
def temporal_reconstruct_kernel(  # type: ignore[no-untyped-def]  # Triton reads annotations itself
    x_ptr,
    scale_ptr,
    shift_ptr,
    channels,
    frames,
    plane,
    factor,
    y_ptr,
    BLOCK: tl.constexpr,
):
    """Program (row, b): row = (n, c, k) of x flattened over N·C·Tc, b a block of the H·W plane.

    Reads x[n, c, k, block] once and writes the R output frames R*k + j; their rows in y are row*R + j.
    """
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < plane
    c = (row // frames) % channels
    x = tl.load(x_ptr + row.to(tl.int64) * plane + col, mask=mask).to(tl.float32)
    out_row = row.to(tl.int64) * factor
    for j in range(0, factor):
        a = tl.load(scale_ptr + j * channels + c).to(tl.float32)
        b = tl.load(shift_ptr + j * channels + c).to(tl.float32)
        y = x * a + b
        tl.store(y_ptr + (out_row + j) * plane + col, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def channel_reconstruct_kernel(  # type: ignore[no-untyped-def]  # Triton reads annotations itself
    x_ptr,
    weight_ptr,
    bias_ptr,
    computed,
    out_channels,
    frames,
    height,
    width,
    y_ptr,
    BLOCK: tl.constexpr,
):
    """Program (row, b): row = (n, k, t) of y flattened over N·C_out·T, b a block of the H·W plane.

    Output channel k < C_c copies x[n, k, t]; k >= C_c is generated channel g = k - C_c, the depthwise 3x3
    filter g (zero padding) over x[n, g mod C_c, t] plus bias[g]. Both kinds are written by the same launch.
    """
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    plane = height * width
    mask = col < plane
    t = row % frames
    k = (row // frames) % out_channels
    n = row // (frames * out_channels)
    y_offsets = row.to(tl.int64) * plane + col
    if k < computed:
        source_row = (n * computed + k) * frames + t
        value = tl.load(x_ptr + source_row.to(tl.int64) * plane + col, mask=mask)
        tl.store(y_ptr + y_offsets, value, mask=mask)
    else:
        g = k - computed
        source_base = ((n * computed + g % computed) * frames + t).to(tl.int64) * plane
        h = col // width
        w = col % width
        acc = tl.zeros([BLOCK], dtype=tl.float32) + tl.load(bias_ptr + g).to(tl.float32)
        for dh in tl.static_range(3):
            for dw in tl.static_range(3):
                hh = h + (dh - 1)
                ww = w + (dw - 1)
                inside = mask & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
                tap = tl.load(x_ptr + source_base + hh * width + ww, mask=inside, other=0.0).to(tl.float32)
                acc += tap * tl.load(weight_ptr + g * 9 + dh * 3 + dw).to(tl.float32)
        tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask)


def block_for(plane: int) -> int:
    """The block along the H·W plane: the plane rounded up to a power of two, at least 32, at most 1024."""
    return min(MAX_BLOCK, max(32, triton.next_power_of_2(plane)))


def warps_for(block: int) -> int:
    """One warp per 128 elements of the block (1..8): small planes do not leave threads idle."""
    return min(8, max(1, block // 128))


def _check(tensors: dict[str, Tensor]) -> None:
    """Same float dtype (fp32/fp16) and device everywhere; CUDA unless Triton's interpreter is on."""
    x = tensors["x"]
    if x.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"x must be float32 or float16, got {x.dtype}")
    for name, tensor in tensors.items():
        if tensor.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {tensor.dtype}")
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device}, x on {x.device}")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the Triton kernels run on a CUDA device (or under TRITON_INTERPRET=1); x is on {x.device}")
    if x.numel() >= 2**31:
        raise ValueError(f"x has {x.numel()} elements; the kernels' shape arguments are int32")


def temporal_reconstruct(x: Tensor, scale: Tensor, shift: Tensor, factor: int) -> Tensor:
    """ϕt with one kernel launch; same contract as ``reference.temporal_reconstruct``."""
    if x.dim() != 5:
        raise ValueError(f"x must be 5-D [N, C, Tc, H, W], got shape {list(x.shape)}")
    n, c, tc, h, w = x.shape
    if factor < 1 or scale.shape != (factor, c) or shift.shape != (factor, c):
        raise ValueError(
            f"scale and shift must be [{factor}, {c}] (factor >= 1), got {list(scale.shape)} and {list(shift.shape)}"
        )
    _check({"x": x, "scale": scale, "shift": shift})
    x, scale, shift = x.contiguous(), scale.contiguous(), shift.contiguous()
    y = torch.empty((n, c, tc * factor, h, w), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block = block_for(h * w)
    grid = (n * c * tc, triton.cdiv(h * w, block))
    temporal_reconstruct_kernel[grid](x, scale, shift, c, tc, h * w, factor, y, BLOCK=block, num_warps=warps_for(block))
    return y


def channel_reconstruct(x: Tensor, weight: Tensor, bias: Tensor, out_channels: int) -> Tensor:
    """ϕs with one kernel launch; same contract as ``reference.channel_reconstruct``."""
    if x.dim() != 5:
        raise ValueError(f"x must be 5-D [N, C_c, T, H, W], got shape {list(x.shape)}")
    n, computed, t, h, w = x.shape
    generated = out_channels - computed
    if generated <= 0:
        raise ValueError(f"out_channels ({out_channels}) must exceed C_c ({computed})")
    if weight.shape != (generated, 1, 1, 3, 3) or bias.shape != (generated,):
        raise ValueError(
            f"weight must be [{generated}, 1, 1, 3, 3] and bias [{generated}], "
            f"got {list(weight.shape)} and {list(bias.shape)}"
        )
    _check({"x": x, "weight": weight, "bias": bias})
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    y = torch.empty((n, out_channels, t, h, w), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block = block_for(h * w)
    grid = (n * out_channels * t, triton.cdiv(h * w, block))
    channel_reconstruct_kernel[grid](
        x, weight, bias, computed, out_channels, t, h, w, y, BLOCK=block, num_warps=warps_for(block)
    )
    return y
