"""The modules that become ONNX graphs: the gate (uint8 clip → stem features, bucket logits) and one
bucket (features → logits) with every BatchNorm folded and the bucket's policy baked in."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn

from vared2.export.fold import FoldedGatedConv, fold_conv_bn
from vared2.models import VaRed2VideoResNet


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)


def fold_static_batchnorms(module: nn.Module) -> None:
    """Fold every ``Conv3d`` directly followed by a ``BatchNorm3d`` inside an ``nn.Sequential`` (stem,
    shortcut projections), in place."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = seq._modules[first], seq._modules[second]
            if type(conv) is nn.Conv3d and isinstance(bn, nn.BatchNorm3d):
                seq._modules[first] = fold_conv_bn(conv, bn)
                seq._modules[second] = nn.Identity()


class BucketGraph(nn.Module):
    """Stem features → logits for one bucket: the residual stages with each gated layer replaced by its
    folded partial convolution, then pooling and the classifier."""

    def __init__(self, model: VaRed2VideoResNet, bucket: int | str) -> None:
        super().__init__()
        index = model.buckets.index(bucket)
        policies = model.buckets[index].policies
        work = copy.deepcopy(model).eval()
        work.set_bucket(index)  # the stage BatchNorms fold with this bucket's statistics
        paths = {id(m): name for name, m in work.named_modules()}
        for name, stage, layer, bn in work.gated_layers():
            _replace(work, name, FoldedGatedConv(layer, bn, policies[stage], name))
            _replace(work, paths[id(bn)], nn.Identity())
        fold_static_batchnorms(work)
        self.layer1, self.layer2, self.layer3, self.layer4 = work.layer1, work.layer2, work.layer3, work.layer4
        self.avgpool, self.fc = work.avgpool, work.fc

    def forward(self, features: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(features))))
        return self.fc(self.avgpool(x).flatten(1))


class GateGraph(nn.Module):
    """uint8 RGB clip ``[N, T, H, W, 3]`` → (stem features, bucket logits); normalisation in the graph so
    the runtime hands over decoded frames as they are."""

    scale: Tensor
    offset: Tensor

    def __init__(self, model: VaRed2VideoResNet) -> None:
        super().__init__()
        config = model.config
        work = copy.deepcopy(model).eval()
        fold_static_batchnorms(work.stem)
        self.stem, self.gate = work.stem, work.gate
        std = torch.tensor(config.std, dtype=torch.float64)
        mean = torch.tensor(config.mean, dtype=torch.float64)
        # (x / 255 - mean) / std as one multiply and one add per element.
        self.register_buffer("scale", (1.0 / (255.0 * std)).float().view(1, 3, 1, 1, 1))
        self.register_buffer("offset", (-mean / std).float().view(1, 3, 1, 1, 1))

    def forward(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        x = clip.permute(0, 4, 1, 2, 3).float() * self.scale + self.offset
        features = self.stem(x)
        return features, self.gate(features)


def normalize_clip(clip: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The float input the PyTorch model expects for a uint8 ``[N, T, H, W, 3]`` clip (for parity checks)."""
    x = clip.permute(0, 4, 1, 2, 3).double() / 255.0
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1, 1)
    return ((x - m) / s).float()
