"""VA-RED2 VideoResNets (DESIGN.md §2): torchvision's ``r3d_18``, ``mc3_18`` and ``r2plus1d_18`` with dynamic
convolutions in the four residual stages, a soft modulation gate on the stem output, and a bucket table.

The module tree and state-dict names are torchvision's (``stem``, ``layer1..4``, ``avgpool``, ``fc``; BasicBlock
``conv1``/``conv2``/``downsample``; ``Conv2Plus1D`` as a 4-item Sequential), so torchvision weights load as they
are; the only extra keys are the cheap-op parameters of each ``DynamicConv3d`` and the ``gate``. The config lives in
``models.config``, the conversion from torchvision models and weight files in ``models.torchvision_convert``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import overload

import torch
from torch import Tensor, nn

from vared2.formats.errors import InputError

from . import flops
from .batchnorm import BucketBatchNorm3d, SyncedBatchNorm3d
from .buckets import Bucket, BucketTable, conv_frames
from .config import GATE_HIDDEN, ModelConfig
from .dynamic_conv import DynamicConv3d
from .gate import SoftModulationGate

__all__ = [
    "BasicBlock",
    "Conv2Plus1D",
    "ModelConfig",
    "VaRed2VideoResNet",
    "build_model",
    "copy_weights",
    "mc3_18",
    "r2plus1d_18",
    "r3d_18",
]

STAGE_PLANES = (64, 128, 256, 512)


def scaled_channels(channels: int, width: float) -> int:
    """Channel count at a width multiplier: exact at 1.0, else rounded to a multiple of 8 and at least 8."""
    if width == 1.0:
        return channels
    return max(8, round(channels * width / 8) * 8)


def midplanes(in_planes: int, out_planes: int) -> int:
    """torchvision's Conv2Plus1D hidden width: the (2+1)D block has about the parameters of a full 3×3×3 conv."""
    return (in_planes * out_planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * out_planes)


