"""The soft modulation gate (DESIGN.md §2): stem features → one logit per bucket.

It reads the stem output, so the stem runs once per clip whatever bucket is chosen. Its summary of a clip is
per channel: the mean response (appearance) and the mean absolute change between consecutive frames (motion) —
both cheap, and exactly what decides how much temporal and channel redundancy a clip has.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SoftModulationGate(nn.Module):
    """``[N, C, T, H, W]`` → ``[N, num_buckets]`` logits: spatial average pool, temporal mean and motion, an MLP."""

    def __init__(self, in_channels: int, num_buckets: int, hidden: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or num_buckets < 1 or hidden < 1:
            raise ValueError(
                f"SoftModulationGate needs positive sizes, got in_channels={in_channels}, "
                f"num_buckets={num_buckets}, hidden={hidden}"
            )
        self.in_channels = in_channels
        self.num_buckets = num_buckets
        self.hidden = hidden
        self.fc1 = nn.Linear(2 * in_channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_buckets)
        # All logits start equal, so argmax (first maximum) picks bucket 0 — the full model — until trained.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def descriptor(self, features: Tensor) -> Tensor:
        """``[N, 2C]``: per channel, the mean response and the mean absolute difference between consecutive
        frames. The difference is taken before spatial pooling: an object moving across a still background
        barely changes the spatial mean of a feature map, but changes it locally everywhere it passes."""
        if features.dim() != 5 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"gate input must be [N, {self.in_channels}, T, H, W] stem features, got {list(features.shape)}"
            )
        appearance = features.mean(dim=(2, 3, 4))
        if features.shape[2] > 1:
            motion = (features[:, :, 1:] - features[:, :, :-1]).abs().mean(dim=(2, 3, 4))
        else:
            motion = torch.zeros_like(appearance)
        return torch.cat([appearance, motion], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(self.descriptor(features))))

    def macs(self) -> int:
        """Multiply-adds of the MLP per clip (the pooling's additions are not counted)."""
        return 2 * self.in_channels * self.hidden + self.hidden * self.num_buckets
