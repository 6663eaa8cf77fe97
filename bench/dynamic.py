"""The dynamic workload: labelled videos through ``Runtime.classify`` (gate + the chosen bucket) against the static
full engine (the same calls with bucket 0 forced), clip by clip; or a *replayed* workload, another engine's recorded
bucket choices served with this engine's buckets (for a model whose own gate is untrained: docs/benchmarks.md).

Clips are prepared as for training: frames decoded and prepared by the runtime's video code, then the manifest's
``frames`` picked by ``vared2.formats.video.sample_indices``. Decoding happens before any timing.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vared2.formats.errors import InputError, InputNotFoundError
from vared2.formats.video import sample_indices
from vared2.runtime import Result, Runtime
from vared2.runtime.video import decode

from .stats import UNSTABLE_COV_PERCENT, Stats


def policy_string(policy: tuple[tuple[int, int], ...]) -> str:
    """``((1, 1), (0, 0))`` → ``t1c1/t0c0``."""
    return "/".join(f"t{pt}c{pc}" for pt, pc in policy)


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    label: str
    clip: np.ndarray  # uint8 [T, S, S, 3]


def read_list(data: Path | str, split: str = "val") -> list[tuple[Path, str]]:
    """``(video, label)`` rows of ``DATA_DIR/<split>.csv`` (or of a CSV file given directly): ``path,label[,…]``
    with paths relative to the CSV's folder."""
    data = Path(data)
    csv_path = data / f"{split}.csv" if data.is_dir() else data
    if not csv_path.is_file():
        raise InputNotFoundError(f"{csv_path}: no such file (--data takes a directory with {split}.csv, or a CSV)")
    rows = []
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise InputError(f"{csv_path}: expected a header with columns path,label[,motion], got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise InputError(f"{csv_path}:{line}: empty path or label")
            rows.append((csv_path.parent / row["path"], row["label"]))
    if not rows:
        raise InputError(f"{csv_path}: no videos listed")
    return rows


def load_clips(rt: Runtime, data: Path | str, limit: int | None = None) -> list[LabelledClip]:
    """Decode the listed videos into model clips; labels must be the engine's class names."""
    spec = rt.manifest.model
    rows = read_list(data)
    if limit is not None:
        rows = rows[:limit]
    known = set(spec.labels)
    clips = []
    for path, label in rows:
        if label not in known:
            raise InputError(
                f"{path}: label {label!r} is not one of the engine's classes ({', '.join(spec.labels)}); "
                "was this engine trained on this data set?"
            )
        frames = [f.rgb for f in decode(path, spec.size, spec.resize_to)]
        picked = np.stack([frames[i] for i in sample_indices(len(frames), spec.frames)])
        clips.append(LabelledClip(path, label, picked))
    return clips


@dataclass
class WorkloadResult:
    """One way of serving the clips: per-clip latency, cost and correctness."""

    latency_ms: list[float]
    gflops: list[float]
    correct: list[bool]
    buckets: list[int]

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latency_ms))

    @property
    def mean_gflops(self) -> float:
        return float(np.mean(self.gflops))

    @property
    def accuracy(self) -> float:
        """Fraction correct; NaN for a replayed workload, whose clips carry no labels."""
        return float(np.mean(self.correct)) if self.correct else math.nan

    def to_dict(self, names: Sequence[str], percentiles: Sequence[float], samples: bool = True) -> dict[str, Any]:
        counts = Counter(self.buckets)
        out: dict[str, Any] = {
            "mean_ms": self.mean_ms,
            "latency": Stats.of(self.latency_ms, percentiles).to_dict(),
            "mean_gflops": self.mean_gflops,
            "accuracy": None if math.isnan(self.accuracy) else self.accuracy,
            "bucket_counts": {names[b]: counts[b] for b in sorted(counts)},
        }
        if samples:
            out["samples_ms"] = list(self.latency_ms)
        return out


@dataclass
class DynamicResult:
    """The dynamic workload against the static full engine on the same clips."""

    data: str
    clips: int
    dynamic: WorkloadResult
    full: WorkloadResult
    full_gflops: float  # gate + bucket 0

    @property
    def flops_fraction(self) -> float:
        """Mean GFLOPs of the dynamic path ÷ the static full path (the gate counted in both)."""
        return self.dynamic.mean_gflops / self.full_gflops

    @property
    def latency_fraction(self) -> float:
        return self.dynamic.mean_ms / self.full.mean_ms

    @property
    def drifted(self) -> bool:
        """Whether the machine's speed changed during the workload: the interleaved static full calls run the same
        engines on the same input every time, so their spread is the machine's, and the ratio below compares the
        two paths only when it is small (the dynamic calls' own spread is the bucket mix's)."""
        return Stats.of(self.full.latency_ms, []).cov_percent > UNSTABLE_COV_PERCENT

    @property
    def target_ratio(self) -> float:
        """Dynamic mean latency ÷ (its FLOPs fraction × the full mean latency); issue 7 wants ≤ 1.1."""
        return self.dynamic.mean_ms / (self.flops_fraction * self.full.mean_ms)

    def to_dict(self, names: Sequence[str], percentiles: Sequence[float], samples: bool = True) -> dict[str, Any]:
        return {
            "data": self.data,
            "clips": self.clips,
            "dynamic": self.dynamic.to_dict(names, percentiles, samples),
            "static_full": self.full.to_dict(names, percentiles, samples),
            "flops_fraction": self.flops_fraction,
            "latency_fraction": self.latency_fraction,
            "target_ratio": self.target_ratio,
            "drifted": self.drifted,
        }


