"""What ``vared2 bench`` found: per-bucket results, the efficiency table, and the files it writes
(``--json``, ``--latency-table``, ``--plot``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vared2.formats.latency import LATENCY_TABLE_FORMAT, LATENCY_TABLE_VERSION

from .ceiling import ConvOnly
from .dynamic import DynamicResult, policy_string
from .stem import GateSplit
from .timing import Trace


def accuracy_text(accuracy: float, digits: int = 2) -> str:
    """A workload's accuracy as a percentage, or ``n/a`` for a replayed workload (NaN: no labels)."""
    return "n/a" if math.isnan(accuracy) else f"{accuracy:.{digits}%}"


@dataclass
class BucketResult:
    """One bucket engine timed alone on the gate's features, against the full bucket."""

    id: int
    name: str
    policy: tuple[tuple[int, int], ...]
    gflops: float
    trace: Trace
    full_gflops: float
    full_median_ms: float
    conv_only: ConvOnly | None = None
    #: GFLOPs of the stem, when the manifest's bucket GFLOPs count it although the gate engine runs it.
    stem_gflops: float = 0.0
    #: The exporter's short name (``full``, ``t1``, ``c1``…); engines exported before it was recorded have none.
    short_name: str | None = None

    @property
    def label(self) -> str:
        """What tables and plots call the bucket: its short name, else its name."""
        return self.short_name or self.name

    @property
    def median_ms(self) -> float:
        return self.trace.latency.median

    @property
    def flops_fraction(self) -> float:
        return self.gflops / self.full_gflops

    @property
    def latency_fraction(self) -> float:
        return self.median_ms / self.full_median_ms

    @property
    def speedup(self) -> float:
        return self.full_median_ms / self.median_ms

    @property
    def efficiency(self) -> float:
        """FLOPs fraction ÷ latency fraction: 1 when time falls exactly with FLOPs."""
        return self.flops_fraction / self.latency_fraction

    @property
    def engine_gflops(self) -> float:
        """What the bucket engine itself computes: the manifest's GFLOPs without the stem (run by the gate)."""
        return self.gflops - self.stem_gflops

    @property
    def engine_efficiency(self) -> float:
        """Efficiency with the engine's own FLOPs (equal to ``efficiency`` when the manifest excludes the stem)."""
        flops = self.engine_gflops / (self.full_gflops - self.stem_gflops)
        return flops / self.latency_fraction

    @property
    def ceiling(self) -> float | None:
        return None if self.conv_only is None else self.conv_only.ceiling

    @property
    def of_ceiling(self) -> float | None:
        """Engine efficiency ÷ ceiling: how much of what its convolutions allow the whole bucket reaches."""
        return None if self.ceiling is None else self.engine_efficiency / self.ceiling

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "short_name": self.short_name,
            "policy": [list(p) for p in self.policy],
            "gflops": self.gflops,
            "flops_fraction": self.flops_fraction,
            "median_ms": self.median_ms,
            "latency_fraction": self.latency_fraction,
            "speedup": self.speedup,
            "efficiency": self.efficiency,
            "stem_gflops": self.stem_gflops,
            "engine_gflops": self.engine_gflops,
            "engine_efficiency": self.engine_efficiency,
            "ceiling": self.ceiling,
            "efficiency_over_ceiling": self.of_ceiling,
            "conv_only": None if self.conv_only is None else self.conv_only.to_dict(samples),
            "trace": self.trace.to_dict(samples),
        }


