"""``BucketBatchNorm3d``: BatchNorm with private running statistics per bucket and one shared affine map.

A reduced bucket rebuilds feature maps with cheap ops, so the activations after its layers have other means and
variances than the full network's. Normalising every bucket with the full network's statistics leaves the
channel buckets at chance; letting one set of running statistics average over all buckets blurs them. As in
slimmable networks (private statistics, shared γ and β), each bucket keeps its own — and since the exporter folds
BatchNorm into each bucket's graph separately, the private statistics cost nothing at inference.

``running_mean``/``running_var`` stay the full bucket's (torchvision's names, so its weights load as they are);
the other buckets' live in ``bucket_running_mean``/``bucket_running_var``, row ``k - 1`` for bucket ``k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BucketBatchNorm3d(nn.BatchNorm3d):
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
