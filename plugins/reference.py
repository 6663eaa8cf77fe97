"""Reference semantics of the cheap reconstruction ops (DESIGN.md §2 steps 3–4, §3).

These are the definitions every other implementation (ONNX functions, Triton kernels, TensorRT plugins)
is tested against, and the ones the PyTorch model trains with: plain differentiable tensor code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def temporal_reconstruct(x: Tensor, scale: Tensor, shift: Tensor, factor: int) -> Tensor:
    """ϕt: rebuild ``factor`` frames from each computed frame with a per-channel affine map.

    ``x`` is ``[N, C, Tc, H, W]``; ``scale`` and ``shift`` are ``[R, C]`` with ``R == factor``.
    Output ``[N, C, R*Tc, H, W]`` with ``out[:, c, R*k + j] = scale[j, c] * x[:, c, k] + shift[j, c]``.
    """
    n, c, tc, h, w = x.shape
    if scale.shape != (factor, c) or shift.shape != (factor, c):
        raise ValueError(
            f"temporal_reconstruct: scale and shift must be [{factor}, {c}], "
            f"got {list(scale.shape)} and {list(shift.shape)}"
        )
    # [R, C] -> [1, C, 1, R, 1, 1], broadcast against x as [N, C, Tc, 1, H, W].
    a = scale.t().reshape(1, c, 1, factor, 1, 1)
    b = shift.t().reshape(1, c, 1, factor, 1, 1)
    return (x.unsqueeze(3) * a + b).reshape(n, c, tc * factor, h, w)


def source_channels(computed: int, out_channels: int) -> list[int]:
    """Which computed channel each generated channel is built from: ``g mod C_c``."""
    return [g % computed for g in range(out_channels - computed)]


def channel_reconstruct(x: Tensor, weight: Tensor, bias: Tensor, out_channels: int) -> Tensor:
    """ϕs: append ``G = out_channels - C_c`` channels, each a depthwise (1, 3, 3) convolution of one
    computed channel (``g mod C_c``), padding ``(0, 1, 1)``, one filter and one bias per generated channel.

    ``x`` is ``[N, C_c, T, H, W]``, ``weight`` ``[G, 1, 1, 3, 3]``, ``bias`` ``[G]``.
    """
    computed = x.shape[1]
    generated = out_channels - computed
    if generated <= 0:
        raise ValueError(f"channel_reconstruct: out_channels ({out_channels}) must exceed C_c ({computed})")
    if weight.shape != (generated, 1, 1, 3, 3) or bias.shape != (generated,):
        raise ValueError(
            f"channel_reconstruct: weight must be [{generated}, 1, 1, 3, 3] and bias [{generated}], "
            f"got {list(weight.shape)} and {list(bias.shape)}"
        )
    n, _, frames, height, width = x.shape
    index = torch.tensor(source_channels(computed, out_channels), device=x.device)
    # The (1, 3, 3) filter sees one frame at a time, so this is a 2-D depthwise convolution over the free view
    # [N, G·T, H, W], each filter repeated for the T frames: the same sums as a grouped 3-D convolution, whose
    # backward on the CPU is several times slower (it made a training step of the channel buckets ~1.5x longer).
    sources = x.index_select(1, index).reshape(n, generated * frames, height, width)
    filters = weight.reshape(generated, 1, 3, 3).repeat_interleave(frames, dim=0)
    made = F.conv2d(sources, filters, bias.repeat_interleave(frames), padding=1, groups=generated * frames)
    return torch.cat([x, made.reshape(n, generated, frames, height, width)], dim=1)