@dataclass
class BenchReport:
    """Every number of one ``vared2 bench`` run (``to_dict`` is the ``--json`` file)."""

    engine_dir: str
    engine: dict[str, Any]  # name, backend, version, precision, device, max batch
    host: dict[str, Any]
    settings: dict[str, Any]
    gate: Trace
    gate_gflops: float
    buckets: list[BucketResult]
    dynamic: DynamicResult | None = None
    ceiling_note: str | None = None
    gate_split: GateSplit | None = None
    load_average: dict[str, list[float]] = field(default_factory=dict)

    @property
    def full(self) -> BucketResult:
        return self.buckets[0]

    @property
    def gate_fraction(self) -> float:
        """The gate's median latency ÷ the full bucket's."""
        return self.gate.latency.median / self.full.median_ms

    @property
    def unstable(self) -> list[str]:
        names = ["gate"] if self.gate.unstable else []
        names += [f"bucket {b.id} ({b.label})" for b in self.buckets if b.trace.unstable]
        if self.dynamic is not None and self.dynamic.drifted:
            names.append("dynamic workload (its interleaved static full calls)")
        return names

    def table(self) -> str:
        """The efficiency table (plain text, aligned)."""
        head = (
            f"{'id':>2}  {'bucket':<8} {'policy':<20} {'GFLOPs':>7} {'FLOPs':>6} {'median ms':>10} "
            f"{'speedup':>7} {'effic.':>6} {'eff-stem':>8} {'ceiling':>7} {'eff/ceil':>8}"
        )
        lines = [head, "-" * len(head)]
        for b in self.buckets:
            ceiling = "-" if b.ceiling is None else f"{b.ceiling:.2f}"
            of_ceiling = "-" if b.of_ceiling is None else f"{b.of_ceiling:.2f}"
            lines.append(
                f"{b.id:>2}  {b.label:<8} {policy_string(b.policy):<20} {b.gflops:>7.3f} {b.flops_fraction:>6.1%} "
                f"{b.median_ms:>10.3f} {b.speedup:>6.2f}x {b.efficiency:>6.2f} {b.engine_efficiency:>8.2f} "
                f"{ceiling:>7} {of_ceiling:>8}"
            )
        lines.append(
            f"gate: median {self.gate.latency.median:.3f} ms = {self.gate_fraction:.2%} of the full bucket "
            f"({self.gate_gflops:.4g} GFLOPs)"
        )
        split = self.gate_split
        if split is not None:
            stem, decision = split.of_full(self.gate_fraction)
            lines.append(
                f"gate split (interleaved): stem alone {split.stem.latency.median:.3f} of "
                f"{split.gate.latency.median:.3f} ms = {split.stem_share:.1%} of the gate; so of the full bucket: "
                f"stem {stem:.2%}, decision {decision:.2%} (the head and MLP a static model does not run)"
            )
        stem = self.full.stem_gflops
        if stem:
            lines.append(
                f"stem: the manifest's bucket GFLOPs include the stem ({stem:.4g} GFLOPs), which the gate engine runs; "
                "eff-stem and eff/ceil use the bucket engine's own FLOPs"
            )
        if self.ceiling_note:
            lines.append(f"ceiling: {self.ceiling_note}")
        if self.dynamic is not None:
            d = self.dynamic
            lines += [
                "",
                f"dynamic workload: {d.clips} clips from {d.data} (batch 1, gate + chosen bucket vs bucket 0 forced)",
                f"{'':<12} {'mean ms':>9} {'median ms':>10} {'mean GFLOPs':>12} {'accuracy':>9}",
                f"{'dynamic':<12} {d.dynamic.mean_ms:>9.3f} {_median(d.dynamic.latency_ms):>10.3f} "
                f"{d.dynamic.mean_gflops:>12.4f} {accuracy_text(d.dynamic.accuracy):>9}",
                f"{'static full':<12} {d.full.mean_ms:>9.3f} {_median(d.full.latency_ms):>10.3f} "
                f"{d.full.mean_gflops:>12.4f} {accuracy_text(d.full.accuracy):>9}",
                f"FLOPs fraction {d.flops_fraction:.3f}, latency fraction {d.latency_fraction:.3f}; "
                f"mean latency ÷ (FLOPs fraction × full) = {d.target_ratio:.3f}",
            ]
        else:  # said, so a missing dynamic row is not read as "the gate was measured on videos"
            lines += ["", "dynamic workload: not run (give --data DATA_DIR for videos, or --replay BENCH_JSON)"]
        return "\n".join(lines)

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        names = [b.name for b in self.buckets]
        return {
            "format": "vared2-bench",
            "version": 1,
            "engine_dir": self.engine_dir,
            "engine": self.engine,
            "host": self.host,
            "settings": self.settings,
            "load_average": self.load_average,
            "gate": {
                "gflops": self.gate_gflops,
                "median_ms": self.gate.latency.median,
                "fraction_of_full": self.gate_fraction,
                "trace": self.gate.to_dict(samples),
                "split": None if self.gate_split is None else self.gate_split.to_dict(self.gate_fraction, samples),
            },
            "buckets": [b.to_dict(samples) for b in self.buckets],
            "ceiling_note": self.ceiling_note,
            "dynamic": None
            if self.dynamic is None
            else self.dynamic.to_dict(names, self.settings["percentiles"], samples),
            "unstable": self.unstable,
        }

    def latency_table(self) -> dict[str, Any]:
        """The measured per-bucket latency in a form training can read (bucket name → median ms)."""
        return {
            "format": LATENCY_TABLE_FORMAT,
            "version": LATENCY_TABLE_VERSION,
            "statistic": "median",
            "unit": "ms",
            "batch": self.settings["batch"],
            "engine": self.engine["name"],
            "backend": self.engine["backend"],
            "backend_version": self.engine["backend_version"],
            "precision": self.engine["precision"],
            "device": self.engine["device"],
            "host": self.host,
            "threads": self.settings["threads"],
            "shared_thread_pool": self.settings.get("shared_thread_pool", False),
            "gate_ms": self.gate.latency.median,
            "buckets": {b.name: b.median_ms for b in self.buckets},
            "bucket_ids": {b.name: b.id for b in self.buckets},
            "gflops": {b.name: b.gflops for b in self.buckets},
        }


