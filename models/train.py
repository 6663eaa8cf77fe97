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
state ``train_state.safetensors`` + ``train_state.json`` (optimizer moments, epoch, RNG states) — no pickle.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vared2.formats.errors import InputError, InputNotFoundError
from vared2.formats.progress import progress, say
from vared2.models.augment import random_translate
from vared2.models.checkpoint import load, save
from vared2.models.video_resnet import VaRed2VideoResNet

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state"
#: Training precisions: fp32, or bfloat16 autocast — faster on CPUs with native bf16 (docs/training.md).
PRECISIONS = ("fp32", "bf16")


def default_warmup(epochs: int) -> int:
    """Full-bucket epochs before the gate when none are given: a quarter of the run (3 of 12), so a short run
    (``--epochs 1``) is not refused for a default it did not choose."""
    return max(0, epochs) // 4


@dataclass
class TrainConfig:
    """Every knob of the recipe; recorded in the checkpoint's provenance."""

    epochs: int = 12
    warmup_epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    target_ratio: float = 0.55
    flops_weight: float = 2.0
    tau_start: float = 5.0
    tau_end: float = 0.5
    seed: int = 0
    static: bool = False
    threads: int | None = None
    translate: int = 0  # random translation of each training clip by up to this many pixels (models.augment)
    precision: str = "fp32"  # "bf16": the forward passes under CPU autocast to bfloat16 (weights stay fp32)
    distill_weight: float = 1.0  # weight of each reduced bucket's distillation term in the sandwich
    lr_warmup_epochs: int = 0  # the learning rate rises linearly from ~0 over this many epochs (see learning_rate)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("train: epochs and batch_size must be at least 1")
        if self.warmup_epochs < 0:
            raise InputError(f"train: warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs > self.epochs:  # say what to change
            raise InputError(
                f"train: warmup_epochs must be within 0..epochs ({self.epochs}), got {self.warmup_epochs}; "
                f"lower it (--warmup-epochs) to at most {self.epochs}"
            )
        if not 0.0 < self.target_ratio <= 1.0:
            raise InputError(f"train: target_ratio must be in (0, 1], got {self.target_ratio}")
        if not 0.0 < self.lr < math.inf:
            raise InputError(f"train: lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.flops_weight < math.inf:
            raise InputError(f"train: flops_weight must be a finite number >= 0, got {self.flops_weight}")
        if self.threads is not None and self.threads < 1:  # None: torch's default, all cores
            raise InputError(f"train: threads must be at least 1 (or None for all cores), got {self.threads}")
        if not self.tau_start >= self.tau_end > 0:
            raise InputError("train: need tau_start >= tau_end > 0")
        if not 0 <= self.lr_warmup_epochs <= self.epochs:
            raise InputError(f"train: lr_warmup_epochs must be within 0..epochs ({self.epochs})")
        if self.translate < 0:
            raise InputError(f"train: translate must be >= 0 pixels, got {self.translate}")
        if not 0.0 <= self.distill_weight < math.inf:
            raise InputError(f"train: distill_weight must be a finite number >= 0, got {self.distill_weight}")
        if self.precision not in PRECISIONS:
            raise InputError(f"train: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    val_gflops_ratio: float
    tau: float
    histogram: list[int] = field(default_factory=list)


def autocast(config: TrainConfig) -> torch.autocast:
    """The context the training forward passes run in: CPU bfloat16 autocast for ``precision="bf16"``
    (convolutions in bf16; the cross-entropy, the weights and AdamW in fp32), else a no-op."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16")


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
    that weight, so the gate receives a gradient while only the chosen buckets are computed."""
    choices = weights.argmax(dim=1)
    out: Tensor | None = None
    for k in choices.unique().tolist():
        index = (choices == k).nonzero(as_tuple=True)[0]
        logits = model.forward_features(features[index], int(k)) * weights[index, k : k + 1]
        if out is None:
            out = logits.new_zeros(features.shape[0], logits.shape[1])
        out = out.index_copy(0, index, logits)
    assert out is not None
    return out


def training_loss(
    model: VaRed2VideoResNet,
    clips: Tensor,
    labels: Tensor,
    *,
    tau: float,
    config: TrainConfig,
    gated: bool,
    teacher_logits: Tensor | None = None,
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
    weights = F.gumbel_softmax(gate_logits, tau=tau, hard=True)
    logits = routed_forward(model, features, weights)
    costs = bucket_cost_ratios(model).to(gate_logits.device)
    expected = (gate_logits.softmax(dim=1) * costs).sum(dim=1).mean()
    loss = loss + F.cross_entropy(logits, labels) + distilled(logits, teacher)
    loss = loss + config.flops_weight * (expected - config.target_ratio) ** 2
    return loss, logits, weights.argmax(dim=1)


@torch.no_grad()
def evaluate_accuracy(model: VaRed2VideoResNet, loader: DataLoader, *, static: bool) -> tuple[float, float, list[int]]:
    """Accuracy, mean GFLOPs fraction and bucket histogram, with the gate's argmax (or the full bucket)."""
    model.eval()
    costs = bucket_cost_ratios(model)
    correct = total = 0
    cost = 0.0
    histogram = [0] * len(model.buckets)
    for clips, labels, *_ in loader:
        if static:
            logits, choices = model(clips, bucket=0), torch.zeros(len(labels), dtype=torch.long)
        else:
            logits, choices = model(clips)
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
        cost += float(costs[choices].sum())
        for k in choices.tolist():
            histogram[k] += 1
    return correct / max(total, 1), cost / max(total, 1), histogram


def _state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, object]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, object] = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.ndim > 0:
                tensors[f"{i}.{key}"] = value.contiguous()
            else:
                scalars[f"{i}.{key}"] = float(value)
    return tensors, scalars


def save_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochStats], config: TrainConfig
) -> None:
    """Optimizer moments as safetensors, the rest as JSON — resumable without unpickling anything."""
    tensors, scalars = _state_tensors(optimizer)
    tmp = directory / f"{TRAIN_STATE}.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(directory / f"{TRAIN_STATE}.safetensors")
    meta = {
        "epoch": epoch,
        "scalars": scalars,
        "config": asdict(config),
        "history": [asdict(h) for h in history],
        "torch_rng": torch.get_rng_state().tolist(),
    }
    tmp_json = directory / f"{TRAIN_STATE}.json.tmp"
    tmp_json.write_text(json.dumps(meta))
    tmp_json.replace(directory / f"{TRAIN_STATE}.json")


