"""``vared2 evaluate``: accuracy and cost of a trained model on a labelled split.

Reports what decides whether an adaptive model is worth deploying: accuracy, mean GFLOPs and its fraction
of the full bucket, which buckets the gate picks, and how the cost follows the content (GFLOPs per motion
level: static clips should cost less than fast ones).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from vared2.formats.errors import InputError
from vared2.formats.progress import progress
from vared2.models.dataset import MOTION_LEVELS
from vared2.models.video_resnet import VaRed2VideoResNet


@dataclass
class Evaluation:
    samples: int
    accuracy: float
    mean_gflops: float
    full_gflops: float
    gflops_ratio: float
    buckets: list[str]
    histogram: list[int]
    #: The buckets' short names (``full``, ``t1``, ``c1``…), in the order of ``buckets``.
    short_names: list[str] = field(default_factory=list)
    gflops_by_motion: dict[str, float] = field(default_factory=dict)
    accuracy_by_motion: dict[str, float] = field(default_factory=dict)
    count_by_motion: dict[str, int] = field(default_factory=dict)
    forced_bucket: int | None = None
    #: With a latency table (``with_latency``): the choices' mean latency as a fraction of the full bucket's.
    latency_ratio: float | None = None
    latency_table: str | None = None

    def with_latency(self, costs: list[float], table: str) -> Evaluation:
        """This evaluation plus the expected latency of its bucket choices, priced by ``costs`` (each bucket's
        latency as a fraction of the full bucket's, ``vared2.formats.latency.latency_costs``) from ``table``."""
        if len(costs) != len(self.histogram):
            raise ValueError(f"{len(costs)} latency costs for {len(self.histogram)} buckets")
        ratio = sum(c * n for c, n in zip(costs, self.histogram, strict=True)) / max(self.samples, 1)
        return replace(self, latency_ratio=ratio, latency_table=table)

    def _latency_line(self) -> list[str]:
        if self.latency_ratio is None:
            return []
        saved = 1 - self.latency_ratio
        return [f"mean latency {self.latency_ratio:.3f} of full by {self.latency_table} ({saved:.1%} less)"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        short = self.short_names or self.buckets
        forced = self.forced_bucket
        mode = "gate" if forced is None else f"bucket {short[forced]} ({self.buckets[forced]})"
        rows = [
            f"samples {self.samples}   accuracy {self.accuracy:.4f}   ({mode})",
            f"mean GFLOPs {self.mean_gflops:.4f} of {self.full_gflops:.4f} full = {self.gflops_ratio:.3f} "
            f"({1 - self.gflops_ratio:.1%} fewer)",
            *self._latency_line(),
            "",
            f"{'bucket':<8} {'policy':<24} {'clips':>6} {'share':>7}",
        ]
        for label, name, count in zip(short, self.buckets, self.histogram, strict=True):
            rows.append(f"{label:<8} {name:<24} {count:>6} {count / max(self.samples, 1):>7.1%}")
        if self.gflops_by_motion:
            rows += ["", f"{'motion':<10} {'clips':>6} {'GFLOPs':>9} {'accuracy':>9}"]
            for level, gflops in self.gflops_by_motion.items():
                count, accuracy = self.count_by_motion[level], self.accuracy_by_motion[level]
                rows.append(f"{level:<10} {count:>6} {gflops:>9.4f} {accuracy:>9.3f}")
        return "\n".join(rows)


@torch.no_grad()
def evaluate(
    model: VaRed2VideoResNet, dataset: Dataset, *, batch_size: int = 16, bucket: int | str | None = None
) -> Evaluation:
    """Run ``dataset`` (items ``(clip, label, motion id)``) through the gate, or one forced bucket, on the
    model's device."""
    model.eval()
    device = next(model.parameters()).device
    names = [b.name for b in model.buckets]
    costs = torch.tensor([model.gflops(k) for k in range(len(names))]) + model.gate_gflops()
    forced = None if bucket is None else model.buckets.index(bucket)
    if forced is not None:
        costs = torch.tensor([model.gflops(k) for k in range(len(names))])  # a forced bucket runs no gate
    correct = torch.zeros(0, dtype=torch.bool)
    chosen = torch.zeros(0, dtype=torch.long)
    motions = torch.zeros(0, dtype=torch.long)
    batches = DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    for clips, labels, motion in progress(batches, desc="evaluating", unit="batch"):
        clips = clips.to(device, non_blocking=True)
        if forced is not None:
            logits, choices = model(clips, bucket=forced), torch.full((len(labels),), forced)
        else:
            logits, choices = model(clips)
            choices = choices.cpu()
        correct = torch.cat([correct, logits.argmax(1).cpu() == labels])
        chosen = torch.cat([chosen, choices])
        motions = torch.cat([motions, torch.as_tensor(motion)])
    if len(correct) == 0:
        raise InputError("evaluate: the dataset is empty")
    per_sample = costs[chosen]
    full = float(model.gflops(0))
    result = Evaluation(
        samples=len(correct),
        accuracy=float(correct.float().mean()),
        mean_gflops=float(per_sample.mean()),
        full_gflops=full,
        gflops_ratio=float(per_sample.mean()) / full,
        buckets=names,
        short_names=[b.short_name for b in model.buckets],
        histogram=torch.bincount(chosen, minlength=len(names)).tolist(),
        forced_bucket=forced,
    )
    for level_id, level in enumerate(MOTION_LEVELS):
        mask = motions == level_id
        if bool(mask.any()):
            result.gflops_by_motion[level] = float(per_sample[mask].mean())
            result.accuracy_by_motion[level] = float(correct[mask].float().mean())
            result.count_by_motion[level] = int(mask.sum())
    return result


def plot_histogram(evaluations: Sequence[tuple[str, Evaluation]], path: Path) -> Path:
    """A bar chart of the buckets the gate chose, one group of bars per evaluation (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = evaluations[0][1]
    names = [f"{short}\n{name}" for short, name in zip(first.short_names or first.buckets, first.buckets, strict=True)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names)), 3.8))
    width = 0.8 / len(evaluations)
    for i, (label, ev) in enumerate(evaluations):
        shares = [c / max(ev.samples, 1) for c in ev.histogram]
        ax.bar([x + i * width for x in range(len(names))], shares, width=width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, fontsize=7)
    ax.set_ylabel("share of clips")
    ax.set_title("Buckets chosen by the gate")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
