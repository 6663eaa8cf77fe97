"""BatchNorm folding for export: static convolutions and gated partial convolutions at one policy.

BatchNorm in eval mode is a per-channel affine map ``s * y + t``. Folding it into a plain convolution is
the usual ``W' = s W``, ``b' = s b + t``. A gated layer is ``Conv → ϕt → ϕs`` followed by that map, and
the two cheap ops need care:

* ϕt is per-channel affine, so both ``s`` and ``t`` fold through it exactly.
* ϕs convolves a *computed* channel with zero padding. Scaling commutes with zero padding, a shift does
  not (the border taps would see ``t`` instead of 0). So when ϕs is present only the scale is folded into
  the convolution; the generated channels take their own ``s`` and ``t`` in ϕs' weight and bias, and the
  computed channels' shift ``t`` is one ``Add`` after ϕs. Exact, with no extra pass when ϕs is absent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vared2.models import DynamicConv3d
from vared2.models.batchnorm import batchnorm_statistics
from vared2.models.dynamic_conv import Policy
from vared2.plugins import torch_ops as _torch_ops  # noqa: F401  (registers torch.ops.vared2.*)


def batchnorm_affine(bn: nn.BatchNorm3d) -> tuple[Tensor, Tensor]:
    """The eval-mode BatchNorm as ``(scale, shift)`` per channel, with the statistics of its current bucket."""
    mean, var = batchnorm_statistics(bn)
    scale = torch.rsqrt(var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def fold_conv_bn(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> nn.Conv3d:
    """A new ``nn.Conv3d`` equal to ``bn(conv(x))`` in eval mode."""
    scale, shift = batchnorm_affine(bn)
    folded = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
    )
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    with torch.no_grad():
        folded.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1, 1)).float())
        folded.bias.copy_((bias * scale + shift).float())  # type: ignore[union-attr]
    return folded


class FoldedGatedConv(nn.Module):
    """One gated layer at a fixed policy with its BatchNorm folded in: ``Conv → ϕt → ϕs (→ Add)``.

    The cheap ops run as ``torch.ops.vared2.*`` so the ONNX exporter emits the ``vared2::`` nodes.
    """

    weight: Tensor
    bias: Tensor
    t_scale: Tensor
    t_shift: Tensor
    c_weight: Tensor
    c_bias: Tensor
    post_shift: Tensor

    def __init__(self, layer: DynamicConv3d, bn: nn.BatchNorm3d, policy: Policy, name: str) -> None:
        super().__init__()
        pt, pc = policy
        self.factor = 2**pt
        self.out_channels = layer.out_channels
        self.computed = layer.computed_channels_at(pc)
        self.stride = (layer.stride[0] * self.factor, layer.stride[1], layer.stride[2])
        self.padding = tuple(int(p) for p in layer.padding)
        has_channel_op = self.computed < self.out_channels

        s_all, t_all = batchnorm_affine(bn)
        s, t = s_all[: self.computed], t_all[: self.computed]
        weight = layer.weight[: self.computed].double()
        bias = layer.bias[: self.computed].double() if layer.bias is not None else torch.zeros_like(s)
        conv_shift = torch.zeros_like(t) if has_channel_op else t
        self.register_buffer("weight", (weight * s.view(-1, 1, 1, 1, 1)).float())
        self.register_buffer("bias", (bias * s + conv_shift).float())

        if self.factor > 1:
            a, b = (p.double() for p in layer.temporal_params(policy))
            # The conv now yields P' = s*P + conv_shift; frame R*k+j must be s*(a_j*P_k + b_j) + conv_shift.
            self.register_buffer("t_scale", a.float())
            self.register_buffer("t_shift", (s * b + conv_shift * (1 - a)).float())

        if has_channel_op:
            if bool((s.abs() < 1e-12).any()):
                raise ValueError(
                    f"{name}: a BatchNorm scale of a computed channel is zero; the channel reconstruction "
                    "cannot be folded through it"
                )
            w, c = (p.double() for p in layer.channel_params(pc))
            generated = self.out_channels - self.computed
            source = torch.arange(generated) % self.computed
            s_gen, t_gen = s_all[self.computed :], t_all[self.computed :]
            ratio = (s_gen / s[source]).view(-1, 1, 1, 1, 1)
            self.register_buffer("c_weight", (w * ratio).float())
            self.register_buffer("c_bias", (c * s_gen + t_gen).float())
            post = torch.cat([t, torch.zeros_like(t_gen)]).view(1, -1, 1, 1, 1)
            self.register_buffer("post_shift", post.float())

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv3d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
        if self.factor > 1:
            y = torch.ops.vared2.temporal_reconstruct(y, self.t_scale, self.t_shift, self.factor)
        if self.computed < self.out_channels:
            y = torch.ops.vared2.channel_reconstruct(y, self.c_weight, self.c_bias, self.out_channels)
            y = y + self.post_shift
        return y
