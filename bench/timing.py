"""trtexec's measurement loop: warm up for a time, then run until both an iteration count and a duration are reached.

``measure(step, warmup_ms=200, iterations=10, duration_s=3)`` calls ``step`` back to back. A timed run's latency is
the host wall time of the call, or, when ``step`` returns its own phase times (the TensorRT path: ``enqueue``,
``h2d``, ``compute``, ``d2h`` from CUDA events), ``h2d + compute + d2h`` as in trtexec. ``Total Host Walltime``
runs from the start of the first timed run to the end of the last (docs/benchmarks.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vared2.formats.errors import InputError

from .stats import DEFAULT_PERCENTILES, UNSTABLE_COV_PERCENT, Stats, fmt, perf_string

#: The phase times a device step reports, in trtexec's order.
DEVICE_PHASES = ("enqueue", "h2d", "compute", "d2h")
#: trtexec's names for them in the summary.
PHASE_TITLES = {
    "latency": "Latency",
    "enqueue": "Enqueue Time",
    "h2d": "H2D Latency",
    "compute": "GPU Compute Time",
    "d2h": "D2H Latency",
}

Step = Callable[[], Mapping[str, float] | None]
Clock = Callable[[], float]


def check_settings(warmup_ms: float, iterations: int, duration_s: float, batch: int = 1) -> None:
    """trtexec's option ranges, with errors naming the option."""
    if isinstance(warmup_ms, bool) or not isinstance(warmup_ms, int | float) or not warmup_ms >= 0:
        raise InputError(f"--warmup: expected milliseconds >= 0, got {warmup_ms!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"--iterations: expected an integer >= 1, got {iterations!r}")
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or not duration_s >= 0:
        raise InputError(f"--duration: expected seconds >= 0, got {duration_s!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"--batch: expected an integer >= 1, got {batch!r}")


@dataclass(frozen=True)
class TimingSettings:
    """trtexec's timing options as one value, shared by every graph a bench times (``kwargs`` for ``measure``)."""

    warmup_ms: float = 200.0
    iterations: int = 10
    duration_s: float = 3.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)


#: trtexec's defaults.
DEFAULT_TIMING = TimingSettings()


@dataclass
class Trace:
    """What one ``measure`` call saw: per timed run, each phase in milliseconds."""

    samples: dict[str, list[float]]
    warmup_count: int
    warmup_ms: float
    walltime_ms: float
    batch: int = 1
    stats: dict[str, Stats] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.samples["latency"])

    @property
    def throughput_qps(self) -> float:
        """trtexec: batch × timed runs ÷ total host wall time."""
        return self.batch * self.count / self.walltime_ms * 1e3 if self.walltime_ms > 0 else float("inf")

    @property
    def latency(self) -> Stats:
        return self.stats["latency"]

    @property
    def device(self) -> bool:
        """Whether phase times came from the device (TensorRT) rather than the host clock."""
        return "compute" in self.samples

    def summarise(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Trace:
        self.stats = {name: Stats.of(values, percentiles) for name, values in self.samples.items()}
        return self

    @property
    def stability_metric(self) -> str:
        """trtexec judges GPU Compute Time; on the CPU the latency is the compute time."""
        return "compute" if self.device else "latency"

    @property
    def unstable(self) -> bool:
        return self.stats[self.stability_metric].cov_percent > UNSTABLE_COV_PERCENT

    def to_dict(self, samples: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "count": self.count,
            "batch": self.batch,
            "warmup_count": self.warmup_count,
            "warmup_ms": self.warmup_ms,
            "walltime_s": self.walltime_ms / 1e3,
            "throughput_qps": self.throughput_qps,
            "unstable": self.unstable,
            "timing": "cuda-events" if self.device else "host-clock",
        }
        out.update({name: stats.to_dict() for name, stats in self.stats.items()})
        if samples:
            out["samples_ms"] = {name: list(values) for name, values in self.samples.items()}
        return out


def measure(
    step: Step,
    *,
    warmup_ms: float = 200.0,
    iterations: int = 10,
    duration_s: float = 3.0,
    batch: int = 1,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    clock: Clock = time.perf_counter,
) -> Trace:
    """Warm up, then time ``step`` trtexec-style (see the module docstring)."""
    check_settings(warmup_ms, iterations, duration_s, batch)
    start = clock()
    warmups = 0
    now = start
    while (now - start) * 1e3 < warmup_ms:
        step()
        warmups += 1
        now = clock()
    warmup_elapsed = (now - start) * 1e3

    samples: dict[str, list[float]] = {"latency": []}
    begin = clock()
    end = begin
    while len(samples["latency"]) < iterations or end - begin < duration_s:
        t0 = clock()
        phases = step()
        end = clock()
        if phases is None:
            samples["latency"].append((end - t0) * 1e3)
            continue
        for name in DEVICE_PHASES:
            samples.setdefault(name, []).append(float(phases[name]))
        samples["latency"].append(float(phases["h2d"] + phases["compute"] + phases["d2h"]))
    trace = Trace(samples, warmups, warmup_elapsed, (end - begin) * 1e3, batch)
    return trace.summarise(percentiles)


def measure_interleaved(
    steps: Sequence[Callable[[], object]],
    *,
    warmup_ms: float = 200.0,
    iterations: int = 10,
    duration_s: float = 3.0,
    batch: int = 1,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    clock: Clock = time.perf_counter,
    seed: int = 0,
) -> list[Trace]:
    """Time several host-clock ``steps`` whose *ratios* matter, in rounds: every round runs each step once, in a
    seeded random order, so a change in the machine's speed hits all of them alike (a sequential ``measure`` of
    each would give one step a slow phase and the next a fast one). Warm-up rounds until ``warmup_ms`` per step
    have passed; then rounds until every step has ``iterations`` runs and ``duration_s`` of its own run time."""
    check_settings(warmup_ms, iterations, duration_s, batch)
    if not steps:
        raise ValueError("measure_interleaved: no steps to time")
    order = list(range(len(steps)))
    shuffle = random.Random(seed).shuffle
    start = clock()
    rounds = 0
    while (clock() - start) * 1e3 < warmup_ms * len(steps):
        for step in steps:
            step()
        rounds += 1
    warmup_elapsed = (clock() - start) * 1e3
    samples: list[list[float]] = [[] for _ in steps]
    while min(len(s) for s in samples) < iterations or min(sum(s) for s in samples) < duration_s * 1e3:
        shuffle(order)
        for index in order:
            t0 = clock()
            steps[index]()
            samples[index].append((clock() - t0) * 1e3)
    return [
        Trace({"latency": s}, rounds, warmup_elapsed / len(steps), sum(s), batch).summarise(percentiles)
        for s in samples
    ]


def summary_lines(trace: Trace) -> list[str]:
    """trtexec's prolog and ``=== Performance summary ===`` block for one trace, then its warnings."""
    lines = [
        f"Warmup completed {trace.warmup_count * trace.batch} queries over {fmt(trace.warmup_ms)} ms",
        f"Timing trace has {trace.count * trace.batch} queries over {fmt(trace.walltime_ms / 1e3)} s",
        "=== Performance summary ===",
        f"Throughput: {fmt(trace.throughput_qps)} qps",
        f"Latency: {perf_string(trace.stats['latency'])}",
    ]
    if trace.device:
        for name in DEVICE_PHASES:
            lines.append(f"{PHASE_TITLES[name]}: {perf_string(trace.stats[name])}")
    lines.append(f"Total Host Walltime: {fmt(trace.walltime_ms / 1e3)} s")
    if trace.device:
        total = trace.stats["compute"].mean * trace.count / 1e3
        lines.append(f"Total GPU Compute Time: {fmt(total)} s")
    metric = trace.stability_metric
    lines.append(f"Coefficient of variance ({PHASE_TITLES[metric]}): {fmt(trace.stats[metric].cov_percent)}%")
    lines += instability_warning(trace)
    return lines


def instability_warning(trace: Trace) -> list[str]:
    """trtexec's warning when the compute time's coefficient of variance exceeds 2.5 % (its wording on the GPU;
    on the CPU the host latency is the compute time, and the advice fits a CPU)."""
    if not trace.unstable:
        return []
    if trace.device:
        cov = trace.stats["compute"].cov_percent
        return [
            f"[W] * GPU compute time is unstable, with coefficient of variance = {fmt(cov)}%.",
            "[W]   If not already in use, locking GPU clock frequency may improve the stability.",
        ]
    cov = trace.stats["latency"].cov_percent
    return [
        f"[W] * CPU compute time is unstable, with coefficient of variance = {fmt(cov)}%.",
        "[W]   Other processes may be competing for the cores (check the load average); a quiet machine, "
        "fixed --threads and a longer --duration may improve the stability.",
    ]
