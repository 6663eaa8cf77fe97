"""Load on the server tier: a bounded concurrency sweep over real clips, the Triton repository against the
in-process runtime, for a shared, noisy machine.

    .venv-triton/bin/python bench/scripts/triton_load.py ENGINE_DIR --data DATA_DIR \\
        [--clients 1,2,4,8] [--duration 10] [--rounds 3] [--instances 2] [--router-instances N] [--threads 1]
        [--max-queue-delay-us U] [--json FILE]

Three workloads at each concurrency C, one clip a call, C callers for ``--duration`` seconds:

* ``runtime``: ``Runtime.classify`` in this process from C threads (sessions with ``--threads`` threads);
* ``dynamic``: the repository ``vared2 triton`` writes, served by tritonserver on 127.0.0.1, C gRPC clients;
* ``full``: the same server, every request forced to the full bucket (request parameter ``bucket=0``).

Every round runs every (workload, C) cell once, in a fresh random order, so load spikes hit all alike; the
tables give per-cell medians over rounds with the min–max spread. Per cell: clips/s, latency p50/p90/p99
(trtexec's percentile rule), CPU ms a clip (the runtime: this process; the server: its whole process group,
read from /proc, and the client's separately), mean batch per model (Triton's statistics endpoint) and the
bucket histogram. ``--server HOST:PORT`` measures a server already running instead (gRPC; no server CPU then).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vared2.bench.dynamic import load_clips
from vared2.bench.stats import percentile
from vared2.runtime import Result, Runtime
from vared2.serve import RepositoryOptions, TritonServer, write_repository
from vared2.serve.server import group_members, process_role

WORKLOADS = ("runtime", "dynamic", "full")
TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> dict[str, float]:
    """User + system CPU seconds of the live processes in group ``pgid``, by ``process_role``."""
    total: dict[str, float] = {}
    for pid in group_members(pgid):
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            role = process_role(pid)
            total[role] = total.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return total


def model_counts(client: Any) -> dict[str, tuple[int, int]]:
    """``model → (inferences, executions)`` from Triton's statistics endpoint."""
    stats = client.get_inference_statistics(as_json=True)
    return {
        s["name"]: (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)))
        for s in stats.get("model_stats", [])
    }


