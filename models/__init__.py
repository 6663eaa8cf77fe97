"""VA-RED2 in PyTorch: dynamic convolution, gate, bucket table, VideoResNet backbones (DESIGN.md §2).

The names below load on first use (PEP 562), so the torch-free modules (``config``, ``buckets``,
``train_config``) import without torch: the command line reads its option defaults from them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batchnorm import BucketBatchNorm3d
    from .buckets import Bucket, BucketError, BucketTable, Policy, default_buckets
    from .checkpoint import load, save
    from .config import ModelConfig
    from .dynamic_conv import DynamicConv3d, computed_channels
    from .flops import FlopCount, analytic_flops, measured_flops
    from .gate import SoftModulationGate
    from .torchvision_convert import from_torchvision
    from .video_resnet import VaRed2VideoResNet, build_model, mc3_18, r2plus1d_18, r3d_18

_HOMES = {
    "BucketBatchNorm3d": "batchnorm",
    **dict.fromkeys(("Bucket", "BucketError", "BucketTable", "Policy", "default_buckets"), "buckets"),
    **dict.fromkeys(("load", "save"), "checkpoint"),
    "ModelConfig": "config",
    **dict.fromkeys(("DynamicConv3d", "computed_channels"), "dynamic_conv"),
    **dict.fromkeys(("FlopCount", "analytic_flops", "measured_flops"), "flops"),
    "SoftModulationGate": "gate",
    "from_torchvision": "torchvision_convert",
    **dict.fromkeys(("VaRed2VideoResNet", "build_model", "mc3_18", "r2plus1d_18", "r3d_18"), "video_resnet"),
}

__all__ = [
    "Bucket",
    "BucketBatchNorm3d",
    "BucketError",
    "BucketTable",
    "DynamicConv3d",
    "FlopCount",
    "ModelConfig",
    "Policy",
    "SoftModulationGate",
    "VaRed2VideoResNet",
    "analytic_flops",
    "build_model",
    "computed_channels",
    "default_buckets",
    "from_torchvision",
    "load",
    "mc3_18",
    "measured_flops",
    "r2plus1d_18",
    "r3d_18",
    "save",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
