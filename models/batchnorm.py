"""``BucketBatchNorm3d``: BatchNorm with private running statistics per bucket and one shared affine map.

A reduced bucket rebuilds feature maps with cheap ops, so the activations after its layers have other means and
variances than the full network's. Normalising every bucket with the full network's statistics leaves the
channel buckets at chance; letting one set of running statistics average over all buckets blurs them. As in
slimmable networks (private statistics, shared γ and β), each bucket keeps its own — and since the exporter folds
BatchNorm into each bucket's graph separately, the private statistics cost nothing at inference.

``running_mean``/``running_var`` stay the full bucket's (torchvision's names, so its weights load as they are);
the other buckets' live in ``bucket_running_mean``/``bucket_running_var``, row ``k - 1`` for bucket ``k``.
Under ``torchrun`` (several processes) a training-mode ``SyncedBatchNorm3d`` normalises with the statistics of the
batch over every rank, so N ranks with batch B/N compute what one process with batch B does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that autograd sees through: the gradient is summed over the ranks too."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def synced_batch_norm(bn: nn.BatchNorm3d, x: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """Training-mode batch norm of ``x`` with the mean and variance of the batch over every rank (an empty ``x``
    adds nothing), updating ``running_mean``/``running_var`` as ``F.batch_norm`` does. Every rank must call it
    for the same layers in the same order. Written out because torch's SyncBatchNorm runs on GPUs only."""
    channels = x.shape[1]
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 under autocast
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    count = xf.new_full((1,), x.numel() // max(channels, 1))
    total = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))
    n = total[channels]
    mean = total[:channels] / n
    # Two passes, as F.batch_norm: E[x²] − E[x]² in fp32 cancels to noise for a channel with a large mean and a
    # small variance, and 1/sqrt(var + eps) turns that noise into wrong gradients.
    centred = xf - mean.view(shape)
    var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
    momentum = bn.momentum
    if bn.num_batches_tracked is not None and running_mean is bn.running_mean:
        bn.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    with torch.no_grad():
        unbiased = var * (n / (n - 1).clamp_min(1.0))
        running_mean.lerp_(mean.to(running_mean.dtype), momentum or 0.0)
        running_var.lerp_(unbiased.to(running_var.dtype), momentum or 0.0)
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.weight is not None:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


class SyncedBatchNorm3d(nn.BatchNorm3d):
    """``nn.BatchNorm3d`` (same state), with batch statistics over every rank when training under torchrun."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and _distributed():
            assert self.running_mean is not None and self.running_var is not None
            return synced_batch_norm(self, x, self.running_mean, self.running_var)
        return super().forward(x)


class BucketBatchNorm3d(SyncedBatchNorm3d):
    """A ``BatchNorm3d`` whose running statistics are those of the bucket set in ``bucket`` (0 = full)."""

    bucket_running_mean: Tensor
    bucket_running_var: Tensor

    def __init__(self, num_features: int, num_buckets: int) -> None:
        super().__init__(num_features)
        if num_buckets < 1:
            raise ValueError(f"BucketBatchNorm3d needs at least one bucket, got {num_buckets}")
        self.num_buckets = num_buckets
        self.bucket = 0
        self.register_buffer("bucket_running_mean", torch.zeros(num_buckets - 1, num_features))
        self.register_buffer("bucket_running_var", torch.ones(num_buckets - 1, num_features))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_buckets={self.num_buckets}"

    def running_statistics(self) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` of the current bucket; views, so updating them updates the buffers."""
        if not 0 <= self.bucket < self.num_buckets:
            raise ValueError(f"BucketBatchNorm3d: bucket {self.bucket} out of range 0..{self.num_buckets - 1}")
        if self.bucket == 0:
            assert self.running_mean is not None and self.running_var is not None
            return self.running_mean, self.running_var
        return self.bucket_running_mean[self.bucket - 1], self.bucket_running_var[self.bucket - 1]

    def copy_full_statistics(self) -> None:
        """Start every bucket from the full network's statistics (e.g. after loading torchvision weights)."""
        assert self.running_mean is not None and self.running_var is not None
        with torch.no_grad():
            self.bucket_running_mean.copy_(self.running_mean.expand_as(self.bucket_running_mean))
            self.bucket_running_var.copy_(self.running_var.expand_as(self.bucket_running_var))

    def forward(self, x: Tensor) -> Tensor:
        if self.bucket == 0:
            return super().forward(x)
        self._check_input_dim(x)
        mean, var = self.running_statistics()
        if self.training and _distributed():
            return synced_batch_norm(self, x, mean, var)
        if self.training and self.momentum is None:
            raise ValueError(
                "BucketBatchNorm3d: momentum=None (a cumulative average) is only kept for the full bucket; "
                "set a momentum (calibrate_batchnorm sets one per batch)"
            )
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, self.momentum or 0.0, self.eps)


def batchnorm_statistics(bn: nn.BatchNorm3d) -> tuple[Tensor, Tensor]:
    """The running ``(mean, var)`` an eval-mode ``bn`` normalises with (its current bucket's, if it has buckets)."""
    if isinstance(bn, BucketBatchNorm3d):
        return bn.running_statistics()
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm {bn} tracks no running statistics")
    return bn.running_mean, bn.running_var
