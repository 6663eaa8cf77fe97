"""torchvision's VideoResNet-18s → VA-RED2 models: ``from_torchvision`` (a model) and ``convert_torchvision``
(a state-dict file the user downloaded: ``vared2 convert``), never unpickling code nor downloading anything.

The module tree and state-dict names of ``VaRed2VideoResNet`` are torchvision's, so the weights load as they are;
the extra keys (the gate, the cheap ops, the per-bucket BatchNorm statistics) start at identity / the full bucket's.
"""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .video_resnet import STAGE_PLANES, BucketsArg, VaRed2VideoResNet, bucket_names

__all__ = ["detect_backbone", "from_torchvision"]


def detect_backbone(model: nn.Module) -> str:
    """Which torchvision VideoResNet-18 ``model`` is, from its structure."""
    from torchvision.models.video.resnet import BasicBlock as TvBasicBlock
    from torchvision.models.video.resnet import Conv2Plus1D as TvConv2Plus1D
    from torchvision.models.video.resnet import VideoResNet

    if not isinstance(model, VideoResNet):
        raise TypeError(f"expected a torchvision VideoResNet, got {type(model).__name__}")
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    if [len(layer) for layer in layers] != [2, 2, 2, 2] or not all(
        isinstance(block, TvBasicBlock) for layer in layers for block in layer
    ):
        raise ValueError("only the 18-layer BasicBlock VideoResNets (r3d_18, mc3_18, r2plus1d_18) are supported")
    first = model.layer2[0].conv1[0]
    if len(model.stem) == 6 and isinstance(first, TvConv2Plus1D):
        return "r2plus1d_18"
    if len(model.stem) == 3 and isinstance(first, nn.Conv3d):
        if first.kernel_size == (3, 3, 3):
            return "r3d_18"
        if first.kernel_size == (1, 3, 3):
            return "mc3_18"
    raise ValueError("unrecognised VideoResNet layout: not r3d_18, mc3_18 or r2plus1d_18")


def from_torchvision(
    model: nn.Module, buckets: BucketsArg = None, *, frames: int = 16, size: int = 112
) -> VaRed2VideoResNet:
    """Convert a torchvision ``r3d_18``/``mc3_18``/``r2plus1d_18`` (weights copied; cheap ops at identity init).

    ``buckets=None`` takes the backbone's default table for ``frames``. The result is in the source's mode.
    """
    backbone = detect_backbone(model)
    state = model.state_dict()
    fc = model.get_submodule("fc")
    assert isinstance(fc, nn.Linear)
    if fc.in_features != STAGE_PLANES[-1]:
        raise ValueError(f"expected a full-width VideoResNet (fc over {STAGE_PLANES[-1]} features), got {fc}")
    config = ModelConfig(
        backbone=backbone, num_classes=fc.out_features, frames=frames, size=size, buckets=bucket_names(buckets)
    )
    ours = VaRed2VideoResNet(config)
    result = ours.load_state_dict(state, strict=False)
    extra = [k for k in result.missing_keys if not _is_vared2_key(k)]
    if extra or result.unexpected_keys:
        raise ValueError(
            f"torchvision {backbone} state dict does not match: missing {extra}, unexpected {result.unexpected_keys}"
        )
    for bn in ours.bucket_batchnorms():
        bn.copy_full_statistics()
    return ours.train(model.training)


def _is_vared2_key(key: str) -> bool:
    """State-dict keys that torchvision models do not have: the gate, the cheap-op parameters and the
    per-bucket BatchNorm statistics."""
    parts = key.split(".")
    extra = ("temporal_scale", "temporal_shift", "channel_weight", "channel_bias")
    return parts[0] == "gate" or any(p in extra for p in parts) or parts[-1].startswith("bucket_running_")
