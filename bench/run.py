"""``vared2 bench ENGINE_DIR``: trtexec-style timing of the gate and of every bucket engine alone, the efficiency
table with each bucket's ceiling, and optionally the dynamic workload (DESIGN.md §7, issue 7)."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from vared2.formats.errors import InputError, InputNotFoundError, MissingExtraError
from vared2.formats.outputs import PLOT_SUFFIXES, check_output_file
from vared2.runtime import Runtime

from .ceiling import conv_layers, measure_ceilings
from .dynamic import load_clips, policy_string, recorded_buckets, run_dynamic, run_replay
from .report import BenchReport, BucketResult, write_json, write_latency_table, write_plot
from .stats import DEFAULT_PERCENTILES, parse_percentiles
from .stem import measure_gate_split
from .timing import TimingSettings, Trace, check_settings, measure, summary_lines

#: Seed of the random clip the gate and (through the gate's features) the buckets are timed on.
SEED = 0


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def run_bench(
    engine_dir: str | os.PathLike[str],
    *,
    warmup_ms: float = 200.0,
    iterations: int = 10,
    duration_s: float = 3.0,
    percentiles: str | Sequence[float] = DEFAULT_PERCENTILES,
    batch: int = 1,
    json_path: str | os.PathLike[str] | None = None,
    latency_table: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    replay: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    out: TextIO | None = None,
    ceiling: bool = True,
    clips: int | None = None,
    verify: bool = True,
    shared_thread_pool: bool = False,
) -> BenchReport:
    """Benchmark an engine directory and print trtexec-style summaries and the efficiency table to ``out``.

    The gate runs on a seeded random uint8 clip batch of ``batch``; each bucket engine runs alone on the gate's
    ``features`` for it. ``ceiling`` (ONNX Runtime engines; needs ``onnx``) times each bucket's convolutions alone.
    ``data`` (a directory with ``val.csv``, or a CSV) adds the dynamic workload over its first ``clips`` videos.
    ``replay`` (a ``--json`` file of a bench with a dynamic workload) serves that run's bucket mix instead.
    ``json_path``, ``latency_table`` and ``plot`` name files to write. ``shared_thread_pool`` runs every session,
    the ceilings' too, on one process-wide ONNX Runtime pool (``vared2.runtime.thread_pool``).
    """
    out = sys.stdout if out is None else out
    engine_dir = Path(engine_dir)
    check_settings(warmup_ms, iterations, duration_s, batch)
    pcts = parse_percentiles(percentiles)
    if clips is not None and (isinstance(clips, bool) or not isinstance(clips, int) or clips < 1):
        raise InputError(f"--clips: expected an integer >= 1, got {clips!r}")
    if data is not None and not Path(data).exists():
        raise InputNotFoundError(f"{data}: no such data directory or CSV file (--data)")
    if replay is not None and data is not None:
        raise InputError("--replay and --data are two ways to choose the dynamic workload; give one")
    if replay is not None and clips is not None:  # it used to be ignored while the JSON recorded it
        raise InputError("--clips takes the first N videos of --data; a --replay serves its whole recorded mix")
    if replay is not None and not Path(replay).is_file():
        raise InputNotFoundError(f"{replay}: no such bench JSON file (--replay)")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise MissingExtraError("--plot", "plot", "matplotlib")
    # Where the results go is checked now, not after minutes of timing (issue 27).
    for option, target, suffixes in (
        ("--json", json_path, None),
        ("--latency-table", latency_table, None),
        ("--plot", plot, PLOT_SUFFIXES),
    ):
        if target is not None:
            check_output_file(target, option, suffixes=suffixes)
    load_before = _load_average()

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    rt = Runtime.open(engine_dir, threads=threads, verify=verify, shared_thread_pool=shared_thread_pool)
    try:
        manifest = rt.manifest
        # A bad recording fails here, before minutes of timing.
        replayed = recorded_buckets(Path(replay), rt) if replay is not None else None
        # So do unreadable videos and unknown labels: the workload is decoded before any timing.
        workload = load_clips(rt, Path(data), clips) if data is not None else None
        if batch > manifest.max_batch:
            raise InputError(f"--batch: {batch} exceeds the engines' max batch {manifest.max_batch} (manifest.json)")
        device = manifest.backend == "tensorrt"
        settings = {
            "warmup_ms": warmup_ms,
            "iterations": iterations,
            "duration_s": duration_s,
            "percentiles": list(pcts),
            "batch": batch,
            "threads": threads,
            "shared_thread_pool": shared_thread_pool,
            "data": None if data is None else str(data),
            "replay": None if replay is None else str(replay),
            "clips": clips,
            "seed": SEED,
        }
        engine = {
            "name": manifest.name,
            "backend": manifest.backend,
            "backend_version": manifest.backend_version,
            "precision": manifest.precision,
            "device": manifest.device,
            "max_batch": manifest.max_batch,
            "optimization": manifest.build_options.get("optimization"),
        }
        backend = f"{manifest.backend} {manifest.backend_version}"
        say(f"=== {manifest.name}: {backend}, {manifest.precision}, batch {batch} ===")
        pool = ", one shared thread pool" if shared_thread_pool else ""
        cpus = f"{os.cpu_count()} logical CPUs, threads {threads or 'default'}{pool}"
        say(f"Host: {cpu_model()}, {cpus}, load {load_before}")
        say(f"Warmup: {warmup_ms:g} ms, iterations: {iterations}, duration: {duration_s:g} s")

        def timed(step: Any) -> Trace:
            return measure(
                step, warmup_ms=warmup_ms, iterations=iterations, duration_s=duration_s, batch=batch, percentiles=pcts
            )

        def report(title: str, trace: Trace) -> None:
            say()
            say(f"--- {title} ---")
            for line in summary_lines(trace):
                say(line)

        spec = manifest.model
        clip = np.random.default_rng(SEED).integers(0, 256, (batch, spec.frames, spec.size, spec.size, 3), np.uint8)
        rows = np.arange(batch)
        with rt.backend.session() as session:
            # TensorRT: the worker's CUDA-event hooks; ONNX Runtime: the serving calls, timed on the host.
            gate_out = session.run_gate(clip)

            def gate_step() -> dict[str, float] | None:
                if device:
                    return session.time_gate(clip)[1]  # type: ignore[attr-defined]
                session.run_gate(clip)
                return None

            gate_trace = timed(gate_step)
            report(f"gate: uint8 clip {list(clip.shape)} → features + bucket logits", gate_trace)
            traces: list[Trace] = []
            for entry in manifest.buckets:

                def bucket_step(b: int = entry.id) -> dict[str, float] | None:
                    if device:
                        return session.time_bucket(b, gate_out)  # type: ignore[attr-defined]
                    session.run_bucket(b, gate_out, rows)
                    return None

                trace = timed(bucket_step)
                traces.append(trace)
                label = f"{entry.short_name} ({entry.name})" if entry.short_name else entry.name
                report(f"bucket {entry.id}: {label}, {entry.gflops:.4g} GFLOPs", trace)

        full = manifest.buckets[0]
        buckets = [
            BucketResult(
                e.id, e.name, e.policy, e.gflops, t, full.gflops, traces[0].latency.median, short_name=e.short_name
            )
            for e, t in zip(manifest.buckets, traces, strict=True)
        ]
        note = None
        split = None
        if ceiling:
            timing = TimingSettings(warmup_ms, iterations, duration_s, tuple(pcts))
            note = _ceilings(rt, buckets, engine_dir, batch, threads, shared_thread_pool, timing, say)
            if note is None:  # ONNX Runtime engines and onnx importable: the gate's stem can be timed alone too
                say("--- gate split: the gate and its stem alone (the graph pruned to features), interleaved ---")
                split = measure_gate_split(
                    engine_dir, manifest, clip, threads=threads, shared_thread_pool=shared_thread_pool, timing=timing
                )
        else:
            note = "not measured (ceiling disabled)"
        result = BenchReport(
            engine_dir=str(engine_dir),
            engine=engine,
            host=host_info(),
            settings=settings,
            gate=gate_trace,
            gate_gflops=manifest.gate.gflops,
            buckets=buckets,
            ceiling_note=note,
            gate_split=split,
        )
        if workload is not None:
            say()
            result.dynamic = run_dynamic(rt, workload, str(data), warmup_ms=warmup_ms, progress=say)
        elif replayed is not None:
            say()
            result.dynamic = run_replay(rt, replayed, str(replay), warmup_ms=warmup_ms, seed=SEED, progress=say)
    finally:
        rt.close()
    result.load_average = {"before": load_before, "after": _load_average()}

    say()
    say("=== Efficiency (median latency; efficiency = FLOPs fraction ÷ latency fraction) ===")
    say(result.table())
    for name in result.unstable:
        say(f"[W] {name}: unstable timing (coefficient of variance above 2.5 %)")
    if json_path is not None:
        say(f"JSON: {write_json(result, Path(json_path))}")
    if latency_table is not None:
        say(f"Latency table: {write_latency_table(result, Path(latency_table))}")
    if plot is not None:
        say(f"Plot: {write_plot(result, Path(plot))}")
    return result


def _ceilings(
    rt: Runtime,
    buckets: list[BucketResult],
    engine_dir: Path,
    batch: int,
    threads: int | None,
    shared_thread_pool: bool,
    timing: TimingSettings,
    say: Any,
) -> str | None:
    """Measure and attach each bucket's ceiling; a note instead when it cannot be measured here."""
    if rt.manifest.backend != "onnxruntime":
        return f"not measured: the ceiling uses ONNX Runtime graphs, these are {rt.manifest.backend} engines"
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "not measured: needs the onnx package (pip install onnx)"
    say()
    started = time.perf_counter()
    results = measure_ceilings(
        engine_dir,
        rt.manifest,
        batch=batch,
        threads=threads,
        shared_thread_pool=shared_thread_pool,
        timing=timing,
        progress=lambda text: say(f"--- ceiling: {text} ---"),
    )
    for b, r in zip(buckets, results, strict=True):
        b.conv_only = r
    stem = stem_in_buckets(engine_dir / rt.manifest.gate.file, rt.manifest.buckets[0].gflops, results[0].gflops)
    for b in buckets:
        b.stem_gflops = stem
    medians = [f"{policy_string(b.policy)} {b.conv_only.trace.latency.median:.3f} ms" for b in buckets if b.conv_only]
    say(f"Conv-only graph medians: {', '.join(medians)} ({time.perf_counter() - started:.1f} s)")
    return None


def stem_in_buckets(gate_file: Path, manifest_full_gflops: float, full_conv_gflops: float) -> float:
    """The stem's GFLOPs if the manifest's bucket GFLOPs count it, else 0.

    The stem runs in the gate engine (its output is ``features``), but ``vared2.models`` counts it in every
    bucket's GFLOPs. The gate graph's convolutions are the stem; the manifest counts it when its full-bucket figure
    is closer to the full bucket's own convolutions *plus* the stem than to them alone. The figure returned is the
    model's count (the manifest's full bucket less its own convolutions), not what the gate engine executes: the
    ONNX Runtime builder may pad the stem's channels or compute rows no frame uses (``vared2.engines.ort_stacked``).
    """
    try:
        executed = sum(layer.macs for layer in conv_layers(gate_file, batch=1)) / 1e9
    except ValueError:  # a gate without convolutions: nothing to account for
        return 0.0
    counted = manifest_full_gflops - full_conv_gflops
    return counted if abs(counted - executed) < abs(counted) else 0.0