def _timed_into(into: WorkloadResult, rt: Runtime, clip: np.ndarray, **kwargs: Any) -> Result:
    """One timed ``classify`` call, its latency, cost and bucket appended to ``into``."""
    t0 = time.perf_counter()
    result = rt.classify(clip, **kwargs)
    into.latency_ms.append((time.perf_counter() - t0) * 1e3)
    assert isinstance(result, Result)
    into.gflops.append(result.gflops)
    into.buckets.append(result.bucket)
    return result


def run_dynamic(
    rt: Runtime,
    clips: Sequence[LabelledClip],
    data: Path | str,
    *,
    warmup_ms: float = 200.0,
    progress: Callable[[str], None] | None = None,
) -> DynamicResult:
    """Classify every clip (``load_clips`` of ``data``, decoded before any timing so bad data fails early) twice,
    interleaved so drifts in machine load hit both alike: through the gate's choice, and with bucket 0 forced.
    Latency is the host wall time of each ``classify`` call (batch 1)."""
    if not clips:
        raise InputError(f"{data}: no clips for the dynamic workload")
    if progress is not None:
        progress(f"dynamic workload: {len(clips)} clips from {data}")
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        rt.classify(clips[0].clip)
        rt.classify(clips[0].clip, bucket=0)

    dynamic = WorkloadResult([], [], [], [])
    full = WorkloadResult([], [], [], [])
    for index, item in enumerate(clips, start=1):
        if progress is not None and index % 50 == 0:
            progress(f"  {index}/{len(clips)} clips")
        for kwargs, into in (({}, dynamic), ({"bucket": 0}, full)):
            result = _timed_into(into, rt, item.clip, **kwargs)
            into.correct.append(result.label == item.label)
    full_gflops = rt.manifest.gate.gflops + rt.manifest.buckets[0].gflops
    return DynamicResult(str(data), len(clips), dynamic, full, full_gflops)


#: The most clips a replay serves (a recording of 10**12 would build a list of that length).
MAX_REPLAY_CLIPS = 1_000_000


def recorded_buckets(bench_json: Path | str, rt: Runtime) -> list[int]:
    """The bucket mix of the dynamic workload in a ``vared2 bench --json`` file, as this engine's bucket ids
    (matched by policy, so the recording may come from a smaller model with the same bucket table)."""
    path = Path(bench_json)
    try:
        recorded = json.loads(path.read_text())
        counts = recorded["dynamic"]["dynamic"]["bucket_counts"]
        if not isinstance(counts, dict):
            raise TypeError
    except (OSError, ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{path}: not a readable vared2 bench JSON file ({error})") from None
    except (KeyError, TypeError):
        raise InputError(
            f"{path}: no dynamic workload recorded (expected dynamic.dynamic.bucket_counts, as "
            "`vared2 bench ENGINE_DIR --data DATA --json FILE` writes)"
        ) from None
    buckets = rt.manifest.buckets
    by_policy = {policy_string(b.policy): b.id for b in buckets} | {b.name: b.id for b in buckets}
    missing = sorted(set(counts) - set(by_policy))
    if missing:
        raise InputError(
            f"{path}: recorded buckets {missing} are not buckets of this engine (its policies: "
            f"{', '.join(policy_string(b.policy) for b in buckets)})"
        )
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()):
        raise InputError(f"{path}: bucket_counts must be non-negative integers, got {counts}")
    if not 0 < sum(counts.values()) <= MAX_REPLAY_CLIPS:  # a replay serves every recorded choice, one by one
        raise InputError(f"{path}: bucket_counts must total 1..{MAX_REPLAY_CLIPS} clips, got {sum(counts.values())}")
    return [by_policy[key] for key, n in counts.items() for _ in range(n)]


def run_replay(
    rt: Runtime,
    buckets: Sequence[int],
    source: Path | str,
    *,
    warmup_ms: float = 200.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> DynamicResult:
    """Serve a recorded bucket mix (one bucket id per clip, from ``recorded_buckets`` of the file ``source``) in a
    seeded random order, each call forcing its bucket, interleaved with bucket 0 forced. Clips are seeded random
    frames: latency does not depend on content, and the forced call still runs the gate engine, which computes the
    stem every bucket needs."""
    rng = np.random.default_rng(seed)
    order = [buckets[i] for i in rng.permutation(len(buckets))]
    spec = rt.manifest.model
    clip = rng.integers(0, 256, (spec.frames, spec.size, spec.size, 3), dtype=np.uint8)
    if progress is not None:
        progress(f"replayed workload: {len(order)} clips with the bucket mix of {source}")
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        rt.classify(clip, bucket=order[0])
        rt.classify(clip, bucket=0)
    dynamic = WorkloadResult([], [], [], [])
    full = WorkloadResult([], [], [], [])
    for bucket in order:
        for forced, into in ((bucket, dynamic), (0, full)):
            _timed_into(into, rt, clip, bucket=forced)
    full_gflops = rt.manifest.gate.gflops + rt.manifest.buckets[0].gflops
    return DynamicResult(f"replay:{source}", len(order), dynamic, full, full_gflops)
