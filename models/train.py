"""The VA-RED2 training recipe: weights and gate trained jointly (DESIGN.md §2, issue 3).

* Warm-up: the first ``warmup_epochs`` train the full bucket, the cheapest bucket and one random other per
  batch, the reduced ones distilled from the full one, so every bucket is useful before the gate routes.
* Then per batch: the gate's logits go through Gumbel-softmax with straight-through: the forward pass
  runs each sample's sampled bucket (samples grouped by bucket, one pass per group) and multiplies its
  logits by the straight-through weight, which is exactly 1 forward and carries the gradient to the gate.
* A FLOPs term pulls the expected cost (softmax probabilities × each bucket's GFLOPs, as a fraction of
  full) toward ``target_ratio``; the temperature anneals geometrically from ``tau_start`` to ``tau_end``.
* ``static=True`` trains the same network on the full bucket only, the baseline.

Checkpoints are ``model.safetensors`` + ``model.json`` (``vared2.models.save``) plus the resumable training
state (``models.train_state``) — no pickle. On a CUDA device, and under ``torchrun`` with DistributedDataParallel
(``models.distributed``; docs/training.md, "Several GPUs or processes").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from vared2.formats.errors import InputError
from vared2.formats.progress import progress, say
from vared2.models.augment import random_translate
from vared2.models.checkpoint import load, save
from vared2.models.distributed import Placement, all_sum, any_rank, setup, teardown
from vared2.models.train_config import PRECISIONS, TrainConfig
from vared2.models.train_state import (
    TRAIN_STATE,
    EpochStats,
    check_world_size,
    load_training_state,
    save_training_state,
)
from vared2.models.video_resnet import VaRed2VideoResNet

__all__ = ["PRECISIONS", "TRAIN_STATE", "EpochStats", "TrainConfig", "train", "training_loss"]

log = logging.getLogger(__name__)


def autocast(config: TrainConfig, device: torch.device | None = None) -> torch.autocast:
    """The context the training forward passes run in: autocast on ``device`` (default the CPU) to bfloat16 for
    ``precision="bf16"``, float16 for ``"fp16"`` (CUDA; its gradients go through a ``GradScaler``) — convolutions
    in the low precision; the cross-entropy, the weights and AdamW in fp32 — else a no-op."""
    device_type = "cpu" if device is None else device.type
    dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=config.precision != "fp32")


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Cosine decay from ``config.lr`` over all steps, scaled by a linear ramp over the first
    ``lr_warmup_epochs``. Without the ramp, AdamW's first full-size steps from random weights can leave a run
    at chance for epochs (docs/training.md, "Learning-rate warm-up")."""
    total_steps = config.epochs * steps_per_epoch
    cosine = config.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    ramp_steps = config.lr_warmup_epochs * steps_per_epoch
    return cosine * min(1.0, (step + 1) / ramp_steps) if ramp_steps else cosine


def temperature(config: TrainConfig, epoch: int) -> float:
    """Geometric annealing over the gated epochs."""
    gated = config.epochs - config.warmup_epochs
    if gated <= 1 or epoch <= config.warmup_epochs:
        return config.tau_start
    progress = (epoch - config.warmup_epochs - 1) / (gated - 1)
    return config.tau_start * (config.tau_end / config.tau_start) ** progress


def bucket_cost_ratios(model: VaRed2VideoResNet) -> Tensor:
    """Each bucket's GFLOPs as a fraction of the full bucket's."""
    full = model.gflops(0)
    return torch.tensor([model.gflops(k) / full for k in range(len(model.buckets))])


def sandwich_buckets(model: VaRed2VideoResNet) -> list[int]:
    """The reduced buckets one warm-up step trains besides the full one: the cheapest, and one other at random
    (drawn from torch's seeded RNG). Training the extremes every step is the sandwich rule of slimmable networks."""
    costs = bucket_cost_ratios(model)
    if len(costs) < 2:
        return []
    cheapest = int(costs[1:].argmin()) + 1
    others = [k for k in range(1, len(costs)) if k != cheapest]
    if not others:
        return [cheapest]
    return [cheapest, others[int(torch.randint(len(others), ()))]]


