"""Per-bucket BatchNorm statistics (models/batchnorm.py) and their calibration after training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vared2.models import BucketBatchNorm3d, r2plus1d_18
from vared2.models.calibrate import calibrate_batchnorm


def test_the_full_bucket_is_a_plain_batchnorm() -> None:
    torch.manual_seed(0)
    ours, plain = BucketBatchNorm3d(6, num_buckets=3), nn.BatchNorm3d(6)
    x = torch.randn(4, 6, 2, 5, 5) * 3 + 1
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.running_mean, plain.running_mean, rtol=0, atol=0)
    ours.eval(), plain.eval()
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)


def test_each_bucket_tracks_and_uses_its_own_statistics() -> None:
    torch.manual_seed(0)
    bn = BucketBatchNorm3d(4, num_buckets=3)
    full_before = bn.running_mean.clone()  # type: ignore[union-attr]
    bn.bucket = 2
    x = torch.randn(8, 4, 2, 3, 3) + 5.0
    bn(x)  # train mode: batch statistics, and only bucket 2's running statistics move
    assert torch.equal(bn.running_mean, full_before)  # type: ignore[arg-type]
    assert torch.equal(bn.bucket_running_mean[0], torch.zeros(4))
    assert bool((bn.bucket_running_mean[1] > 0.4).all())
    bn.eval()
    mean, var = bn.running_statistics()
    expected = (x - mean.view(1, -1, 1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1, 1) + bn.eps)
    torch.testing.assert_close(bn(x), expected * bn.weight.view(1, -1, 1, 1, 1) + bn.bias.view(1, -1, 1, 1, 1))
    bn.bucket = 3
    with pytest.raises(ValueError, match=r"bucket 3 out of range 0\.\.2"):
        bn(x)


def test_set_bucket_switches_every_stage_batchnorm_but_not_the_stem() -> None:
    model = r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5)
    assert not any(isinstance(m, BucketBatchNorm3d) for m in model.stem.modules())
    stage_bns = model.bucket_batchnorms()
    # 8 blocks × (the hidden BN of each of their 2 Conv2Plus1D + their own 2), and 3 shortcut projections
    assert len(stage_bns) == 8 * (2 + 2) + 3
    model.set_bucket("t1c1/t1c1/t0c1/t0c1")
    assert {bn.bucket for bn in stage_bns} == {model.buckets.index("t1c1/t1c1/t0c1/t0c1")}


def test_calibration_recomputes_every_buckets_statistics_from_the_clips_alone() -> None:
    torch.manual_seed(0)
    model = r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5).eval()
    clips = torch.randn(6, 3, 4, 32, 32)
    stem = {n: b.clone() for n, b in model.stem.named_buffers()}
    calibrate_batchnorm(model, clips, batch_size=4)
    first = {n: b.clone() for n, b in model.named_buffers()}
    # different starting statistics give the same result: an exact average over the clips, not a momentum
    for bn in model.bucket_batchnorms():
        bn.bucket_running_mean.add_(1.0)
        bn.running_mean.add_(1.0)  # type: ignore[union-attr]
    calibrate_batchnorm(model, clips, batch_size=4)
    for name, buffer in model.named_buffers():
        if "running_" in name:
            torch.testing.assert_close(buffer, first[name], msg=name)
    assert all(torch.equal(b, stem[n]) for n, b in model.stem.named_buffers())
    assert not model.training
    bn = model.bucket_batchnorms()[0]
    assert not torch.allclose(bn.bucket_running_mean[0], bn.running_mean)  # type: ignore[arg-type]
    assert not torch.allclose(bn.bucket_running_var[0], torch.ones_like(bn.bucket_running_var[0]))
