"""trtexec's statistics: min, max, mean, median, percentiles without interpolation, coefficient of variance.

Numbers must be comparable with trtexec's, so its rules (TensorRT's ``samples/common/sampleReporting.cpp``) are
followed exactly: the percentile ``p`` of ``n`` ascending samples is the sample at ``max(n - 1 - e, 0)`` with
``e = int((1 - p / 100) * n)`` in 32-bit float (``n = 10, p = 90`` gives 8; float64 would give 9); the median
averages the two middle samples of an even count; the coefficient of variance is the population standard deviation
over the mean, in percent; numbers print as a C++ ``ostream`` does (``%g``). docs/benchmarks.md has the details.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vared2.formats.errors import InputError

#: trtexec's threshold (percent) above which it warns that a timing is unstable.
UNSTABLE_COV_PERCENT = 2.5
DEFAULT_PERCENTILES = (90.0, 95.0, 99.0)


def percentile_index(count: int, percentile: float) -> int:
    """Index of trtexec's ``percentile`` in ``count`` ascending samples (float32 arithmetic, as in C++)."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if count < 1:
        raise ValueError("percentile of an empty sample")
    one, hundred = np.float32(1.0), np.float32(100.0)
    exclude = int((one - np.float32(percentile) / hundred) * np.float32(count))
    return max(count - 1 - exclude, 0)


def percentile(values: Sequence[float], p: float) -> float:
    """trtexec's percentile of ``values`` (any order): a sample, never an interpolation."""
    ordered = sorted(values)
    return float(ordered[percentile_index(len(ordered), p)])


def median(values: Sequence[float]) -> float:
    """The middle sample, or the mean of the two middle samples for an even count."""
    if not values:
        raise ValueError("median of an empty sample")
    ordered = sorted(values)
    m = len(ordered) // 2
    return float(ordered[m]) if len(ordered) % 2 else (ordered[m - 1] + ordered[m]) / 2.0


def coefficient_of_variance(values: Sequence[float]) -> float:
    """Population standard deviation ÷ mean × 100 (percent); infinite for a zero mean, 0 for no samples."""
    if not values:
        return 0.0
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if mean == 0.0:
        return math.inf
    return float(np.sqrt(np.mean((array - mean) ** 2)) / mean * 100.0)


def parse_percentiles(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"90,95,99"`` (trtexec's ``--percentile``) or a sequence of numbers → checked floats in [0, 100]."""
    items: Sequence[float | str] = text.split(",") if isinstance(text, str) else text
    out = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError) as error:
            raise InputError(f"percentile: expected numbers in [0, 100] like 90,95,99, got {item!r}") from error
        if not 0.0 <= value <= 100.0 or math.isnan(value):
            raise InputError(f"percentile: expected numbers in [0, 100], got {value:g}")
        out.append(value)
    if not out:
        raise InputError("percentile: expected at least one number, e.g. 90,95,99")
    return tuple(out)


@dataclass(frozen=True)
class Stats:
    """One metric over a trace (milliseconds): what a trtexec summary line shows, and the coefficient of variance."""

    min: float
    max: float
    mean: float
    median: float
    percentiles: tuple[tuple[float, float], ...]  # (p, value)
    cov_percent: float

    @classmethod
    def of(cls, values: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Stats:
        if not values:
            raise ValueError("no samples to summarise")
        ordered = sorted(float(v) for v in values)
        return cls(
            min=ordered[0],
            max=ordered[-1],
            mean=float(np.mean(ordered)),
            median=median(ordered),
            percentiles=tuple((float(p), ordered[percentile_index(len(ordered), p)]) for p in percentiles),
            cov_percent=coefficient_of_variance(ordered),
        )

    def percentile(self, p: float) -> float:
        for q, value in self.percentiles:
            if q == p:
                return value
        raise KeyError(f"percentile {p:g} was not computed (have {', '.join(f'{q:g}' for q, _ in self.percentiles)})")

    def to_dict(self) -> dict[str, object]:
        return {
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "median": self.median,
            "percentiles": {f"{p:g}": v for p, v in self.percentiles},
            "cov_percent": self.cov_percent,
        }


def fmt(value: float) -> str:
    """A number as a C++ ``ostream`` prints it by default (``%g``, 6 significant digits): 9.11414, 120.699, 0."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def perf_string(stats: Stats) -> str:
    """trtexec's ``min = … ms, max = … ms, mean = … ms, median = … ms, percentile(90%) = … ms, …``."""
    parts = [
        f"min = {fmt(stats.min)} ms",
        f"max = {fmt(stats.max)} ms",
        f"mean = {fmt(stats.mean)} ms",
        f"median = {fmt(stats.median)} ms",
    ]
    parts += [f"percentile({p:g}%) = {fmt(v)} ms" for p, v in stats.percentiles]
    return ", ".join(parts)