class Conv2Plus1D(nn.Sequential):
    """Spatial (1×3×3) conv → BN → ReLU → temporal (3×1×1) conv; both convs dynamic. Indices as torchvision's."""

    def __init__(self, spatial: DynamicConv3d, temporal: DynamicConv3d, num_buckets: int) -> None:
        bn = BucketBatchNorm3d(spatial.out_channels, num_buckets)
        super().__init__(spatial, bn, nn.ReLU(inplace=True), temporal)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock around given convolutions: conv → BN → ReLU → conv → BN, + shortcut, ReLU.
    Its BatchNorms keep statistics per bucket (``BucketBatchNorm3d``)."""

    def __init__(
        self, conv1: nn.Module, conv2: nn.Module, planes: int, downsample: nn.Module | None, num_buckets: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(conv1, BucketBatchNorm3d(planes, num_buckets), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv2, BucketBatchNorm3d(planes, num_buckets))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        out += residual
        return self.relu(out)


def _conv(c_in: int, c_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> nn.Conv3d:
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)


class VaRed2VideoResNet(nn.Module):
    """A VideoResNet-18 whose residual stages run at the policy of a bucket; see the module docstring.

    ``model(x, bucket=k)`` → logits for the whole batch at bucket ``k`` (index or name);
    ``model(x)`` → ``(logits, choices)``: the gate picks a bucket per sample (argmax) and each group of samples
    runs its bucket, results in input order. ``x`` is the normalised clip ``[N, 3, frames, H, W]``.

    Not thread-safe: a forward sets the ``policy`` attribute of every dynamic layer.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.buckets = config.bucket_table
        width = config.width
        planes = [scaled_channels(p, width) for p in STAGE_PLANES]
        kind = {"r3d_18": ["3d"] * 4, "mc3_18": ["3d"] + ["2d"] * 3, "r2plus1d_18": ["2plus1d"] * 4}
        self._kinds = kind[config.backbone]
        self._gated: list[tuple[str, int, str]] = []  # (conv path, stage, BN path)

        if config.backbone == "r2plus1d_18":
            stem_mid = scaled_channels(45, width)
            self.stem = nn.Sequential(
                _conv(3, stem_mid, (1, 7, 7), (1, 2, 2)),
                SyncedBatchNorm3d(stem_mid),
                nn.ReLU(inplace=True),
                _conv(stem_mid, planes[0], (3, 1, 1), (1, 1, 1)),
                SyncedBatchNorm3d(planes[0]),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv3d(3, planes[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                SyncedBatchNorm3d(planes[0]),
                nn.ReLU(inplace=True),
            )

        frames = config.frames  # every stem keeps the frame count
        in_planes = planes[0]
        layers = []
        for stage, out_planes in enumerate(planes):
            stride = 1 if stage == 0 else 2
            blocks = []
            for index in range(2):
                s = stride if index == 0 else 1
                path = f"layer{stage + 1}.{index}"
                # As in torchvision, both halves of a block use the hidden width of (block input, block output).
                mid = midplanes(in_planes, out_planes)
                conv1, frames_mid = self._make_conv(f"{path}.conv1", stage, in_planes, out_planes, mid, s, frames)
                conv2, frames_out = self._make_conv(f"{path}.conv2", stage, out_planes, out_planes, mid, 1, frames_mid)
                downsample = None
                if s != 1 or in_planes != out_planes:
                    t_stride = 1 if self._kinds[stage] == "2d" else s
                    downsample = nn.Sequential(
                        nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=(t_stride, s, s), bias=False),
                        BucketBatchNorm3d(out_planes, len(self.buckets)),
                    )
                blocks.append(BasicBlock(conv1, conv2, out_planes, downsample, len(self.buckets)))
                in_planes, frames = out_planes, frames_out
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(planes[3], config.num_classes)
        self.gate = SoftModulationGate(planes[0], len(self.buckets), config.gate_hidden)
        self._init_weights()

    def _make_conv(
        self, path: str, stage: int, c_in: int, c_out: int, mid: int, stride: int, frames: int
    ) -> tuple[nn.Module, int]:
        """The dynamic conv (or Conv2Plus1D pair) of one BasicBlock half, and its output frame count."""
        t_levels, c_levels = self.buckets.levels(stage)

        def dynamic(conv: nn.Conv3d, name: str, frames_out: int, bn: str) -> DynamicConv3d:
            self._gated.append((name, stage, bn))
            return DynamicConv3d(conv, t_levels=t_levels, c_levels=c_levels, frames_out=frames_out, name=name)

        kind = self._kinds[stage]
        if kind == "3d":
            frames_out = conv_frames(frames, 3, stride, 1)
            conv = _conv(c_in, c_out, (3, 3, 3), (stride, stride, stride))
            return dynamic(conv, f"{path}.0", frames_out, f"{path}.1"), frames_out
        if kind == "2d":
            conv = _conv(c_in, c_out, (1, 3, 3), (1, stride, stride))
            return dynamic(conv, f"{path}.0", frames, f"{path}.1"), frames
        frames_out = conv_frames(frames, 3, stride, 1)
        spatial = dynamic(_conv(c_in, mid, (1, 3, 3), (1, stride, stride)), f"{path}.0.0", frames, f"{path}.0.1")
        temporal = dynamic(_conv(mid, c_out, (3, 1, 1), (stride, 1, 1)), f"{path}.0.3", frames_out, f"{path}.1")
        return Conv2Plus1D(spatial, temporal, len(self.buckets)), frames_out

    def _init_weights(self) -> None:
        """torchvision's VideoResNet initialisation (the gate and cheap ops keep their own)."""
        for part in (self.stem, *self.stages(), self.fc):
            for m in part.modules():
                if isinstance(m, nn.Conv3d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm3d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def gated_layers(self) -> list[tuple[str, int, DynamicConv3d, nn.BatchNorm3d]]:
        """``(module path, stage 0..3, dynamic conv, the BatchNorm3d right after it)`` for every dynamic conv."""
        result = []
        for path, stage, bn_path in self._gated:
            conv, bn = self.get_submodule(path), self.get_submodule(bn_path)
            assert isinstance(conv, DynamicConv3d) and isinstance(bn, nn.BatchNorm3d)
            result.append((path, stage, conv, bn))
        return result

    def set_bucket(self, bucket: int | str | Bucket) -> int:
        """Set every dynamic layer to its stage's policy in ``bucket`` and every stage BatchNorm to the bucket's
        statistics; returns the bucket's index."""
        index = self.buckets.index(bucket)
        policies = self.buckets[index].policies
        for _, stage, conv, _ in self.gated_layers():
            conv.policy = policies[stage]
        for bn in self.bucket_batchnorms():
            bn.bucket = index
        return index

    def bucket_batchnorms(self) -> list[BucketBatchNorm3d]:
        """Every BatchNorm of the residual stages: each keeps running statistics per bucket."""
        return [m for stage in self.stages() for m in stage.modules() if isinstance(m, BucketBatchNorm3d)]

    def features(self, x: Tensor) -> Tensor:
        """The stem output, shared by the gate and every bucket."""
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != self.config.frames:
            raise ValueError(f"expected a normalised clip [N, 3, {self.config.frames}, H, W], got {list(x.shape)}")
        return self.stem(x)

    def bucket_logits(self, features: Tensor) -> Tensor:
        return self.gate(features)

    def forward_features(self, features: Tensor, bucket: int | str | Bucket) -> Tensor:
        """Residual stages and classifier at one bucket, for the whole batch."""
        self.set_bucket(bucket)
        x = self.layer4(self.layer3(self.layer2(self.layer1(features))))
        return self.fc(self.avgpool(x).flatten(1))

    @overload
    def forward(self, x: Tensor, bucket: None = None) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(self, x: Tensor, bucket: int | str | Bucket) -> Tensor: ...

    def forward(self, x: Tensor, bucket: int | str | Bucket | None = None) -> Tensor | tuple[Tensor, Tensor]:
        features = self.features(x)
        if bucket is not None:
            return self.forward_features(features, bucket)
        choices = self.bucket_logits(features).argmax(dim=1)
        logits: Tensor | None = None
        for k in torch.unique(choices).tolist():
            rows = (choices == k).nonzero(as_tuple=True)[0]
            part = self.forward_features(features[rows], int(k))
            if logits is None:
                logits = part.new_empty(x.shape[0], part.shape[1])
            logits[rows] = part
        assert logits is not None
        return logits, choices

    def flop_count(self, bucket: int | str | Bucket) -> flops.FlopCount:
        return flops.analytic_flops(self, self.buckets.index(bucket))

    def gflops(self, bucket: int | str | Bucket) -> float:
        """Giga multiply-adds per clip at ``bucket``: stem, stages (with the cheap ops) and classifier."""
        return self.flop_count(bucket).gflops

    def gate_gflops(self) -> float:
        """Giga multiply-adds per clip of the gate MLP (on top of the stem, which every bucket counts)."""
        return self.gate.macs() / 1e9


BucketsArg = BucketTable | Sequence[str | Bucket] | None


def bucket_names(buckets: BucketsArg) -> tuple[str, ...]:
    if buckets is None:
        return ()
    table = buckets if isinstance(buckets, BucketTable) else BucketTable(buckets)
    return table.names


def build_model(config: ModelConfig) -> VaRed2VideoResNet:
    return VaRed2VideoResNet(config)


def _build(
    backbone: str, num_classes: int, frames: int, size: int, width: float, buckets: BucketsArg, gate_hidden: int
) -> VaRed2VideoResNet:
    config = ModelConfig(
        backbone=backbone,
        width=width,
        num_classes=num_classes,
        frames=frames,
        size=size,
        buckets=bucket_names(buckets),
        gate_hidden=gate_hidden,
    )
    return VaRed2VideoResNet(config)


def r3d_18(
    *,
    num_classes: int = 400,
    frames: int = 16,
    size: int = 112,
    width: float = 1.0,
    buckets: BucketsArg = None,
    gate_hidden: int = GATE_HIDDEN,
) -> VaRed2VideoResNet:
    """VA-RED2 R3D-18 (random weights); ``buckets=None`` takes the default table for ``frames``."""
    return _build("r3d_18", num_classes, frames, size, width, buckets, gate_hidden)


def mc3_18(
    *,
    num_classes: int = 400,
    frames: int = 16,
    size: int = 112,
    width: float = 1.0,
    buckets: BucketsArg = None,
    gate_hidden: int = GATE_HIDDEN,
) -> VaRed2VideoResNet:
    """VA-RED2 MC3-18 (random weights); ``buckets=None`` takes the default table for ``frames``."""
    return _build("mc3_18", num_classes, frames, size, width, buckets, gate_hidden)


def r2plus1d_18(
    *,
    num_classes: int = 400,
    frames: int = 16,
    size: int = 112,
    width: float = 1.0,
    buckets: BucketsArg = None,
    gate_hidden: int = GATE_HIDDEN,
) -> VaRed2VideoResNet:
    """VA-RED2 R(2+1)D-18 (random weights); ``buckets=None`` takes the default table for ``frames``."""
    return _build("r2plus1d_18", num_classes, frames, size, width, buckets, gate_hidden)


def copy_weights(source: VaRed2VideoResNet, target: VaRed2VideoResNet) -> list[str]:
    """Copy ``source``'s weights into ``target``, which may have another bucket table; returns the names of
    ``target``'s tensors left as they were (nothing in ``source`` to take them from).

    Why: a static baseline trained with the default table is the usual start of a dynamic model with a table of
    its own (``vared2 train --init-from … --buckets …``), and torchvision's Kinetics-400 weights (``vared2
    convert``) the start of a model for other classes. Everything but the bucket table and the classes must
    match. Weights and the cheap ops of each policy level are shared by name; per-bucket BatchNorm statistics and
    the gate's rows follow the bucket *name* (row order is table order); a bucket ``source`` lacks starts from the
    full bucket's statistics, as after ``from_torchvision``. The classifier's rows follow the class names (all of
    ``target``'s among ``source``'s: Mini-Kinetics-200 from Kinetics-400), else it is left as it was.
    """
    mine, theirs = target.config, source.config
    same = replace(theirs, buckets=mine.buckets, provenance=mine.provenance, labels=(), num_classes=1)
    if same != replace(mine, labels=(), num_classes=1):
        raise InputError(
            f"cannot copy weights: the architectures differ beyond the bucket table and the classes "
            f"({theirs.summary()} → {mine.summary()})"
        )
    classes = _class_rows(theirs, mine)
    state = source.state_dict()
    rows = {name: index for index, name in enumerate(source.buckets.names)}
    # Where each target bucket's row comes from in ``source`` (None: absent there).
    origin = [rows.get(name) for name in target.buckets.names]
    untouched: list[str] = []
    with torch.no_grad():
        for key, value in target.state_dict().items():
            if key.endswith(("bucket_running_mean", "bucket_running_var")):
                full = state[key.replace("bucket_", "")]  # running_mean / running_var: the full bucket's
                for k, j in enumerate(origin[1:], start=1):
                    value[k - 1].copy_(full if j is None else state[key][j - 1])  # j >= 1: not the full bucket
                if None in origin:
                    untouched.append(key)
            elif key in ("fc.weight", "fc.bias"):
                if classes is None:
                    untouched.append(key)
                else:
                    value.copy_(state[key][classes])
            elif key.startswith("gate.fc2."):
                for k, j in enumerate(origin):
                    if j is not None:
                        value[k].copy_(state[key][j])
                if None in origin:
                    untouched.append(key)
            elif key in state and state[key].shape == value.shape:
                value.copy_(state[key])
            else:
                untouched.append(key)
    return untouched


def _class_rows(source: ModelConfig, target: ModelConfig) -> list[int] | None:
    """The row of ``source``'s classifier for each of ``target``'s classes, or None where they do not match."""
    if source.labels and target.labels:
        index = {name: row for row, name in enumerate(source.labels)}
        return [index[name] for name in target.labels] if all(n in index for n in target.labels) else None
    return list(range(target.num_classes)) if source.num_classes == target.num_classes else None
