"""VaRed2VideoResNet: torchvision parity at the full bucket, structure, the gate, per-sample routing, config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
import torchvision.models.video as tv
from torch import nn

from vared2.models import (
    DynamicConv3d,
    ModelConfig,
    SoftModulationGate,
    build_model,
    from_torchvision,
    r2plus1d_18,
    r3d_18,
)
from vared2.models.video_resnet import copy_weights, mc3_18


@pytest.mark.parametrize(
    ("builder", "backbone"), [(tv.r3d_18, "r3d_18"), (tv.mc3_18, "mc3_18"), (tv.r2plus1d_18, "r2plus1d_18")]
)
def test_full_bucket_equals_torchvision(builder: Callable[..., nn.Module], backbone: str) -> None:
    torch.manual_seed(0)
    reference = builder(num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mis-wired BN would show
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm3d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        fc = reference.get_submodule("fc")
        assert isinstance(fc, nn.Linear)
        fc.weight.normal_(0, 0.1)
    model = from_torchvision(reference, frames=8, size=56)
    assert not model.training and model.config.backbone == backbone and model.config.num_classes == 10
    ours, theirs = set(model.state_dict()), set(reference.state_dict())
    assert theirs <= ours
    extra = {k for k in ours - theirs if not k.startswith("gate.")}
    cheap_ops = ("temporal_scale", "temporal_shift", "channel_weight", "channel_bias")
    bucket_statistics = ("bucket_running_mean", "bucket_running_var")
    assert extra and all(k.split(".")[-2] in cheap_ops or k.split(".")[-1] in bucket_statistics for k in extra)
    for bn in model.bucket_batchnorms():  # every bucket starts from the imported statistics
        assert bn.running_mean is not None
        assert torch.equal(bn.bucket_running_mean, bn.running_mean.expand_as(bn.bucket_running_mean))
    x = torch.randn(1, 3, 8, 56, 56)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x, bucket=0), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x, bucket="t0c0/t0c0/t0c0/t0c0"), expected, rtol=0, atol=1e-5)


def test_from_torchvision_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="VideoResNet"):
        from_torchvision(nn.Linear(2, 2))
    bottleneck = tv.resnet.VideoResNet(
        tv.resnet.Bottleneck, [tv.resnet.Conv3DSimple] * 4, [1, 1, 1, 1], tv.resnet.BasicStem
    )
    with pytest.raises(ValueError, match="18-layer BasicBlock"):
        from_torchvision(bottleneck)


@pytest.mark.parametrize("builder", [r3d_18, mc3_18, r2plus1d_18])
def test_gated_layers(builder: Callable[..., nn.Module]) -> None:
    model = builder(frames=8, size=32, width=0.25, num_classes=3)
    layers = model.gated_layers()  # type: ignore[operator]
    per_block = 4 if builder is r2plus1d_18 else 2
    assert len(layers) == 4 * 2 * per_block
    assert [stage for _, stage, _, _ in layers] == sorted(stage for _, stage, _, _ in layers)
    modules = dict(model.named_modules())
    for path, stage, conv, bn in layers:
        assert modules[path] is conv and isinstance(conv, DynamicConv3d) and conv.name == path
        assert path.startswith(f"layer{stage + 1}.") and bn.num_features == conv.out_channels
    # The BatchNorm that follows each conv is the one its output actually flows into.
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, DynamicConv3d | nn.BatchNorm3d)]  # fmt: skip
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 8, 32, 32), bucket=0)
    for hook in hooks:
        hook.remove()
    for _, _, conv, bn in layers:
        assert order[order.index(conv) + 1] is bn


def test_width_multiplier_and_non_power_of_two_channels() -> None:
    model = r2plus1d_18(frames=8, size=32, width=0.5, num_classes=7).eval()
    assert model.stem[0].out_channels == 24 and model.stem[3].out_channels == 32  # 45*0.5 → 24, 64*0.5 → 32
    assert model.layer4[0].conv2[1].num_features == 256 and model.fc.in_features == 256
    full_width = r2plus1d_18(frames=8, size=32, num_classes=3)
    mids = sorted({conv.out_channels for _, _, conv, _ in full_width.gated_layers()} - {64, 128, 256, 512})
    assert mids == [144, 230, 288, 460, 576, 921, 1152]  # torchvision's (2+1)D hidden widths
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        for k in range(len(model.buckets)):
            assert model(x, bucket=k).shape == (2, 7)


def test_fresh_gate_picks_the_full_bucket() -> None:
    model = r3d_18(frames=8, size=32, width=0.25, num_classes=4).eval()
    with torch.no_grad():
        logits, choices = model(torch.randn(3, 3, 8, 32, 32))
    assert logits.shape == (3, 4) and choices.tolist() == [0, 0, 0]


def test_gate_descriptor_is_appearance_and_motion() -> None:
    gate = SoftModulationGate(4, 3, hidden=8)
    frame = torch.randn(2, 4, 1, 5, 5)
    still = frame.expand(2, 4, 6, 5, 5)
    descriptor = gate.descriptor(still)
    torch.testing.assert_close(descriptor[:, :4], frame.mean(dim=(2, 3, 4)))
    assert torch.equal(descriptor[:, 4:], torch.zeros(2, 4))  # no motion in a still clip
    ramp = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(2, 4, 6, 5, 5) * 0.5
    torch.testing.assert_close(gate.descriptor(ramp)[:, 4:], torch.full((2, 4), 0.5))
    # A spot moving across a still background: the spatial mean never changes, the local differences do.
    moving = torch.zeros(1, 4, 3, 5, 5)
    for t in range(3):
        moving[:, :, t, 2, t + 1] = 1.0
    assert bool((gate.descriptor(moving)[:, 4:] > 0).all())
    assert gate(still).shape == (2, 3) and gate.macs() == 8 * 8 + 8 * 3
    with pytest.raises(ValueError, match=r"\[N, 4, T, H, W\]"):
        gate(torch.randn(2, 5, 6, 5, 5))


def test_per_sample_routing_equals_each_bucket_alone() -> None:
    torch.manual_seed(3)
    model = r2plus1d_18(frames=8, size=32, width=0.25, num_classes=5).eval()
    with torch.no_grad():
        for p in model.gate.parameters():
            p.normal_(0, 3.0)
        for _, _, conv, _ in model.gated_layers():
            for group in (conv.temporal_scale, conv.temporal_shift, conv.channel_weight, conv.channel_bias):
                for p in group.values():
                    p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(8, 3, 8, 32, 32) * torch.linspace(0.2, 3.0, 8).view(8, 1, 1, 1, 1)
        logits, choices = model(x)
        assert len(set(choices.tolist())) >= 2, "the test needs samples routed to different buckets"
        assert torch.equal(choices, model.bucket_logits(model.features(x)).argmax(1))
        for i, k in enumerate(choices.tolist()):
            alone = model(x[i : i + 1], bucket=k)
            torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_forward_checks_its_input() -> None:
    model = r3d_18(frames=8, size=32, width=0.25, num_classes=4).eval()
    with pytest.raises(ValueError, match=r"\[N, 3, 8, H, W\].*\[1, 3, 4, 32, 32\]"):
        model(torch.randn(1, 3, 4, 32, 32), bucket=0)
    with pytest.raises(KeyError, match="unknown bucket"):
        model(torch.randn(1, 3, 8, 32, 32), bucket="t9c9/t0c0/t0c0/t0c0")


def test_config_json_round_trip_and_validation() -> None:
    config = ModelConfig(backbone="mc3_18", width=0.5, num_classes=2, frames=8, size=64, labels=("a", "b"))
    assert config.buckets[0] == "t0c0/t0c0/t0c0/t0c0" and len(config.buckets) == 6
    again = ModelConfig.from_json(config.to_json())
    assert again == config and build_model(again).config == config
    config.provenance = {"epochs": 3}  # the one field that may change after construction
    assert ModelConfig.from_json(config.to_json()).provenance == {"epochs": 3}
    with pytest.raises(AttributeError, match="frames is read-only"):
        config.frames = 16
    assert dataclasses.replace(config, frames=16).buckets[3] == "t1c0/t1c0/t1c0/t1c0"
    bad = {
        "backbone": ("resnet", "unknown 'resnet'"),
        "labels": (["a"], "1 labels for 2 classes"),
        "buckets": (["t0c1/t0c1/t0c1/t0c1"], "bucket 0 must be the full"),
        "frames": ("8", "ModelConfig.frames: must be an int"),
        "std": ([1.0, 0.0, 1.0], "must be positive"),
        "width": (-1, "must be > 0"),
    }
    for field, (value, message) in bad.items():
        data = config.to_json() | {field: value}
        with pytest.raises(ValueError, match=message):
            ModelConfig.from_json(data)
    for field, value in (("frames", 1025), ("size", 20_000), ("num_classes", 10**9)):  # typos, named up front
        with pytest.raises(ValueError, match=rf"ModelConfig\.{field}: must be <= \d+, got {value}"):
            ModelConfig.from_json(config.to_json() | {field: value, "labels": []})
    with pytest.raises(ValueError, match="unknown model config field"):
        ModelConfig.from_json(config.to_json() | {"depth": 50})
    with pytest.raises(ValueError, match=r"missing model config field.*frames"):
        ModelConfig.from_json({k: v for k, v in config.to_json().items() if k != "frames"})


def test_copy_weights_follows_bucket_names_into_another_table() -> None:
    """Shared weights by name, per-bucket statistics and gate rows by bucket name: every bucket both tables have
    computes the same logits; a bucket only the target has starts from the full bucket's statistics."""
    torch.manual_seed(0)
    source = r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5).eval()
    with torch.no_grad():  # make every tensor distinct, so a row copied from the wrong place shows
        for key, value in source.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5 if "running_var" in key else torch.randn_like(value) * 0.1)
    names = source.buckets.names
    new = "t1c0/t0c0/t0c0/t0c0"
    target = r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5, buckets=[names[0], names[5], names[3], new])
    untouched = copy_weights(source, target.eval())
    assert untouched and all(
        k.endswith(("bucket_running_mean", "bucket_running_var")) or k.startswith("gate.fc2") for k in untouched
    )
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        for name in target.buckets.names[:3]:
            torch.testing.assert_close(target(x, bucket=name), source(x, bucket=name), rtol=0, atol=0)
        torch.testing.assert_close(
            target.bucket_logits(target.features(x))[:, :3], source.bucket_logits(source.features(x))[:, [0, 5, 3]]
        )
    for bn in target.bucket_batchnorms():
        torch.testing.assert_close(bn.bucket_running_mean[2], bn.running_mean)
    wider = r2plus1d_18(width=0.25, frames=4, size=32, num_classes=5)
    with pytest.raises(ValueError, match="differ beyond the bucket table"):
        copy_weights(wider, target)