def load_training_state(directory: Path, optimizer: torch.optim.Optimizer) -> tuple[int, list[EpochStats]]:
    meta_path = directory / f"{TRAIN_STATE}.json"
    tensor_path = directory / f"{TRAIN_STATE}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise InputNotFoundError(f"{directory}: no training state to resume from ({meta_path.name} missing)")
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(tensor_path))
    state = optimizer.state_dict()
    params = [p for group in state["param_groups"] for p in group["params"]]
    new_state: dict[int, dict[str, object]] = {}
    for i in params:
        entry: dict[str, object] = {}
        for key, value in tensors.items():
            index, _, name = key.partition(".")
            if int(index) == i:
                entry[name] = value
        for key, value in meta["scalars"].items():
            index, _, name = key.partition(".")
            if int(index) == i:
                entry[name] = torch.tensor(value)
        if entry:
            new_state[i] = entry
    state["state"] = new_state
    optimizer.load_state_dict(state)
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    return int(meta["epoch"]), [EpochStats(**h) for h in meta["history"]]


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
) -> list[EpochStats]:
    """Train ``model`` and keep the latest checkpoint (and its training state) in ``out_dir``; with a
    ``teacher``, distil its full-bucket predictions into every bucket trained (see ``training_loss``)."""
    config.validate()
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    # Denormal floats make CPU convolutions and BatchNorm many times slower for no accuracy benefit.
    torch.set_flush_denormal(True)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(val_set, batch_size=config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(len(train_loader), 1)
    if teacher is not None:
        teacher.eval()  # its BatchNorm statistics stay as trained; only ``model`` switches modes below
    start, history = 0, list[EpochStats]()
    if resume:
        previous = load(out_dir)
        if replace(previous.config, provenance={}) != replace(model.config, provenance={}):
            raise InputError(
                f"--resume {out_dir}: the run saved there is another model ({previous.config.summary()}) than this "
                f"one ({model.config.summary()}); resume with its options"
            )
        model.load_state_dict(previous.state_dict())
        model.config.provenance = previous.config.provenance  # how the run so far was made
        start, history = load_training_state(out_dir, optimizer)
        log.info("resuming %s after epoch %d", out_dir, start)
    out_dir.mkdir(parents=True, exist_ok=True)

    for epoch in range(start + 1, config.epochs + 1):
        gated = not config.static and epoch > config.warmup_epochs
        tau = temperature(config, epoch)
        generator.manual_seed(config.seed * 1000 + epoch)  # each epoch's order depends on (seed, epoch) only
        moves = torch.Generator().manual_seed(10**6 + config.seed * 1000 + epoch)  # and so do its translations
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = progress(train_loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        for step, (clips, labels, *_) in enumerate(bar, start=(epoch - 1) * steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, steps_per_epoch)
            clips = random_translate(clips, config.translate, moves)
            teacher_logits = None
            with autocast(config):
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(clips, bucket=0)
                loss, logits, _ = training_loss(
                    model, clips, labels, tau=tau, config=config, gated=gated, teacher_logits=teacher_logits
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.2f}")
        val_acc, val_ratio, histogram = evaluate_accuracy(model, val_loader, static=not gated)
        stats = EpochStats(epoch, total_loss / max(seen, 1), correct / max(seen, 1), val_acc, val_ratio, tau, histogram)
        history.append(stats)
        model.config.provenance = {
            **(provenance or {}),
            "train_config": asdict(config),
            "epochs_done": epoch,
            "history": [asdict(h) for h in history],
        }
        save(model, out_dir)
        save_training_state(out_dir, optimizer, epoch, history, config)
        say(
            f"epoch {epoch}/{config.epochs}: loss {stats.loss:.3f}  train acc {stats.train_accuracy:.3f}  "
            f"val acc {val_acc:.3f}  val GFLOPs {val_ratio:.2f} of full"
            + ("" if config.static else f"  tau {tau:.2f}")  # the gate's temperature; a static run has no gate
            + f"  buckets {histogram}"
        )
        if on_epoch:
            on_epoch(stats)
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
