"""Interleaved A/B latency of ONNX files in ONNX Runtime, for a shared, noisy machine.

    .venv/bin/python bench/scripts/perf_ab.py A.onnx B.onnx@all C.onnx [--threads 1] [--reps 15] [--batch 1]
        [--clock wall|cpu]

Each argument is an ONNX file, optionally ``@level`` (disabled|basic|extended|all; default extended). Every
repetition runs each variant once, in a fresh random order, so load spikes hit all variants alike; the table
gives the median, the interquartile range and the median relative to the first variant. Sessions use the
runtime's options (sequential execution, intra-op spinning off). Inputs are random: a float input gets
``max(N(0,1), 0)`` (post-ReLU features), a uint8 input uniform bytes; dynamic axes take ``--batch``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vared2.bench.timing import measure_interleaved
from vared2.formats.sessions import DEFAULT_SESSION_CONFIG, session_options

CLOCK_HELP = "wall: elapsed time; cpu: the calling thread's CPU time (--threads 1), blind to other processes"


def session(path: str, level: str, threads: int) -> ort.InferenceSession:
    options = session_options(level, threads, DEFAULT_SESSION_CONFIG)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def feeds(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in arg.shape]
        if arg.type == "tensor(uint8)":
            out[arg.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[arg.name] = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)
    return out


def time_interleaved(
    variants: dict[str, tuple[ort.InferenceSession, dict[str, np.ndarray]]],
    reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Milliseconds per run of every variant: one warm-up round, then ``reps`` rounds in a shuffled order
    (``vared2.bench.timing.measure_interleaved``), on ``clock``."""
    steps = [partial(sess.run, None, feed) for sess, feed in variants.values()]
    for step in steps:
        step()
    traces = measure_interleaved(steps, warmup_ms=0, iterations=reps, duration_s=0, clock=clock)
    return {name: trace.samples["latency"] for name, trace in zip(variants, traces, strict=True)}


def report(samples: dict[str, list[float]]) -> None:
    first = statistics.median(next(iter(samples.values())))
    print(f"{'variant':<48} {'median ms':>10} {'q1':>8} {'q3':>8} {'vs first':>9}")
    for name, values in samples.items():
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        print(f"{name:<48} {med:>10.2f} {q1:>8.2f} {q3:>8.2f} {med / first:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help=CLOCK_HELP)
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread only: it needs --threads 1")
    variants = {}
    for spec in args.models:
        path, _, level = spec.partition("@")
        level = level or "extended"
        sess = session(path, level, args.threads)
        variants[f"{Path(path).parent.name}/{Path(path).name}@{level}"] = (sess, feeds(sess, args.batch))
    report(time_interleaved(variants, args.reps, time.thread_time if args.clock == "cpu" else time.perf_counter))


if __name__ == "__main__":
    main()