def _median(values: list[float]) -> float:
    from .stats import median

    return median(values)


def _write_text(path: Path, text: str) -> Path:
    """Write via a temporary sibling and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(report: BenchReport, path: Path | str) -> Path:
    return _write_text(Path(path), json.dumps(report.to_dict(), indent=2) + "\n")


def write_latency_table(report: BenchReport, path: Path | str) -> Path:
    return _write_text(Path(path), json.dumps(report.latency_table(), indent=2) + "\n")


def plot_figure(report: BenchReport) -> tuple[Any, Any, list[Any]]:
    """The figure of :func:`write_plot`: ``(figure, axes, bucket labels)``, the labels placed apart and inside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = report.full
    xs = [b.gflops for b in report.buckets]
    ys = [b.median_ms for b in report.buckets]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    top = max(xs) * 1.08
    ax.plot([0, top], [0, full.median_ms * top / full.gflops], "--", color="grey", label="ideal: latency ∝ FLOPs")
    ax.scatter(xs, ys, color="tab:blue", zorder=3, label="bucket (median)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, max(max(ys), full.median_ms) * 1.15)
    ax.set_xlabel("GFLOPs (multiply-adds) per clip")
    ax.set_ylabel(f"median latency (ms), batch {report.settings['batch']}")
    engine = report.engine
    ax.set_title(f"{engine['name']} — {engine['backend']} {engine['backend_version']}, {engine['precision']}")
    ax.grid(alpha=0.3)
    legend = ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    labels = [
        ax.annotate(
            f"{b.label}  {policy_string(b.policy)}\neff {b.efficiency:.2f}",
            (b.gflops, b.median_ms),
            fontsize=7,
            textcoords="offset pixels",
            xytext=(6, 6),
            ha="left",
            va="bottom",  # the offset is then the box's lower left corner, which _place_apart relies on
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey", "shrinkA": 0, "shrinkB": 2},
        )
        for b in report.buckets
    ]
    _place_apart(fig, ax, labels, avoid=[legend])
    return fig, ax, labels


def label_box(ax: Any, label: Any, renderer: Any) -> Any:
    """The display box of an annotation's text alone (its own extent includes its arrow); the text of an
    annotation in offset pixels is laid out relative to its point."""
    from matplotlib.text import Text

    return Text.get_window_extent(label, renderer).translated(*ax.transData.transform(label.xy))


def _place_apart(fig: Any, ax: Any, labels: list[Any], avoid: Sequence[Any] = ()) -> None:
    """Move each label (an annotation in offset pixels) to the first spot near its point, right or left of it and
    then further up or down, where it stays inside the axes and overlaps no label placed before it."""

    def text_box(label: Any) -> Any:
        return label_box(ax, label, renderer)

    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    taken = [artist.get_window_extent(renderer) for artist in avoid]
    gap = 4
    for label in sorted(labels, key=lambda a: (a.xy[0], a.xy[1])):
        label.set_position((0, 0))
        box = text_box(label)
        width, height = box.width, box.height
        x, y = ax.transData.transform(label.xy)
        best, best_cost = (6.0, 6.0), float("inf")
        for step in range(40):
            for dy in (6.0 + step * (height + gap) / 2, 6.0 - height - 12 - step * (height + gap) / 2):
                for dx in (6.0, -width - 6.0):
                    left, bottom = x + dx, y + dy
                    outside = max(0.0, area.x0 - left) + max(0.0, left + width - area.x1)
                    outside += max(0.0, area.y0 - bottom) + max(0.0, bottom + height - area.y1)
                    overlap = sum(
                        max(0.0, min(left + width, t.x1) - max(left, t.x0))
                        * max(0.0, min(bottom + height, t.y1) - max(bottom, t.y0))
                        for t in taken
                    )
                    cost = overlap + 1000 * outside
                    if cost < best_cost:
                        best, best_cost = (dx, dy), cost
            if best_cost == 0:
                break
        label.set_position(best)
        taken.append(text_box(label))


def write_plot(report: BenchReport, path: Path | str) -> Path:
    """Median latency against GFLOPs per bucket, with the ideal line (latency proportional to FLOPs, through the
    full bucket's point) and each bucket's short name, policy and efficiency beside its point. matplotlib is
    imported here only, with the Agg backend (no display needed)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, _, _ = plot_figure(report)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