def routed_forward(model: VaRed2VideoResNet, features: Tensor, weights: Tensor) -> Tensor:
    """Run each sample through the bucket where its (one-hot, straight-through) ``weights`` are 1, scaled by
    that weight, so the gate receives a gradient while only the chosen buckets are computed.

    Under torchrun every rank runs every bucket chosen on *any* rank, in the same order (an empty group where it
    has no sample): the BatchNorms' statistics are synchronised per layer, so the ranks' calls must line up."""
    choices = weights.argmax(dim=1)
    chosen = torch.zeros(weights.shape[1], dtype=torch.bool, device=choices.device)
    chosen[choices] = True
    out: Tensor | None = None
    for k in any_rank(chosen).nonzero().flatten().tolist():
        index = (choices == k).nonzero(as_tuple=True)[0]
        logits = model.forward_features(features[index], int(k)) * weights[index, k : k + 1]
        if out is None:
            out = logits.new_zeros(features.shape[0], logits.shape[1])
        out = out.index_copy(0, index, logits)
    assert out is not None
    return out


def gumbel_choices(logits: Tensor, tau: float, shard: tuple[int, int] = (0, 1)) -> Tensor:
    """Straight-through Gumbel-softmax (hard): one-hot forward, the soft sample's gradient backward.

    ``shard = (rank, world size)``: the noise is drawn for the global batch (the same on every rank, from the
    shared seed) and this rank takes its rows ``rank::world`` — the rows ``DistributedSampler`` gives it — so N
    ranks draw what one process with the whole batch draws. One process: ``F.gumbel_softmax`` as it is."""
    rank, world = shard
    if world == 1:
        return F.gumbel_softmax(logits, tau=tau, hard=True)
    noise = torch.empty((logits.shape[0] * world, logits.shape[1]), device=logits.device, dtype=logits.dtype)
    gumbels = -noise.exponential_().log()[rank::world]
    soft = ((logits + gumbels) / tau).softmax(dim=1)
    hard = torch.zeros_like(soft).scatter_(1, soft.argmax(dim=1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def training_loss(
    model: VaRed2VideoResNet,
    clips: Tensor,
    labels: Tensor,
    *,
    tau: float,
    config: TrainConfig,
    gated: bool,
    teacher_logits: Tensor | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The loss of one batch. Returns (loss, the logits whose accuracy is reported, chosen buckets or None).

    * static: cross-entropy of the full bucket.
    * dynamic warm-up (``gated=False``): the full bucket plus the cheapest and one random other bucket
      ("sandwich"); only the full bucket sees the labels, the reduced ones learn the full bucket's predictions
      (in-place distillation, as in slimmable networks), so the shared weights and every bucket's cheap ops are
      trained before the gate starts to route. Each bucket normalises with its own BatchNorm statistics
      (``BucketBatchNorm3d``). ``config.distill_weight`` scales the reduced buckets' terms: AdamW normalises
      each step by the whole gradient, so when they dominate it the full bucket learns more slowly.
    * gated: each sample's Gumbel-sampled bucket (straight-through), the FLOPs term, and the full bucket
      again, so routing samples away from it does not let the shared weights drift.

    With ``teacher_logits`` (a separately trained model's, e.g. the static baseline's), every bucket that is
    trained also learns the teacher's predictions, and the reduced buckets learn them instead of the full one's.
    ``shard`` is (rank, world size) under torchrun (``gumbel_choices``).
    """
    teacher = None if teacher_logits is None else teacher_logits.detach().softmax(dim=1)

    def distilled(logits: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            return logits.new_zeros(())
        return F.kl_div(logits.log_softmax(dim=1), targets, reduction="batchmean")

    if config.static:
        logits = model(clips, bucket=0)
        return F.cross_entropy(logits, labels) + distilled(logits, teacher), logits, None
    features = model.features(clips)
    full = model.forward_features(features, 0)
    loss = F.cross_entropy(full, labels) + distilled(full, teacher)
    if not gated:
        targets = full.detach().softmax(dim=1) if teacher is None else teacher
        for k in sandwich_buckets(model):
            loss = loss + config.distill_weight * distilled(model.forward_features(features, k), targets)
        return loss, full, None
    gate_logits = model.bucket_logits(features)
    weights = gumbel_choices(gate_logits, tau, shard)
    logits = routed_forward(model, features, weights)
    costs = bucket_cost_ratios(model).to(gate_logits.device)
    expected = (gate_logits.softmax(dim=1) * costs).sum(dim=1).mean()
    loss = loss + F.cross_entropy(logits, labels) + distilled(logits, teacher)
    loss = loss + config.flops_weight * (expected - config.target_ratio) ** 2
    return loss, logits, weights.argmax(dim=1)


@torch.no_grad()
def evaluate_accuracy(
    model: VaRed2VideoResNet, loader: DataLoader, *, static: bool, placement: Placement | None = None
) -> tuple[float, float, list[int]]:
    """Accuracy, mean GFLOPs fraction and bucket histogram, with the gate's argmax (or the full bucket); under
    torchrun each rank runs its share of ``loader``'s clips and the counts are summed over the ranks."""
    placement = placement or Placement(torch.device("cpu"))
    model.eval()
    costs = bucket_cost_ratios(model)
    correct = total = 0
    cost = 0.0
    histogram = [0] * len(model.buckets)
    for clips, labels, *_ in loader:
        clips, labels = clips.to(placement.device, non_blocking=True), labels.to(placement.device)
        if static:
            logits, choices = model(clips, bucket=0), torch.zeros(len(labels), dtype=torch.long)
        else:
            logits, choices = model(clips)
        choices = choices.cpu()
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
        cost += float(costs[choices].sum())
        for k in choices.tolist():
            histogram[k] += 1
    correct_, total_, cost_, *counts = all_sum(placement, [correct, total, cost, *histogram])
    return correct_ / max(total_, 1), cost_ / max(total_, 1), [round(c) for c in counts]


class TrainingStep(nn.Module):
    """One batch's ``training_loss`` as a module's forward, so DistributedDataParallel (which hooks a module's
    forward) sees every step; the recipe calls the model's parts, not its forward."""

    def __init__(self, model: VaRed2VideoResNet, config: TrainConfig, shard: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.config, self.shard = model, config, shard

    def forward(
        self, clips: Tensor, labels: Tensor, tau: float, gated: bool, teacher_logits: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        return training_loss(
            self.model,
            clips,
            labels,
            tau=tau,
            config=self.config,
            gated=gated,
            teacher_logits=teacher_logits,
            shard=self.shard,
        )


def _seed_worker(worker_id: int) -> None:
    """numpy's RNG in a DataLoader worker from the worker's torch seed (base seed + worker id)."""
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(
    dataset: Dataset, config: TrainConfig, placement: Placement, sampler: DistributedSampler | None = None
) -> DataLoader:
    """``--workers`` processes decoding clips (seeded per worker, kept across epochs, two batches prefetched
    each), pinned memory on CUDA; ``sampler`` shards and shuffles the training set."""
    workers = config.workers
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=placement.device.type == "cuda",
    )


def train(
    model: VaRed2VideoResNet,
    train_set: Dataset,
    val_set: Dataset,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    provenance: dict[str, object] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    teacher: VaRed2VideoResNet | None = None,
    placement: Placement | None = None,
) -> list[EpochStats]:
    """Train ``model`` and keep the latest checkpoint (and its training state) in ``out_dir``; with a
    ``teacher``, distil its full-bucket predictions into every bucket trained (see ``training_loss``).

    ``placement`` (``models.distributed.setup``; default: ``config.device``, joining torchrun's group if launched
    by it): the model moves to its device; with several ranks each trains on its shard of every epoch under
    DistributedDataParallel (per-rank batch ``config.batch_size``) and only rank 0 writes."""
    config.validate()
    placement = placement or setup(config.device)
    if config.precision == "fp16" and placement.device.type != "cuda":
        raise ValueError(f"train: precision fp16 needs a CUDA device, this run is on {placement.device}")
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    # Denormal floats make CPU convolutions and BatchNorm many times slower for no accuracy benefit.
    torch.set_flush_denormal(True)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    shard = (placement.rank, placement.world_size)
    # Each epoch's order depends on (seed, epoch) only: permutation by seed * 1000 + epoch, rank r takes r::N.
    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, placement.world_size, placement.rank, shuffle=True, seed=config.seed * 1000
    )
    train_loader = make_loader(train_set, config, placement, sampler)
    val_share = Subset(val_set, range(placement.rank, len(val_set), placement.world_size))  # type: ignore[arg-type]
    val_loader = make_loader(val_share, config, placement)
    model.to(placement.device)
    if teacher is not None:
        teacher.to(placement.device).eval()  # its BatchNorm statistics stay as trained; only ``model`` switches
    step_module: nn.Module = TrainingStep(model, config, shard)
    if placement.distributed:
        # Unused parameters every step (the gate in static steps, the buckets not run): DDP must look for them.
        device_ids = [placement.device.index] if placement.device.type == "cuda" else None
        step_module = DistributedDataParallel(
            step_module, device_ids=device_ids, find_unused_parameters=True, forward_sync_buffers=False
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
    steps_per_epoch = max(len(train_loader), 1)
    start, history = 0, list[EpochStats]()
    if resume:
        previous = load(out_dir)
        check_world_size(out_dir, placement.world_size)
        if replace(previous.config, provenance={}) != replace(model.config, provenance={}):
            raise InputError(
                f"--resume {out_dir}: the run saved there is another model ({previous.config.summary()}) than this "
                f"one ({model.config.summary()}); resume with its options"
            )
        model.load_state_dict(previous.state_dict())
        model.config.provenance = previous.config.provenance  # how the run so far was made
        start, history, scaler_state = load_training_state(out_dir, optimizer)
        if scaler_state and scaler.is_enabled():
            scaler.load_state_dict(scaler_state)
        log.info("resuming %s after epoch %d", out_dir, start)
    if placement.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    for epoch in range(start + 1, config.epochs + 1):
        gated = not config.static and epoch > config.warmup_epochs
        tau = temperature(config, epoch)
        sampler.set_epoch(epoch)
        moves = torch.Generator().manual_seed(10**6 + config.seed * 1000 + epoch)  # and so do its translations
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        title = f"epoch {epoch}/{config.epochs}"
        bar = progress(train_loader, desc=title, unit="batch", leave=False, disable=not placement.is_main)
        for step, (clips, labels, *_) in enumerate(bar, start=(epoch - 1) * steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, steps_per_epoch)
            clips = random_translate(clips, config.translate, moves, shard=shard)
            clips, labels = clips.to(placement.device, non_blocking=True), labels.to(placement.device)
            teacher_logits = None
            with autocast(config, placement.device):
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(clips, bucket=0)
                loss, logits, _ = step_module(clips, labels, tau, gated, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.2f}")
        total_loss, correct_, seen_ = all_sum(placement, [total_loss, correct, seen])
        val_acc, val_ratio, histogram = evaluate_accuracy(model, val_loader, static=not gated, placement=placement)
        stats = EpochStats(
            epoch, total_loss / max(seen_, 1), correct_ / max(seen_, 1), val_acc, val_ratio, tau, histogram
        )
        history.append(stats)
        model.config.provenance = {
            **(provenance or {}),
            "train_config": asdict(config),
            "distributed": placement.describe(),
            "epochs_done": epoch,
            "history": [asdict(h) for h in history],
        }
        if placement.is_main:
            save(model, out_dir)
            state = scaler.state_dict() if scaler.is_enabled() else None
            save_training_state(
                out_dir, optimizer, epoch, history, config, world_size=placement.world_size, scaler=state
            )
            say(
                f"epoch {epoch}/{config.epochs}: loss {stats.loss:.3f}  train acc {stats.train_accuracy:.3f}  "
                f"val acc {val_acc:.3f}  val GFLOPs {val_ratio:.2f} of full"
                + ("" if config.static else f"  tau {tau:.2f}")  # the gate's temperature; a static run has no gate
                + f"  buckets {histogram}"
            )
        if on_epoch:
            on_epoch(stats)
    teardown(placement)
    return history


def describe(stats: Sequence[EpochStats]) -> str:
    """A one-line-per-epoch summary for the terminal."""
    rows = ["epoch   loss  train_acc  val_acc  val_gflops  tau"]
    for s in stats:
        rows.append(
            f"{s.epoch:>5} {s.loss:>6.3f} {s.train_accuracy:>10.3f} {s.val_accuracy:>8.3f} "
            f"{s.val_gflops_ratio:>10.2f} {s.tau:>5.2f}"
        )
    return "\n".join(rows)
