"""``vared2 bench ENGINE_DIR --against OTHER``: two engine directories of one model (int8 and fp32, say) timed in
interleaved rounds, so both see the same machine load, with the precision of each and a speedup column.

Each round times every step once per directory, one after the other (gate, each bucket, the static full model =
gate + bucket 0 through ``classify``, and with ``replay`` the recorded bucket mix): a step's figure is the median
over rounds of its per-round median, and its speedup the median (and range) of the per-round ratios
OTHER ÷ ENGINE_DIR. "dynamic vs static full" divides OTHER's static full by ENGINE_DIR's dynamic mix per round.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from vared2.formats.errors import InputError, InputNotFoundError
from vared2.runtime import Runtime

from .dynamic import policy_string, recorded_buckets
from .report import _write_text
from .timing import check_settings

SEED = 0


@dataclass
class Row:
    """One step: per-round medians (ms) of both directories."""

    name: str
    gflops: float
    mine: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [b / a for a, b in zip(self.mine, self.other, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        ratios = self.ratios
        return {
            "name": self.name,
            "gflops": self.gflops,
            "median_ms": statistics.median(self.mine),
            "against_median_ms": statistics.median(self.other),
            "speedup": statistics.median(ratios),
            "speedup_range": [min(ratios), max(ratios)],
            "rounds_ms": self.mine,
            "against_rounds_ms": self.other,
        }


@dataclass
class AgainstReport:
    """What ``run_against`` measured; ``table()`` is what it prints."""

    engine_dir: str
    against_dir: str
    precision: str
    against_precision: str
    rows: list[Row]
    rounds: int
    iterations: int
    threads: int | None
    load_average: dict[str, list[float]]
    dynamic_vs_static: list[float] = field(default_factory=list)

    def efficiency(self, row: Row, mine: bool = True) -> float | None:
        """FLOPs fraction ÷ latency fraction against bucket 0 of the same directory (buckets only)."""
        full = next(r for r in self.rows if r.name.startswith("bucket 0"))
        if not row.name.startswith("bucket ") or not row.gflops:
            return None
        a, b = (row.mine, full.mine) if mine else (row.other, full.other)
        return (row.gflops / full.gflops) / (statistics.median(a) / statistics.median(b))

    def table(self) -> str:
        mine, other = self.precision, self.against_precision
        head = f"{'step':<34} {mine + ' ms':>10} {other + ' ms':>10} {'speedup':>8} {'range':>13} {'eff ' + mine:>9}"
        head += f" {'eff ' + other:>9}"
        lines = [head]
        for row in self.rows:
            ratios = row.ratios
            eff = [self.efficiency(row, m) for m in (True, False)]
            effs = " ".join(f"{e:>9.2f}" if e is not None else f"{'':>9}" for e in eff)
            lines.append(
                f"{row.name:<34} {statistics.median(row.mine):>10.2f} {statistics.median(row.other):>10.2f} "
                f"{statistics.median(ratios):>7.2f}x {min(ratios):>6.2f}-{max(ratios):<5.2f}x {effs}"
            )
        if self.dynamic_vs_static:
            r = self.dynamic_vs_static
            lines.append(
                f"dynamic {mine} vs static {other} full: {statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f})"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine_dir": self.engine_dir,
            "against_dir": self.against_dir,
            "precision": self.precision,
            "against_precision": self.against_precision,
            "rounds": self.rounds,
            "iterations": self.iterations,
            "threads": self.threads,
            "load_average": self.load_average,
            "rows": [r.to_dict() for r in self.rows],
            "dynamic_vs_static": self.dynamic_vs_static,
        }


def _steps(rt: Runtime, session: Any, replay: Sequence[int] | None) -> list[tuple[str, float, Callable[[int], object]]]:
    """(name, GFLOPs, run the step's i-th call) for every step of one directory."""
    m = rt.manifest
    spec = m.model
    clip = np.random.default_rng(SEED).integers(0, 256, (1, spec.frames, spec.size, spec.size, 3), np.uint8)
    gate_out = session.run_gate(clip)
    rows = np.arange(1)
    steps: list[tuple[str, float, Callable[[int], object]]] = [
        ("gate", m.gate.gflops, lambda i: session.run_gate(clip))
    ]

    def bucket(k: int) -> Callable[[int], object]:
        return lambda i: session.run_bucket(k, gate_out, rows)

    for b in m.buckets:
        steps.append((f"bucket {b.id} {b.short_name or policy_string(b.policy)}", b.gflops, bucket(b.id)))
    full = m.gate.gflops + m.buckets[0].gflops
    steps.append(("static full (gate + bucket 0)", full, lambda i: rt.classify(clip[0], bucket=0)))
    if replay is not None:
        order = [replay[i] for i in np.random.default_rng(SEED).permutation(len(replay))]
        steps.append(("dynamic (replayed mix)", 0.0, lambda i: rt.classify(clip[0], bucket=order[i % len(order)])))
    return steps


def _time(step: Callable[[int], object], start: int, iterations: int) -> float:
    """Median ms of ``iterations`` calls of ``step`` (call numbers from ``start``)."""
    times = []
    for i in range(start, start + iterations):
        t0 = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_against(
    engine_dir: str | os.PathLike[str],
    against: str | os.PathLike[str],
    *,
    rounds: int = 5,
    iterations: int = 10,
    warmup_ms: float = 200.0,
    threads: int | None = None,
    replay: str | os.PathLike[str] | None = None,
    json_path: str | os.PathLike[str] | None = None,
    out: TextIO | None = None,
) -> AgainstReport:
    """Time ``engine_dir`` and ``against`` (the same model's buckets) in ``rounds`` interleaved rounds of
    ``iterations`` calls per step; print the table with both precisions and the speedup column to ``out``."""
    out = sys.stdout if out is None else out
    check_settings(warmup_ms, iterations, 1.0)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"--rounds: expected an integer >= 1, got {rounds!r}")
    if replay is not None and not Path(replay).is_file():
        raise InputNotFoundError(f"{replay}: no such bench JSON file (--replay)")
    load_before = list(os.getloadavg())
    a = Runtime.open(engine_dir, threads=threads)
    try:
        b = Runtime.open(against, threads=threads)
    except BaseException:
        a.close()
        raise
    try:
        policies = [[policy_string(x.policy) for x in rt.manifest.buckets] for rt in (a, b)]
        if policies[0] != policies[1] or a.manifest.model.frames != b.manifest.model.frames:
            raise InputError(
                f"--against {against}: not the same model's buckets as {engine_dir} ({policies[1]} vs {policies[0]})"
            )
        mix = recorded_buckets(Path(replay), a) if replay is not None else None
        with a.backend.session() as sa, b.backend.session() as sb:
            steps_a, steps_b = _steps(a, sa, mix), _steps(b, sb, mix)
            rows = [Row(name, gflops) for name, gflops, _ in steps_a]
            for (_, _, sa_step), (_, _, sb_step) in zip(steps_a, steps_b, strict=True):  # warm-up
                for step in (sa_step, sb_step):
                    t0 = time.perf_counter()
                    i = 0
                    while (time.perf_counter() - t0) * 1e3 < warmup_ms or i < 1:
                        step(i)
                        i += 1
            static = next(i for i, r in enumerate(rows) if r.name.startswith("static"))
            vs_static: list[float] = []
            for r in range(rounds):
                for row, (_, _, sa_step), (_, _, sb_step) in zip(rows, steps_a, steps_b, strict=True):
                    row.mine.append(_time(sa_step, r * iterations, iterations))
                    row.other.append(_time(sb_step, r * iterations, iterations))
                if mix is not None:
                    vs_static.append(rows[static].other[-1] / rows[-1].mine[-1])
                print(f"round {r + 1}/{rounds} done", file=out, flush=True)
    finally:
        a.close()
        b.close()
    report = AgainstReport(
        engine_dir=str(engine_dir),
        against_dir=str(against),
        precision=a.manifest.precision,
        against_precision=b.manifest.precision,
        rows=rows,
        rounds=rounds,
        iterations=iterations,
        threads=threads,
        load_average={"before": load_before, "after": list(os.getloadavg())},
        dynamic_vs_static=vs_static,
    )
    print(f"=== {engine_dir} ({report.precision}) against {against} ({report.against_precision}) ===", file=out)
    print(f"{rounds} interleaved rounds of {iterations} calls per step, threads {threads or 'default'}", file=out)
    print(f"speedup = {report.against_precision} ms ÷ {report.precision} ms; eff = FLOPs ÷ latency fraction", file=out)
    print(report.table(), file=out, flush=True)
    if json_path is not None:
        print(f"JSON: {_write_text(Path(json_path), json.dumps(report.to_dict(), indent=2))}", file=out)
    return report
