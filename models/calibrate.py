"""Fitting the gate of a trained network to its buckets (``vared2 train --fit-gate``, ``vared2 fit-gate``).

Gumbel-softmax training matches the gate's *expected* cost to the target, but inference takes the argmax,
which can sit on one bucket for every clip. Fitting the gate afterwards fixes the decision rule itself: for
each training clip, the loss of every bucket; with a price ``μ`` per unit of cost, the clip's best bucket
is ``argmin_k loss_k + μ·cost_k``; ``μ`` is bisected so these choices meet the target mean cost, and the
gate (its MLP, on cached descriptors of the stem features: seconds) is trained to predict them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vared2.formats.progress import progress
from vared2.models.video_resnet import VaRed2VideoResNet


def stack_dataset(
    dataset: Dataset, limit: int | None = None, batch_size: int = 64, desc: str | None = None
) -> tuple[Tensor, Tensor]:
    """All (or the first ``limit``) clips and labels of a dataset as two tensors; ``desc`` shows progress."""
    clips, labels = [], []
    seen = 0
    for x, y, *_ in progress(DataLoader(dataset, batch_size=batch_size), desc=desc or "", disable=desc is None):
        clips.append(x)
        labels.append(y)
        seen += len(y)
        if limit is not None and seen >= limit:
            break
    x, y = torch.cat(clips), torch.cat(labels)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


@torch.no_grad()
def calibrate_batchnorm(model: VaRed2VideoResNet, clips: Tensor, batch_size: int = 64) -> None:
    """Recompute every bucket's stage BatchNorm statistics as exact averages over ``clips``.

    Training tracks them with a momentum, so a bucket that last ran some steps ago holds statistics of older
    weights; after training they are recomputed once with the final weights, as slimmable networks do. The
    stem (shared by every bucket) stays in eval mode and keeps its statistics.
    """
    was_training = model.training
    device = next(model.parameters()).device
    batchnorms = model.bucket_batchnorms()
    saved = [bn.momentum for bn in batchnorms]
    model.train()
    model.stem.eval()
    try:
        for k in range(len(model.buckets)):
            model.set_bucket(k)
            for bn in batchnorms:
                mean, var = bn.running_statistics()
                mean.zero_()
                var.fill_(1.0)
        for i, start in enumerate(range(0, len(clips), batch_size)):
            for bn in batchnorms:
                bn.momentum = 1.0 / (i + 1)  # a cumulative average over the batches
            features = model.features(clips[start : start + batch_size].to(device))  # once per batch, for every bucket
            for k in range(len(model.buckets)):
                model.forward_features(features, k)
    finally:
        for bn, momentum in zip(batchnorms, saved, strict=True):
            bn.momentum = momentum
        model.train(was_training)


@dataclass
class GateFit:
    price: float
    oracle_ratio: float
    gate_ratio: float
    gate_agreement: float
    #: Share of the clips the fitted gate sends to the full bucket. DESIGN.md §2: the full bucket must stay
    #: reachable; at 0 only forcing it (``bucket="full"``) runs it, and the command line says so.
    full_share: float = 0.0


@torch.no_grad()
def bucket_losses(model: VaRed2VideoResNet, clips: Tensor, labels: Tensor, batch_size: int = 32) -> Tensor:
    """``[N, B]`` cross-entropy of every clip under every bucket (eval mode, on the model's device; on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    starts = range(0, len(clips), batch_size)
    for start in progress(starts, desc=f"every bucket on {len(clips)} clips", unit="batch"):
        x, y = clips[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        features = model.features(x)
        per_bucket = [model.forward_features(features, k) for k in range(len(model.buckets))]
        rows.append(torch.stack([F.cross_entropy(out, y, reduction="none") for out in per_bucket], dim=1).cpu())
    return torch.cat(rows)


def oracle_choices(losses: Tensor, costs: Tensor, target_ratio: float) -> tuple[Tensor, float]:
    """The per-clip best bucket ``argmin loss + μ·cost``, with ``μ`` bisected so the mean cost meets the
    target (or as close as the buckets allow)."""
    low, high = 0.0, 100.0
    for _ in range(60):
        price = (low + high) / 2
        ratio = float(costs[(losses + price * costs).argmin(dim=1)].mean())
        low, high = (price, high) if ratio > target_ratio else (low, price)
    return (losses + high * costs).argmin(dim=1), high


def fit_gate(
    model: VaRed2VideoResNet,
    clips: Tensor,
    labels: Tensor,
    target_ratio: float,
    *,
    steps: int = 400,
    lr: float = 1e-2,
    seed: int = 0,
    costs: Sequence[float] | None = None,
) -> GateFit:
    """Train the gate to predict, from the stem features, each clip's best bucket at the target cost.

    A bucket's cost is its GFLOPs as a fraction of the full bucket's, or ``costs`` (one fraction per bucket, the
    full bucket's 1: a device's measured latency, ``vared2.formats.latency``)."""
    if costs is None:
        costs = [model.gflops(k) / model.gflops(0) for k in range(len(model.buckets))]
    if len(costs) != len(model.buckets):
        raise ValueError(f"fit_gate: {len(costs)} costs for {len(model.buckets)} buckets")
    cost = torch.tensor(list(costs), dtype=torch.float32)
    losses = bucket_losses(model, clips, labels)
    choices, price = oracle_choices(losses, cost, target_ratio)
    device = next(model.parameters()).device
    with torch.no_grad():
        descriptors = torch.cat(
            [model.gate.descriptor(model.features(clips[i : i + 32].to(device))) for i in range(0, len(clips), 32)]
        )
    targets = choices.to(device)
    gate = model.gate
    torch.manual_seed(seed)
    torch.nn.init.kaiming_uniform_(gate.fc1.weight, a=5**0.5)
    optimizer = torch.optim.Adam(gate.parameters(), lr=lr)
    mean, std = descriptors.mean(0), descriptors.std(0) + 1e-6
    # Standardise the descriptor into fc1 so the fit is well conditioned; the result is an ordinary Linear.
    normalised = (descriptors - mean) / std
    gate.train()
    for _ in range(steps):
        logits = gate.fc2(gate.relu(gate.fc1(normalised)))
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        gate.fc1.bias.sub_(gate.fc1.weight @ (mean / std))
        gate.fc1.weight.div_(std)
    gate.eval()
    with torch.no_grad():
        picked = gate.fc2(gate.relu(gate.fc1(descriptors))).argmax(dim=1).cpu()
    return GateFit(
        price=price,
        oracle_ratio=float(cost[choices].mean()),
        gate_ratio=float(cost[picked].mean()),
        gate_agreement=float((picked == choices).float().mean()),
        full_share=float((picked == 0).float().mean()),
    )
