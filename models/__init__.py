"""VA-RED2 in PyTorch: dynamic convolution, gate, bucket table, VideoResNet backbones (DESIGN.md §2)."""

from .batchnorm import BucketBatchNorm3d
from .buckets import Bucket, BucketError, BucketTable, Policy, default_buckets
from .checkpoint import load, save
from .config import ModelConfig
from .dynamic_conv import DynamicConv3d, computed_channels
from .flops import FlopCount, analytic_flops, measured_flops
from .gate import SoftModulationGate
from .torchvision_convert import from_torchvision
from .video_resnet import VaRed2VideoResNet, build_model, mc3_18, r2plus1d_18, r3d_18

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
