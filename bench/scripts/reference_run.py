"""The issue-7 reference run: full-width r2plus1d_18 (random weights) at 8×112×112 on ONNX Runtime, and the demo
engines when they exist. Results go to ``--out`` (JSON, latency tables, plots, op profiles) for docs/benchmarks.md.

    .venv/bin/python bench/scripts/reference_run.py [--out artifacts/bench/reference] [--threads 2]
        [--warmup 200] [--iterations 10] [--duration 3] [--data artifacts/data/synth8] [--clips N]

Steps: bench the demo engines (with the dynamic workload on ``--data``); export and build r2plus1d_18 afresh; bench
it with the demo's bucket mix replayed; time a plain torchvision export against the static full path; profile the
bucket furthest below its ceiling and the full bucket (docs/benchmarks.md, "Reference run").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vared2.bench import BenchReport, measure, run_bench, summary_lines
from vared2.bench.profile import profile_bucket
from vared2.bench.report import accuracy_text
from vared2.bench.run import host_info
from vared2.runtime import Runtime
from vared2.runtime.backends import OrtEngine

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "artifacts" / "engines" / "demo"


def export_reference(onnx_dir: Path, frames: int, size: int) -> None:
    """Full-width r2plus1d_18, random weights (seed 0); the engine build is a no-op when the ONNX is unchanged."""
    import torch

    from vared2.export.onnx_export import export_model
    from vared2.models import ModelConfig, build_model
    from vared2.models.synthetic import CLASSES

    torch.manual_seed(0)
    config = ModelConfig(backbone="r2plus1d_18", frames=frames, size=size, num_classes=len(CLASSES), labels=CLASSES)
    export_model(build_model(config), onnx_dir)


def export_torchvision(path: Path, frames: int, size: int) -> None:
    """``torchvision.models.video.r2plus1d_18()`` (random weights, 400 classes) as plain ONNX, opset 17."""
    if path.is_file():
        return
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.video.r2plus1d_18().eval()
    x = torch.randn(1, 3, frames, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )


def baseline(
    engine_dir: Path, plain: Path, threads: int | None, timing: dict[str, Any], frames: int, size: int
) -> dict[str, Any]:
    """Plain torchvision export vs the static full path, all timed trtexec-style in this process."""
    rt = Runtime.open(engine_dir, threads=threads)
    manifest = rt.manifest
    level = manifest.build_options.get("optimization", "all")
    config = manifest.build_options.get("ort_session_config", {})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, frames, size, size), dtype=np.float32)
    clip = rng.integers(0, 256, (1, frames, size, size, 3), np.uint8)
    results: dict[str, Any] = {}

    def run(name: str, step: Any) -> None:
        trace = measure(step, **timing)
        print(f"\n--- {name} ---")
        print("\n".join(summary_lines(trace)))
        results[name] = trace.to_dict(samples=True)

    same = OrtEngine(plain, threads=threads, graph_optimization=level, session_config=config)
    default = OrtEngine(plain, threads=threads, graph_optimization="all", session_config={})

    def discard(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A step for ``measure``: call ``fn`` and drop its result (a step returns None or device phase times)."""

        def step() -> None:
            fn(*args, **kwargs)

        return step

    run("torchvision plain export, engine session options", discard(same.run, {"x": x}))
    run("torchvision plain export, ORT defaults (level all, prepacking on)", discard(default.run, {"x": x}))
    run("static full path: Runtime.classify(clip, bucket=0)", discard(rt.classify, clip, bucket=0))
    rt.close()
    return results


def profile(engine_dir: Path, report: BenchReport, threads: int | None, out: Path) -> dict[str, Any]:
    """Per-op-type time of the bucket furthest below its ceiling (or least efficient) and of the full bucket."""
    worst = min(report.buckets[1:], key=lambda b: b.of_ceiling if b.of_ceiling is not None else b.efficiency)
    profiles = {}
    for bucket in (worst, report.buckets[0]):
        p = profile_bucket(engine_dir, bucket.id, runs=5, threads=threads)
        print(f"\n--- ONNX Runtime profile, bucket {bucket.id} ({bucket.name}), mean of 5 runs ---")
        print(p.table())
        profiles[bucket.name] = p.to_dict()
    (out / "profile.json").write_text(json.dumps({"worst": worst.name, "profiles": profiles}, indent=2) + "\n")
    return profiles


