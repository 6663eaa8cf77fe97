"""``DynamicConv3d``: one ``nn.Conv3d`` that can run at any of its policies (DESIGN.md §2, "Dynamic convolution").

At policy ``(pt, pc)`` it computes every ``R = 2**pt``-th output frame and the first ``C_c`` output channels with
the shared weights (a *partial* convolution), then rebuilds the rest with the reference cheap ops: ϕt
(``temporal_reconstruct``) and ϕs (``channel_reconstruct``). At ``(0, 0)`` it is exactly the wrapped conv.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vared2.plugins.reference import channel_reconstruct, source_channels, temporal_reconstruct

from .buckets import Policy

__all__ = ["DynamicConv3d", "Policy", "computed_channels"]


def computed_channels(c_out: int, pc: int) -> int:
    """``C_c = min(C_out, 8 * ceil(C_out / 2**pc / 8))``: the channels a partial conv computes (multiples of 8)."""
    if c_out < 1 or pc < 0:
        raise ValueError(f"computed_channels needs c_out >= 1 and pc >= 0, got c_out={c_out}, pc={pc}")
    return min(c_out, 8 * math.ceil(c_out / 2**pc / 8))


def _bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    dilation: tuple[int, ...],
) -> Tensor:
    """``F.conv3d``, except that a temporal-only convolution (a ``k×1×1`` kernel, no spatial stride or padding)
    under CPU bfloat16 autocast runs as the same 2-D convolution over the ``[N, C, T, H·W]`` view.

    Why: with torch 2.14.1 oneDNN's bfloat16 weight gradient of the 3-D form is garbage (values near 1e38,
    different every call) on 2-frame inputs, e.g. ``[16, 144, 2, 7, 7]`` — every ``r2plus1d`` layer3 temporal
    conv at 8 input frames; the 2-D form is right (``tests/test_models_dynamic_conv.py``). In fp32, and so in
    every export, the 3-D call is kept.
    """
    temporal_only = weight.shape[3:] == (1, 1) and stride[1:] == (1, 1) and padding[1:] == (0, 0)
    if not (temporal_only and _bf16_autocast()):
        return F.conv3d(x, weight, bias, stride, padding, dilation)
    y = F.conv2d(x.flatten(3), weight.flatten(3), bias, (stride[0], 1), (padding[0], 0), (dilation[0], 1))
    return y.unflatten(3, x.shape[3:])


class DynamicConv3d(nn.Conv3d):
    """A 3-D convolution with partial-computation policies and per-level cheap reconstruction parameters.

    A subclass of ``nn.Conv3d`` so ``weight``/``bias`` keep the state-dict names of the conv it replaces. The
    cheap-op parameters live in ``ParameterDict``s keyed by level: ``temporal_scale.<pt>``/``temporal_shift.<pt>``
    (rows 1..R-1 of ϕt's ``[R, C_out]``; row 0 is fixed to scale 1, shift 0) and
    ``channel_weight.<pc>``/``channel_bias.<pc>`` (ϕs for the ``C_out - C_c`` generated channels).

    ``policy`` (set by the model before each forward) selects what ``forward`` runs.
    """

    def __init__(
        self,
        conv: nn.Conv3d,
        *,
        t_levels: Iterable[int] = (0,),
        c_levels: Iterable[int] = (0,),
        frames_out: int,
        name: str = "DynamicConv3d",
    ) -> None:
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"{name}: only ungrouped convolutions with explicit zero padding can be made dynamic "
                f"(groups={conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r})"
            )
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if self.bias is not None and conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.name = name
        self.explicit_padding: tuple[int, int, int] = tuple(conv.padding)  # type: ignore[assignment]
        self.frames_out = frames_out
        self.t_levels = tuple(sorted({0, *t_levels}))
        self.c_levels = tuple(sorted({0, *c_levels}))
        self.policy: Policy = (0, 0)
        self._check_levels()

        c_out, device, dtype = self.out_channels, self.weight.device, self.weight.dtype
        # Initialised so every rebuilt frame copies its computed frame and every generated channel copies its
        # source channel: a fresh layer at any policy is a sensible approximation of the full one.
        self.temporal_scale = nn.ParameterDict()
        self.temporal_shift = nn.ParameterDict()
        for pt in self.t_levels[1:]:
            rows = 2**pt - 1
            self.temporal_scale[str(pt)] = nn.Parameter(torch.ones(rows, c_out, device=device, dtype=dtype))
            self.temporal_shift[str(pt)] = nn.Parameter(torch.zeros(rows, c_out, device=device, dtype=dtype))
        self.channel_weight = nn.ParameterDict()
        self.channel_bias = nn.ParameterDict()
        for pc in self.c_levels[1:]:
            generated = c_out - self.computed_channels_at(pc)
            if generated == 0:
                continue  # C_c == C_out at this level: nothing to rebuild
            weight = torch.zeros(generated, 1, 1, 3, 3, device=device, dtype=dtype)
            weight[:, 0, 0, 1, 1] = 1.0
            self.channel_weight[str(pc)] = nn.Parameter(weight)
            self.channel_bias[str(pc)] = nn.Parameter(torch.zeros(generated, device=device, dtype=dtype))

    def _check_levels(self) -> None:
        if self.frames_out < 1:
            raise ValueError(f"{self.name}: frames_out must be >= 1, got {self.frames_out}")
        for pt in self.t_levels:
            if not isinstance(pt, int) or pt < 0:
                raise ValueError(f"{self.name}: temporal levels are ints >= 0, got {pt!r}")
            factor = 2**pt
            if self.frames_out % factor:
                raise ValueError(
                    f"{self.name}: temporal level t{pt} (R={factor}) does not divide the layer's "
                    f"{self.frames_out} output frames"
                )
        for pc in self.c_levels:
            if not isinstance(pc, int) or pc < 0:
                raise ValueError(f"{self.name}: channel levels are ints >= 0, got {pc!r}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, t_levels={self.t_levels}, c_levels={self.c_levels}"

    # Helpers the exporter uses to bake one policy into a graph.

    def computed_channels_at(self, pc: int) -> int:
        return computed_channels(self.out_channels, pc)

    def temporal_params(self, pt: int | Policy, pc: int = 0) -> tuple[Tensor, Tensor]:
        """ϕt's ``(scale, shift)``, each ``[R, C_c]``, for ``(pt, pc)`` (given as two ints or one pair)."""
        if isinstance(pt, tuple):
            pt, pc = pt
        self._check_policy((pt, pc))
        if pt == 0:
            raise ValueError(f"{self.name}: no temporal reconstruction at pt=0")
        cc = self.computed_channels_at(pc)
        scale, shift = self.temporal_scale[str(pt)], self.temporal_shift[str(pt)]
        scale = torch.cat([torch.ones_like(scale[:1]), scale])[:, :cc]
        shift = torch.cat([torch.zeros_like(shift[:1]), shift])[:, :cc]
        return scale, shift

    def channel_params(self, pc: int) -> tuple[Tensor, Tensor]:
        """ϕs's ``(weight [G, 1, 1, 3, 3], bias [G])`` for level ``pc``; ``G = C_out - C_c`` (may be 0)."""
        self._check_policy((0, pc))
        if str(pc) in self.channel_weight:
            return self.channel_weight[str(pc)], self.channel_bias[str(pc)]
        empty = self.weight.new_zeros(0, 1, 1, 3, 3)
        return empty, self.weight.new_zeros(0)

    def source_channels(self, pc: int) -> list[int]:
        """Which computed channel each generated channel of level ``pc`` is rebuilt from."""
        return source_channels(self.computed_channels_at(pc), self.out_channels)

    def _check_policy(self, policy: Policy) -> tuple[int, int]:
        pt, pc = policy
        if pt not in self.t_levels or pc not in self.c_levels:
            raise ValueError(
                f"{self.name}: policy t{pt}c{pc} not available; this layer was built with temporal levels "
                f"{list(self.t_levels)} and channel levels {list(self.c_levels)}"
            )
        return pt, pc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_policy(x, self.policy)

    def forward_policy(self, x: Tensor, policy: Policy) -> Tensor:
        pt, pc = self._check_policy(policy)
        if pt == 0 and pc == 0 and not _bf16_autocast():
            return super().forward(x)
        factor = 2**pt
        cc = self.computed_channels_at(pc)
        if factor > 1:
            k, st, p, d = self.kernel_size[0], self.stride[0], self.explicit_padding[0], self.dilation[0]
            frames_out = (x.shape[2] + 2 * p - d * (k - 1) - 1) // st + 1
            if frames_out % factor:
                raise ValueError(
                    f"{self.name}: input with {x.shape[2]} frames gives {frames_out} output frames, "
                    f"not divisible by R={factor} (policy t{pt}c{pc})"
                )
        bias = self.bias[:cc] if self.bias is not None else None
        stride = (self.stride[0] * factor, self.stride[1], self.stride[2])
        y = conv3d(x, self.weight[:cc], bias, stride, self.explicit_padding, self.dilation)
        if factor > 1:
            scale, shift = self.temporal_params(pt, pc)
            y = temporal_reconstruct(y, scale, shift, factor)
        if cc < self.out_channels:
            weight, bias_g = self.channel_params(pc)
            y = channel_reconstruct(y, weight, bias_g, self.out_channels)
        return y