def run_cell(call: Callable[[int, int], tuple[int, int]], clients: int, duration: float) -> dict[str, Any]:
    """``clients`` threads calling ``call(worker, i)`` (→ (bucket, clips)) until ``duration`` is up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    buckets: list[Counter[int]] = [Counter() for _ in range(clients)]
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + duration

    def worker(k: int) -> None:
        i = k * 7919
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                bucket, _ = call(k, i)
                latencies[k].append((time.perf_counter() - t0) * 1e3)
                buckets[k][bucket] += 1
                i += 1
        except Exception as error:  # reported, and the cell fails loudly
            errors.append(f"client {k}: {error!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError("; ".join(errors))
    every = [x for lat in latencies for x in lat]
    histogram: Counter[int] = sum(buckets, Counter())
    return {
        "clips": len(every),
        "seconds": elapsed,
        "clips_per_s": len(every) / elapsed,
        "p50_ms": percentile(every, 50),
        "p90_ms": percentile(every, 90),
        "p99_ms": percentile(every, 99),
        "buckets": {str(b): n for b, n in sorted(histogram.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="videos (a directory with val.csv, or a CSV)")
    parser.add_argument("--clips", type=int, default=128, help="decode this many videos of --data")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=2, help="instances of each engine model")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per session (both sides)")
    parser.add_argument("--router-instances", type=int, default=None, help="default: 2 x --instances")
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--server", help="a running server's gRPC HOST:PORT (model vared2 of these engines)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    concurrency = [int(c) for c in args.clients.split(",")]
    if not concurrency or min(concurrency) < 1 or max(concurrency) > 64:
        parser.error("--clients: between 1 and 64 clients")

    import tritonclient.grpc as grpc

    runtime = Runtime.open(args.engine_dir, threads=args.threads)
    clips = np.stack([c.clip for c in load_clips(runtime, args.data, args.clips)])
    with contextlib.ExitStack() as stack:
        server: TritonServer | None = None
        url = args.server
        if url is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vared2-load-")))
            options = RepositoryOptions(
                instances=args.instances,
                router_instances=args.router_instances,
                threads=args.threads,
                max_queue_delay_us=args.max_queue_delay_us,
            )
            repo = write_repository(args.engine_dir, work / "repo", options)
            server = stack.enter_context(TritonServer(repo))
            url = server.grpc_url
        pool = [grpc.InferenceServerClient(url) for _ in range(max(concurrency))]
        for c in pool:
            stack.callback(c.close)

        def served(parameters: dict[str, Any] | None) -> Callable[[int, int], tuple[int, int]]:
            def call(k: int, i: int) -> tuple[int, int]:
                tensor = grpc.InferInput("clip", [1, *clips.shape[1:]], "UINT8")
                tensor.set_data_from_numpy(clips[i % len(clips)][None])
                result = pool[k].infer("vared2", [tensor], parameters=parameters)
                return int(result.as_numpy("bucket")[0, 0]), 1

            return call

        def local(k: int, i: int) -> tuple[int, int]:
            r = runtime.classify(clips[i % len(clips)])
            assert isinstance(r, Result)
            return r.bucket, 1

        calls = {"runtime": local, "dynamic": served(None), "full": served({"bucket": 0})}
        for call in calls.values():  # warm-up: every session and server instance once
            run_cell(call, max(concurrency), 1.0)
        cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
        rng = random.Random(0)
        for round_ in range(args.rounds):
            order = [(w, c) for w in WORKLOADS for c in concurrency]
            rng.shuffle(order)
            for workload, c in order:
                counts = model_counts(pool[0])
                cpu0 = group_cpu_seconds(server.process.pid) if server and server.process else {}
                client0 = time.process_time()
                cell = run_cell(calls[workload], c, args.duration)
                client_cpu = time.process_time() - client0
                if workload == "runtime":
                    cell["cpu_ms_per_clip"] = client_cpu * 1e3 / cell["clips"]
                else:
                    if server and server.process:
                        cpu = group_cpu_seconds(server.process.pid)
                        by_role = {k: (v - cpu0.get(k, 0.0)) * 1e3 / cell["clips"] for k, v in sorted(cpu.items())}
                        cell["cpu_ms_per_clip"] = sum(by_role.values())
                        cell["cpu_ms_per_clip_by_process"] = by_role
                    cell["client_cpu_ms_per_clip"] = client_cpu * 1e3 / cell["clips"]
                    after = model_counts(pool[0])
                    cell["mean_batch"] = {
                        m: (after[m][0] - counts.get(m, (0, 0))[0]) / max(1, after[m][1] - counts.get(m, (0, 0))[1])
                        for m in sorted(after)
                        if after[m][1] > counts.get(m, (0, 0))[1]
                    }
                cells.setdefault((workload, c), []).append(cell)
                print(f"round {round_ + 1} {workload:8s} C={c}: {cell['clips_per_s']:7.1f} clips/s", flush=True)

    report(cells, concurrency, args)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


Cells = dict[tuple[str, int], list[dict[str, Any]]]


def report(cells: Cells, concurrency: list[int], args: argparse.Namespace) -> None:
    print(f"\n{args.rounds} rounds x {args.duration:g} s a cell; median (min–max) over rounds")
    print("workload  C  clips/s              p50 ms          p90 ms          p99 ms          CPU ms/clip")
    for workload in WORKLOADS:
        for c in concurrency:
            runs = cells[(workload, c)]
            cpu = [r["cpu_ms_per_clip"] for r in runs if "cpu_ms_per_clip" in r]
            line = f"{workload:8s} {c:2d}  {spread([r['clips_per_s'] for r in runs]):20s}"
            for key in ("p50_ms", "p90_ms", "p99_ms"):
                line += f" {spread([r[key] for r in runs]):15s}"
            line += f" {spread(cpu) if cpu else 'n/a'}"
            print(line)
    print("\nmean batch per model (median over rounds) and bucket histogram (all rounds)")
    for workload in ("dynamic", "full"):
        for c in concurrency:
            runs = cells[(workload, c)]
            models = sorted({m for r in runs for m in r.get("mean_batch", {})})
            batches = ", ".join(
                f"{m} {statistics.median([r['mean_batch'][m] for r in runs if m in r['mean_batch']]):.2f}"
                for m in models
            )
            histogram: Counter[str] = Counter()
            for r in runs:
                histogram.update(r["buckets"])
            total = sum(histogram.values())
            mix = ", ".join(f"bucket {b}: {100 * n / total:.0f} %" for b, n in sorted(histogram.items()))
            client = statistics.median([r["client_cpu_ms_per_clip"] for r in runs])
            print(f"{workload:8s} C={c}: {batches}; {mix}; client CPU {client:.2f} ms/clip")
            roles = sorted({k for r in runs for k in r.get("cpu_ms_per_clip_by_process", {})})
            if roles:
                parts = [
                    f"{k} {statistics.median([r['cpu_ms_per_clip_by_process'].get(k, 0.0) for r in runs]):.2f}"
                    for k in roles
                ]
                print(f"{'':8s}       server CPU ms/clip by process: {', '.join(parts)}")

    def rate(workload: str, c: int) -> float:
        return statistics.median([r["clips_per_s"] for r in cells[(workload, c)]])

    best = {w: max(rate(w, c) for c in concurrency) for w in WORKLOADS}
    top = max(concurrency)
    at_top = {w: rate(w, top) for w in WORKLOADS}
    cpu_runtime = statistics.median([r["cpu_ms_per_clip"] for c in concurrency for r in cells[("runtime", c)]])
    server_cpu = [r["cpu_ms_per_clip"] for c in concurrency for r in cells[("dynamic", c)] if "cpu_ms_per_clip" in r]
    print("\ntargets (issue 25)")
    if server_cpu:
        ratio = statistics.median(server_cpu) / cpu_runtime
        print(f"  server CPU a clip / in-process runtime's: {ratio:.2f} (target <= 1.15)")
    print(f"  dynamic at {top} clients / in-process best: {at_top['dynamic'] / best['runtime']:.2f} (target >= 0.9)")
    print(f"  dynamic / forced full at {top} clients: {at_top['dynamic'] / at_top['full']:.2f} (target >= 1.15)")
    if args.json:
        out = {f"{w}@{c}": runs for (w, c), runs in cells.items()}
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cells": out}, indent=1))


if __name__ == "__main__":
    main()
