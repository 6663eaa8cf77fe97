"""Analytic GFLOPs (multiply-adds) per bucket against torch.utils.flop_counter, and every r2plus1d_18 bucket runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vared2.models import DynamicConv3d, analytic_flops, measured_flops, r2plus1d_18, r3d_18
from vared2.models.flops import conv_macs
from vared2.models.video_resnet import mc3_18


@contextmanager
def phi_t_macs(model: nn.Module) -> Iterator[list[int]]:
    """ϕt's multiply-adds of the forwards run inside, counted independently of ``analytic_flops``: a forward hook
    on every ``DynamicConv3d`` adds ``C_c·T_out·H_out·W_out`` (one multiply-add per rebuilt element of the computed
    channels, docs/models.md "FLOPs") from the layer's actual output whenever its policy has ``R > 1``."""
    seen: list[int] = []

    def hook(conv: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        assert isinstance(conv, DynamicConv3d)
        pt, pc = conv.policy
        if pt > 0:
            n, c_out, t, h, w = out.shape
            assert c_out == conv.out_channels
            seen.append(n * conv.computed_channels_at(pc) * t * h * w)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DynamicConv3d)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def test_every_r2plus1d_bucket_runs_cheaper_and_is_counted_right() -> None:
    """r2plus1d_18 at 8×112×112: output shape kept, fewer GFLOPs than full, analytic = flop_counter within 1 %."""
    torch.manual_seed(0)
    model = r2plus1d_18(frames=8, size=112).eval()
    x = torch.randn(1, 3, 8, 112, 112)
    full = model.gflops(0)
    assert 20.0 < full < 20.6  # torchvision lists 40.52 GFLOPs (MACs) for 16 frames
    for k, bucket in enumerate(model.buckets):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter, phi_t_macs(model) as phi_t:
            out = model(x, bucket=k)
        assert out.shape == (1, 400) and bool(torch.isfinite(out).all())
        count = model.flop_count(k)
        measured = counter.get_total_flops()
        assert measured % 2 == 0 and count.counted_by_torch == measured // 2, bucket.name  # exact, MACs = FLOPs/2
        assert abs(count.total / (measured / 2) - 1) < 0.01, bucket.name  # ϕt is the only difference
        assert count.temporal == sum(phi_t), bucket.name  # exact
        assert (count.temporal > 0) == any(pt > 0 for pt, _ in bucket.policies), bucket.name
        if not bucket.is_full:
            assert model.gflops(k) < full, bucket.name
            assert count.channel > 0 or count.temporal > 0
    # The cheapest default bucket (R=2 in three stages, a quarter of the channels) is about 1/6 of full.
    assert model.gflops("t1c2/t1c2/t1c2/t0c2") / full < 0.2


@pytest.mark.parametrize("builder", [r3d_18, mc3_18])
def test_other_backbones_agree_with_flop_counter(builder: object) -> None:
    model = builder(frames=8, size=32, width=0.5, num_classes=10).eval()  # type: ignore[operator]
    x = torch.zeros(1, 3, 8, 32, 32)
    for k, bucket in enumerate(model.buckets):
        count = analytic_flops(model, k)
        assert count.counted_by_torch * 2 == measured_flops(model, k)
        with torch.no_grad(), phi_t_macs(model) as phi_t:
            model(x, bucket=k)
        assert count.temporal == sum(phi_t), bucket.name
        assert (count.temporal > 0) == any(pt > 0 for pt, _ in bucket.policies), bucket.name


def test_layer_count_by_hand() -> None:
    conv = nn.Conv3d(16, 40, (3, 3, 3), stride=(2, 1, 1), padding=1, bias=False)
    layer = DynamicConv3d(conv, t_levels=(1,), c_levels=(1,), frames_out=8, name="x")
    main, temporal, channel, shape = conv_macs(layer, (16, 16, 10, 10), (1, 1))
    assert shape == (40, 8, 10, 10)
    assert main == 24 * 16 * 27 * 4 * 100  # C_c=24 channels, T_out/R=4 frames
    assert temporal == 24 * 8 * 100  # one multiply-add per rebuilt element of the computed channels
    assert channel == 9 * 16 * 8 * 100  # a 3×3 depthwise per generated channel
    full, t0, c0, _ = conv_macs(layer, (16, 16, 10, 10))
    assert (full, t0, c0) == (40 * 16 * 27 * 8 * 100, 0, 0)
    with pytest.raises(ValueError, match="static convolution"):
        conv_macs(conv, (16, 16, 10, 10), (1, 0))


def test_model_temporal_count_by_hand() -> None:
    """ϕt of a whole r3d_18 (width 0.5: 32/64/128/256 channels) at 8×32×32, R=2 in stages 1-3: four dynamic convs
    per stage, each C_c·T_out·H·W, at T×H = 8×16, 4×8, 2×4 (the stem halves H and W; stages 2-4 halve T, H, W)."""
    model = r3d_18(frames=8, size=32, width=0.5, num_classes=10)
    full = 4 * (32 * 8 * 16 * 16 + 64 * 4 * 8 * 8 + 128 * 2 * 4 * 4)
    assert analytic_flops(model, "t1c0/t1c0/t1c0/t0c0").temporal == full
    # At c1 each stage computes half its channels (all multiples of 8), so ϕt rebuilds half as many elements.
    assert analytic_flops(model, "t1c1/t1c1/t1c1/t0c1").temporal == full // 2
    assert analytic_flops(model, "t0c1/t0c1/t0c1/t0c1").temporal == 0


def test_gate_gflops() -> None:
    model = r2plus1d_18(frames=8, size=32, width=0.25, num_classes=3, gate_hidden=32)
    channels, buckets = model.gate.in_channels, len(model.buckets)
    assert model.gate_gflops() == (2 * channels * 32 + 32 * buckets) / 1e9
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.bucket_logits(torch.randn(1, channels, 8, 16, 16))
    assert counter.get_total_flops() == 2 * model.gate.macs()
