"""Eager PyTorch latency of every bucket of a VA-RED2 model on the CPU (random weights, eval, no_grad).

    .venv/bin/python experiments/eager_latency.py [--backbone r2plus1d_18] [--frames 8] [--size 112] [--runs 10]

Prints, per bucket: name, GFLOPs (multiply-adds, analytic), fraction of full, and the median latency of ``runs``
timed forwards after ``warmup`` untimed ones (buckets interleaved) — how much of the FLOPs saving eager PyTorch
turns into time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from vared2.models import ModelConfig, build_model


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="r2plus1d_18", choices=["r3d_18", "mc3_18", "r2plus1d_18"])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per bucket")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per bucket (at least 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_model(ModelConfig(backbone=args.backbone, frames=args.frames, size=args.size)).eval()
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    print(
        f"# {args.backbone} {args.batch}x3x{args.frames}x{args.size}x{args.size}, eager, no_grad, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU: {cpu_name()} ({os.cpu_count()} cores), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"# {args.warmup} warm-up + {args.runs} timed runs per bucket, interleaved; latency = median")
    full = model.gflops(0)
    buckets = range(len(model.buckets))
    times: list[list[float]] = [[] for _ in buckets]
    cpu: list[list[float]] = [[] for _ in buckets]  # process CPU time, all threads: less sensitive to other load
    with torch.no_grad():
        for _ in range(args.warmup):
            for k in buckets:
                model(x, bucket=k)
        # Round-robin over the buckets, so a slow spell of the machine hits every bucket alike.
        for _ in range(args.runs):
            for k in buckets:
                start, start_cpu = time.perf_counter(), time.process_time()
                model(x, bucket=k)
                times[k].append(time.perf_counter() - start)
                cpu[k].append(time.process_time() - start_cpu)
    rows = [
        (bucket.name, model.gflops(k), statistics.median(times[k]), min(times[k]), statistics.median(cpu[k]))
        for k, bucket in enumerate(model.buckets)
    ]
    full_ms = rows[0][2] * 1e3
    full_cpu = rows[0][4]
    print(
        f"{'bucket':<22} {'GFLOPs':>7} {'FLOPs':>6} {'median ms':>10} {'min ms':>8} {'latency':>8} {'speedup':>8} "
        f"{'CPU ms':>8} {'CPU':>6}"
    )
    for name, gflops, median, fastest, cpu_time in rows:
        print(
            f"{name:<22} {gflops:>7.2f} {gflops / full:>6.3f} {median * 1e3:>10.1f} {fastest * 1e3:>8.1f} "
            f"{median * 1e3 / full_ms:>8.3f} {full_ms / (median * 1e3):>7.2f}x {cpu_time * 1e3:>8.1f} "
            f"{cpu_time / full_cpu:>6.3f}"
        )
    print("# latency = median / full median; CPU ms = median process CPU time (all threads), CPU = its fraction")
    print(f"# gate MLP: {model.gate_gflops() * 1e3:.4f} MFLOPs (MACs); stem included in every bucket above")
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
