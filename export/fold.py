"""BatchNorm folding for export: static convolutions and gated partial convolutions at one policy.

BatchNorm in eval mode is a per-channel affine map ``s * y + t``. Folding it into a plain convolution is
the usual ``W' = s W``, ``b' = s b + t``. A gated layer is ``Conv → ϕt → ϕs`` followed by that map, and
the two cheap ops need care:

* ϕt is per-channel affine, so both ``s`` and ``t`` fold through it exactly.
* ϕs convolves a *computed* channel with zero padding. Scaling commutes with zero padding, a shift does
  not (the border taps would see ``t`` instead of 0). So when ϕs is present only the scale is folded into
  the convolution; the generated channels take their own ``s`` and ``t`` in ϕs' weight and bias, and the
  computed channels' shift ``t`` is one ``Add`` after ϕs. Exact, with no extra pass when ϕs is absent.

A reduced bucket's BatchNorm has its own statistics (``BucketBatchNorm3d``), so its scale ``s_b`` differs from the
full bucket's ``s_full``. Folding ``s_b`` would make every bucket's weight a different tensor; the engines share
one copy (DESIGN.md §5) only if the partial weight is a prefix of the full bucket's. So the full bucket's scale is
folded everywhere and the bucket's own restored by a per-channel ``Mul`` with ``s_b / s_full`` after the
convolution (docs/design.md, "BatchNorm statistics per bucket").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vared2.formats.errors import InputError
from vared2.models import DynamicConv3d
from vared2.models.batchnorm import BucketBatchNorm3d, batchnorm_statistics
from vared2.models.dynamic_conv import Policy
from vared2.plugins import torch_ops as _torch_ops  # noqa: F401  (registers torch.ops.vared2.*)


def full_bucket_scale(bn: nn.BatchNorm3d) -> Tensor | None:
    """The BatchNorm scale ``γ/√(var+ε)`` with the *full* bucket's variance, when ``bn`` is set to another
    bucket's statistics (else None): the scale the full bucket's folded weight carries, which a reduced bucket
    shares (``FoldedGatedConv``)."""
    if not isinstance(bn, BucketBatchNorm3d) or bn.bucket == 0 or bn.running_var is None:
        return None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    return scale * bn.weight.double() if bn.weight is not None else scale


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
    out_scale: Tensor | None

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
        # Share the full bucket's folded weight (DESIGN.md §5: a prefix of it) and restore this bucket's own
        # scale with a per-channel ratio r = s/s_full after the convolution: (conv(x, W·s_full) + b/r)·r is
        # conv(x, W·s) + b. Where r is 1 (the full bucket, equal statistics) nothing is added.
        reference = full_bucket_scale(bn)
        ratio: Tensor | None = None
        folded_scale = s
        if reference is not None:
            candidate = s / reference[: self.computed]
            shareable = bool(torch.isfinite(candidate).all() and (candidate != 0).all())  # no zero scale either side
            if shareable and not bool((candidate == 1).all()):
                ratio, folded_scale = candidate, reference[: self.computed]
        folded_bias = bias * s + conv_shift
        self.register_buffer("weight", (weight * folded_scale.view(-1, 1, 1, 1, 1)).float())
        self.register_buffer("bias", (folded_bias if ratio is None else folded_bias / ratio).float())
        if ratio is None:
            self.out_scale = None
        else:
            self.register_buffer("out_scale", ratio.view(1, -1, 1, 1, 1).float())

        if self.factor > 1:
            a, b = (p.double() for p in layer.temporal_params(policy))
            # The conv now yields P' = s*P + conv_shift; frame R*k+j must be s*(a_j*P_k + b_j) + conv_shift.
            self.register_buffer("t_scale", a.float())
            self.register_buffer("t_shift", (s * b + conv_shift * (1 - a)).float())

        if has_channel_op:
            if bool((s.abs() < 1e-12).any()):
                raise InputError(
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
        if self.out_scale is not None:
            y = y * self.out_scale
        if self.factor > 1:
            y = torch.ops.vared2.temporal_reconstruct(y, self.t_scale, self.t_shift, self.factor)
        if self.computed < self.out_channels:
            y = torch.ops.vared2.channel_reconstruct(y, self.c_weight, self.c_bias, self.out_channels)
            y = y + self.post_shift
        return y
