"""Tiny exported models with non-trivial parameters for the rewrite tests: a fresh model's BatchNorm statistics and
cheap ops are identities, which would let a wrong rewrite of them pass unnoticed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vared2.export.onnx_export import ExportedModel, export_model
from vared2.models import VaRed2VideoResNet
from vared2.models.batchnorm import BucketBatchNorm3d


def randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Random BatchNorm means and shifts (and each reduced bucket's own statistics, so the exporter restores them
    with its per-channel ``Mul``), ϕs filters and ϕt coefficients (the stored ϕt rows are the rebuilt frames'; the
    computed frame's fixed (1, 0) is not a parameter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
            if isinstance(m, BucketBatchNorm3d):  # a reduced bucket's own statistics: the exporter's ratio Mul
                m.bucket_running_mean.normal_(0, 0.2, generator=g)
                m.bucket_running_var.uniform_(0.5, 1.5, generator=g)
        for name, param in model.named_parameters():
            if "channel_weight" in name or "temporal_shift" in name or "temporal_scale" in name:
                param.normal_(0, 0.3, generator=g)


def export_tiny(
    build: Callable[..., VaRed2VideoResNet], out_dir: Path
) -> tuple[VaRed2VideoResNet, ExportedModel, np.ndarray]:
    """A width-0.125, 4×32×32 model of ``build`` with random parameters, exported to ``out_dir``, and stem
    features (post-ReLU, batch 2) to feed its buckets."""
    torch.manual_seed(0)
    model = build(width=0.125, frames=4, size=32, num_classes=5)
    randomise(model)
    exported = export_model(model.eval(), out_dir)
    features = np.maximum(np.random.default_rng(0).standard_normal((2, 8, 4, 16, 16)).astype(np.float32), 0)
    return model, exported, features