def markdown(report: BenchReport) -> str:
    """The efficiency table as Markdown, for docs/benchmarks.md."""
    rows = [
        "| id | bucket | GFLOPs | FLOPs | median ms | p90 ms | CoV | speedup | efficiency | eff. (engine) "
        "| ceiling | eff./ceiling |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in report.buckets:
        ceiling = "–" if b.ceiling is None else f"{b.ceiling:.2f}"
        of = "–" if b.of_ceiling is None else f"{b.of_ceiling:.2f}"
        rows.append(
            f"| {b.id} | `{b.name}` | {b.gflops:.2f} | {b.flops_fraction:.1%} | {b.median_ms:.1f} "
            f"| {b.trace.latency.percentile(90):.1f} | {b.trace.latency.cov_percent:.1f} % | {b.speedup:.2f}× "
            f"| {b.efficiency:.2f} | {b.engine_efficiency:.2f} | {ceiling} | {of} |"
        )
    gate = report.gate.latency
    rows.append(f"\ngate: median {gate.median:.2f} ms = {report.gate_fraction:.2%} of the full bucket")
    if report.dynamic is not None:
        d = report.dynamic
        rows += [
            "",
            "| workload | clips | mean ms | mean GFLOPs | accuracy |",
            "|---|---:|---:|---:|---:|",
            f"| dynamic ({'replayed mix' if d.data.startswith('replay:') else 'gate + chosen bucket'}) | {d.clips} "
            f"| {d.dynamic.mean_ms:.1f} | {d.dynamic.mean_gflops:.2f} | {accuracy_text(d.dynamic.accuracy, 1)} |",
            f"| static full (bucket 0 forced) | {d.clips} | {d.full.mean_ms:.1f} | {d.full.mean_gflops:.2f} "
            f"| {accuracy_text(d.full.accuracy, 1)} |",
            f"\nFLOPs fraction {d.flops_fraction:.3f}; mean latency ÷ (FLOPs fraction × full) = {d.target_ratio:.3f}",
        ]
    return "\n".join(rows)


def bench_one(
    name: str,
    engine_dir: Path,
    out: Path,
    args: argparse.Namespace,
    timing: dict[str, Any],
    data: Path | None,
    replay: Path | None = None,
) -> BenchReport:
    out.mkdir(parents=True, exist_ok=True)
    print(f"\n\n######## {name}: {engine_dir} ########  load average {os.getloadavg()}")
    report = run_bench(
        engine_dir,
        warmup_ms=timing["warmup_ms"],
        iterations=timing["iterations"],
        duration_s=timing["duration_s"],
        percentiles=(90, 95, 99),
        batch=1,
        json_path=out / "bench.json",
        latency_table=out / "latency_table.json",
        plot=out / "latency_vs_gflops.png",
        data=data,
        replay=replay,
        threads=args.threads,
        clips=None if data is None else args.clips,
    )
    profile(engine_dir, report, args.threads, out)
    (out / "table.md").write_text(markdown(report) + "\n")
    print("\n" + markdown(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench" / "reference")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=float, default=200.0, help="ms")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3.0, help="s")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--data", type=Path, default=None, help="synthetic data (default: artifacts/data/synth*)")
    parser.add_argument("--clips", type=int, default=None, help="videos of the dynamic workload (default: all)")
    parser.add_argument("--skip-reference", action="store_true", help="only the demo engines")
    args = parser.parse_args()

    data = args.data
    if data is None:
        found = sorted((ROOT / "artifacts" / "data").glob("synth*/val.csv"))
        data = found[0].parent if found else None
    timing = {"warmup_ms": args.warmup, "iterations": args.iterations, "duration_s": args.duration}
    print(f"host: {json.dumps(host_info())}; threads {args.threads}; timing {timing}; data {data}")

    summary: dict[str, Any] = {"host": host_info(), "threads": args.threads, "timing": timing, "data": str(data)}
    recorded: Path | None = None
    if DEMO.is_dir():
        bench_one("demo", DEMO, args.out / "demo", args, timing, data)
        summary["demo"] = str(DEMO)
        recorded = args.out / "demo" / "bench.json" if data is not None else None
    else:
        print(f"\n{DEMO}: no demo engines; skipped")
    if not args.skip_reference:
        from vared2.engines.build import build_engines

        out = args.out / "r2plus1d_18"
        onnx_dir, engine_dir = out / "onnx", out / "engines"
        export_reference(onnx_dir, args.frames, args.size)
        build_engines(onnx_dir, engine_dir, progress=False)
        report = bench_one("r2plus1d_18 reference", engine_dir, out, args, timing, None, replay=recorded)
        plain = out / "torchvision_r2plus1d_18.onnx"
        export_torchvision(plain, args.frames, args.size)
        base = baseline(engine_dir, plain, args.threads, timing, args.frames, args.size)
        (out / "baseline.json").write_text(json.dumps(base, indent=2) + "\n")
        full_path = base["static full path: Runtime.classify(clip, bucket=0)"]["latency"]["median"]
        plain_ms = base["torchvision plain export, engine session options"]["latency"]["median"]
        summary["reference"] = {
            "bucket0_median_ms": report.full.median_ms,
            "static_full_path_median_ms": full_path,
            "torchvision_plain_median_ms": plain_ms,
            "full_path_over_plain": full_path / plain_ms,
            "bucket0_over_plain": report.full.median_ms / plain_ms,
        }
        print(f"\nfull path ÷ plain torchvision export: {full_path / plain_ms:.3f} (bucket 0 alone: "
              f"{report.full.median_ms / plain_ms:.3f})")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
