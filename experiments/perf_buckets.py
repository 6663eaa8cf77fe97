"""Per-bucket ONNX Runtime efficiency of r2plus1d_18 before and after the engine builder's graph rewrite, with
each bucket's convolution-only ceiling and a plain torchvision export as references — all timed interleaved.

    .venv/bin/python experiments/perf_buckets.py --work /tmp/perf [--threads 1] [--reps 15] [--frames 8 --size 112]

1. Exports ``r2plus1d_18`` (full width, random weights; BatchNorm statistics and cheap-op parameters randomised
   too, so every shift and filter is non-trivial) with ``vared2.export.export_model`` to ``WORK/onnx``.
2. Builds two ONNX Runtime engine directories from it: ``WORK/before`` (the exported graphs as they are,
   level ``extended``: the engines before docs/performance.md) and ``WORK/after`` (``build_engines``' defaults).
3. Builds, per bucket, the convolution-only graph of ``vared2.bench.ceiling`` (the partial convolutions alone),
   and a plain TorchScript export of torchvision's ``r2plus1d_18`` after the stem (features → logits, the same
   part of the network a bucket engine runs).
4. Opens every engine as the runtime does (``vared2.runtime.backends.OrtBackend``: shared weights, the manifest's
   level and session config) and times all variants interleaved: each repetition runs every (variant, bucket)
   once in a shuffled order; medians and interquartile ranges are reported.

Efficiency = FLOPs fraction ÷ latency fraction (vs the same variant's full bucket); ceiling = the same for the
convolution-only graphs. ``--json FILE`` writes every sample.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from vared2.bench.ceiling import conv_layers, conv_only_model
from vared2.bench.timing import measure_interleaved
from vared2.engines.build import build_engines, write_engine_dir
from vared2.engines.onnxruntime_engine import build_onnxruntime
from vared2.export.onnx_export import export_model
from vared2.formats.manifest import Manifest
from vared2.models import VaRed2VideoResNet, r2plus1d_18
from vared2.runtime.backends import OrtBackend, OrtEngine


def randomised_model(frames: int, size: int, seed: int = 0) -> VaRed2VideoResNet:
    """r2plus1d_18 with random weights and non-trivial BatchNorm statistics and cheap-op parameters."""
    torch.manual_seed(seed)
    model = r2plus1d_18(frames=frames, size=size)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.2, generator=g)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 2.0, generator=g)  # type: ignore[union-attr]
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0, 0.2, generator=g)
        for name, p in model.named_parameters():
            if "temporal_scale" in name:
                p.uniform_(0.5, 1.5, generator=g)
            elif "temporal_shift" in name or "channel_bias" in name:
                p.normal_(0, 0.1, generator=g)
            elif "channel_weight" in name:
                p.normal_(0, 0.3, generator=g)
    return model.eval()


def torchvision_trunk(path: Path, frames: int, size: int) -> Path:
    """torchvision's r2plus1d_18 after the stem (layer1 … fc), exported plainly (TorchScript exporter, opset 17,
    BatchNorm folded by the exporter, dynamic batch)."""
    from torchvision.models.video import r2plus1d_18 as tv_r2plus1d_18

    class Trunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tv = tv_r2plus1d_18(num_classes=400).eval()
            self.layers = torch.nn.Sequential(tv.layer1, tv.layer2, tv.layer3, tv.layer4, tv.avgpool)
            self.fc = tv.fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.layers(x).flatten(1))

    features = torch.randn(1, 64, frames, size // 2, size // 2)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Trunk(),
            (features,),
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=17,
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "N"}, "logits": {0: "N"}},
        )
    path.write_bytes(buffer.getvalue())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--variants", default="before,after", help="comma-separated subset of before,after")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this thread's CPU time (time.thread_time) — with --threads 1 ONNX Runtime runs every kernel on "
        "the calling thread, so time the scheduler gives to other processes on a shared machine is not counted",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread only: it needs --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    onnx_dir = work / "onnx"
    if not (onnx_dir / "export.json").is_file():
        export_model(randomised_model(args.frames, args.size), onnx_dir)
    variants = args.variants.split(",")
    if "before" in variants and not (work / "before" / "manifest.json").is_file():
        write_engine_dir(
            work / "before",
            lambda tmp: build_onnxruntime(onnx_dir, tmp, optimization="extended", rewrite=False, name="before"),
        )
    if "after" in variants:
        build_engines(onnx_dir, work / "after", progress=False)
    tv_path = work / "torchvision_trunk.onnx"
    if not tv_path.is_file():
        torchvision_trunk(tv_path, args.frames, args.size)

    rng = np.random.default_rng(0)
    manifest = Manifest.load(work / variants[-1])
    shape = [1, *json.loads((onnx_dir / "export.json").read_text())["gate"]["features_shape"]]
    features = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0)
    steps: dict[str, Callable[[], Any]] = {}
    keep: list[Any] = []
    for variant in variants:
        backend = OrtBackend(work / variant, Manifest.load(work / variant), threads=args.threads)
        keep.append(backend)
        for entry, engine in zip(manifest.buckets, backend.buckets, strict=True):
            steps[f"{variant}/{entry.id}"] = partial(engine.run, {"features": features}, ["logits"])
    level = manifest.build_options.get("optimization", "all")
    config = manifest.build_options.get("ort_session_config", {})
    tv = OrtEngine(tv_path, threads=args.threads, graph_optimization=level, session_config=config)
    steps["torchvision"] = lambda: tv.run({"features": features})
    tv_ext = OrtEngine(tv_path, threads=args.threads, graph_optimization="extended", session_config=config)
    steps["torchvision@extended"] = lambda: tv_ext.run({"features": features})
    conv_gflops: dict[int, float] = {}
    if not args.no_ceiling:
        for entry in manifest.buckets:
            layers = conv_layers(work / variants[-1] / entry.file, 1)
            conv_gflops[entry.id] = sum(layer.macs for layer in layers) / 1e9
            path = work / f"conv_only_{entry.id}.onnx"
            path.write_bytes(conv_only_model(layers).SerializeToString())
            engine = OrtEngine(path, threads=args.threads, graph_optimization=level, session_config=config)
            feeds = {
                f"x{i}": rng.standard_normal(layer.input_shape, dtype=np.float32) for i, layer in enumerate(layers)
            }
            steps[f"conv/{entry.id}"] = partial(engine.run, feeds)
            keep.append(engine)

    for step in steps.values():  # one warm-up round
        step()
    traces = measure_interleaved(list(steps.values()), warmup_ms=0, iterations=args.reps, duration_s=0, clock=clock)
    samples = {name: trace.samples["latency"] for name, trace in zip(steps, traces, strict=True)}
    median = {name: statistics.median(v) for name, v in samples.items()}
    iqr = {name: tuple(np.percentile(v, [25, 75])) for name, v in samples.items()}

    print(f"ONNX Runtime {ort.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"reps {args.reps}, clock {args.clock}, level of 'after' {level}")  # fmt: skip
    full = manifest.buckets[0]
    head = f"{'bucket':<22} {'GFLOPs':>7} {'frac':>6}"
    for variant in variants:
        head += f" | {variant + ' ms':>12} {'iqr':>15} {'eff':>5}"
    if conv_gflops:
        head += f" | {'conv ms':>8} {'ceiling':>7}" + "".join(f" {v + '/ceil':>11}" for v in variants)
    print(head)
    rows = []
    for entry in manifest.buckets:
        frac = entry.gflops / full.gflops
        line = f"{entry.name:<22} {entry.gflops:>7.2f} {frac:>6.3f}"
        row: dict[str, Any] = {"bucket": entry.id, "name": entry.name, "gflops": entry.gflops, "flops_fraction": frac}
        effs = {}
        for variant in variants:
            key = f"{variant}/{entry.id}"
            eff = frac / (median[key] / median[f"{variant}/0"])
            effs[variant] = eff
            line += f" | {median[key]:>12.1f} {iqr[key][0]:>7.1f}-{iqr[key][1]:<7.1f} {eff:>5.2f}"
            row[variant] = {"median_ms": median[key], "iqr_ms": list(iqr[key]), "efficiency": eff}
        if conv_gflops:
            cfrac = conv_gflops[entry.id] / conv_gflops[0]
            ceiling = cfrac / (median[f"conv/{entry.id}"] / median["conv/0"])
            line += f" | {median[f'conv/{entry.id}']:>8.1f} {ceiling:>7.2f}"
            line += "".join(f" {effs[v] / ceiling:>11.2f}" for v in variants)
            row["conv"] = {
                "median_ms": median[f"conv/{entry.id}"],
                "ceiling": ceiling,
                "conv_gflops": conv_gflops[entry.id],
            }
        rows.append(row)
        print(line)
    for name in ("torchvision", "torchvision@extended"):
        print(f"{name}: {median[name]:.1f} ms (iqr {iqr[name][0]:.1f}-{iqr[name][1]:.1f}); "
              + ", ".join(f"{v} full / {name} = {median[f'{v}/0'] / median[name]:.3f}" for v in variants))  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "samples": samples, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
