"""Analytic cost of a bucket, in multiply-adds (MACs) — the video-model convention for "GFLOPs".

What is counted, per clip (batch 1):

- every convolution: ``C_out · C_in/groups · kt·kh·kw · T_out·H_out·W_out`` (the stem, the shortcut projections,
  and each dynamic conv at the bucket's policy — a partial conv computes only ``C_c`` channels and ``T_out/R``
  frames);
- ϕt (temporal reconstruction): one multiply-add per output element of the computed channels,
  ``C_c · T_out · H · W``, when ``R > 1``;
- ϕs (channel reconstruction): a depthwise 3×3 per generated channel, ``9 · G · T_out · H · W``, when ``G > 0``;
- the classifier: ``in_features · num_classes``.

Not counted (as in ``torch.utils.flop_counter`` and the papers' tables): biases, BatchNorm, ReLU, pooling, the
residual additions. ``FlopCounterMode`` counts 2 FLOPs per MAC and does not see ϕt (element-wise), so
``FlopCount.counted_by_torch`` is the part it measures exactly; the full total differs from it by ϕt only
(well under 1 % for these backbones). The gate MLP is separate (``VaRed2VideoResNet.gate_gflops``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .buckets import Policy
from .dynamic_conv import DynamicConv3d

if TYPE_CHECKING:
    from .video_resnet import VaRed2VideoResNet

Shape = tuple[int, int, int, int]
"""``(C, T, H, W)`` of one clip's activation."""


@dataclass(frozen=True)
class FlopCount:
    """Multiply-adds of one bucket for one clip, by part."""

    stem: int = 0
    stages: int = 0  # the (partial) convolutions of the dynamic layers
    shortcuts: int = 0  # the 1×1×1 downsample projections
    temporal: int = 0  # ϕt
    channel: int = 0  # ϕs
    head: int = 0  # the classifier

    @property
    def total(self) -> int:
        return self.stem + self.stages + self.shortcuts + self.temporal + self.channel + self.head

    @property
    def counted_by_torch(self) -> int:
        """The MACs ``FlopCounterMode`` sees (convolutions and matrix products): everything but ϕt."""
        return self.total - self.temporal

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(
            self.stem + other.stem,
            self.stages + other.stages,
            self.shortcuts + other.shortcuts,
            self.temporal + other.temporal,
            self.channel + other.channel,
            self.head + other.head,
        )


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_macs(conv: nn.Conv3d, shape: Shape, policy: Policy = (0, 0)) -> tuple[int, int, int, Shape]:
    """``(conv MACs, ϕt MACs, ϕs MACs, output shape)`` of one convolution on an activation of ``shape``.

    A policy other than ``(0, 0)`` needs a ``DynamicConv3d``.
    """
    c_in, *sizes = shape
    if c_in != conv.in_channels:
        raise ValueError(f"conv with {conv.in_channels} input channels got an activation of shape {shape}")
    pad = conv.padding
    if isinstance(pad, str):
        raise ValueError(f"conv_macs needs explicit padding, got {pad!r}")
    out = [
        _out_size(n, k, s, p, d)
        for n, k, s, p, d in zip(sizes, conv.kernel_size, conv.stride, pad, conv.dilation, strict=True)
    ]
    t_out, h_out, w_out = out
    kernel = conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
    per_output = (c_in // conv.groups) * kernel
    pt, pc = policy
    if (pt, pc) != (0, 0) and not isinstance(conv, DynamicConv3d):
        raise ValueError(f"policy t{pt}c{pc} on a static convolution")
    factor = 2**pt
    computed = conv.computed_channels_at(pc) if isinstance(conv, DynamicConv3d) else conv.out_channels
    t_computed = _out_size(sizes[0], conv.kernel_size[0], conv.stride[0] * factor, pad[0], conv.dilation[0])
    main = computed * per_output * t_computed * h_out * w_out
    temporal = computed * t_out * h_out * w_out if factor > 1 else 0
    channel = 9 * (conv.out_channels - computed) * t_out * h_out * w_out
    return main, temporal, channel, (conv.out_channels, t_out, h_out, w_out)


def _convs(modules: Sequence[nn.Module]) -> list[nn.Conv3d]:
    """The convolutions inside ``modules``, in execution order (pre-order of sequential containers)."""
    return [m for m in chain.from_iterable(mod.modules() for mod in modules) if isinstance(m, nn.Conv3d)]


def analytic_flops(model: VaRed2VideoResNet, bucket: int | str) -> FlopCount:
    """Multiply-adds per clip of ``model`` at ``bucket``, at the config's frames and size (gate excluded)."""
    policies = model.buckets[bucket].policies
    config = model.config
    shape: Shape = (3, config.frames, config.size, config.size)
    stem = 0
    for conv in _convs([model.stem]):
        macs, _, _, shape = conv_macs(conv, shape)
        stem += macs
    count = FlopCount(stem=stem)
    for stage, layer in enumerate(model.stages()):
        for block in layer:
            block_in = shape
            parts = dict(block.named_children())  # conv1, conv2, relu and (if any) downsample
            for conv in _convs([parts["conv1"], parts["conv2"]]):
                policy = policies[stage] if isinstance(conv, DynamicConv3d) else (0, 0)
                main, temporal, channel, shape = conv_macs(conv, shape, policy)
                count += FlopCount(stages=main, temporal=temporal, channel=channel)
            if "downsample" in parts:
                for conv in _convs([parts["downsample"]]):
                    macs, _, _, _ = conv_macs(conv, block_in)
                    count += FlopCount(shortcuts=macs)
    return count + FlopCount(head=model.fc.in_features * model.fc.out_features)


def measured_flops(model: VaRed2VideoResNet, bucket: int | str, x: Tensor | None = None) -> int:
    """FLOPs ``torch.utils.flop_counter`` counts for ``model(x, bucket=bucket)`` (2 per MAC; batch of ``x``).

    ``x`` defaults to one zero clip at the config's frames and size.
    """
    config = model.config
    if x is None:
        x = torch.zeros(1, 3, config.frames, config.size, config.size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, bucket=bucket)
    return int(counter.get_total_flops())
