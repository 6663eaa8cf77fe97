"""Proportional memory (PSS) of ONNX Runtime sessions: one bucket vs the gate and every bucket loaded at once.

Schemes, each measured in a fresh process (PSS from /proc/self/smaps_rollup, relative to the process
after importing numpy and onnxruntime):

* ``embedded``  — independent sessions on the exported ONNX files (weights inside each file)
* ``external``  — sessions on the engine files, ONNX Runtime loading ``weights.bin`` itself (external data)
* ``external+arena`` — the same, all sessions sharing one CPU arena (``session.use_env_allocators``)
* ``shared``    — sessions on the engine files with ``vared2.formats.sessions`` (one memory map,
  one ``OrtValue`` per tensor, handed to every session with ``add_initializer``)

Usage::

    python experiments/ort_memory.py --model r2plus1d_18            # full-width r2plus1d_18, random weights
    python experiments/ort_memory.py --onnx-dir ONNX_DIR [--engine-dir ENGINE_DIR]
    python experiments/ort_memory.py --toy                          # an onnx.helper stand-in of similar size
    ... [--optimization extended] [--levels]                          # --levels: latency per optimisation level
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMES = ("embedded", "external", "external+arena", "shared")
MIB = 1 << 20


def pss_bytes() -> int:
    """This process's proportional set size."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/smaps_rollup has no Pss line (Linux only)")


def child(scheme: str, onnx_dir: Path, engine_dir: Path, optimization: str, threads: int | None) -> dict[str, float]:
    """Runs in a fresh interpreter: load one session, then all of them, and report PSS deltas (MiB)."""
    import numpy as np
    import onnxruntime as ort

    from vared2.formats.export_spec import read_export_spec
    from vared2.formats.sessions import SharedWeights, register_shared_allocator, session_options

    spec = read_export_spec(onnx_dir)
    files = [spec["gate"]["file"], *(b["file"] for b in spec["buckets"])]
    base = pss_bytes()

    def load(file: str) -> ort.InferenceSession:
        options = session_options(optimization, threads, {})
        if scheme == "embedded":
            return ort.InferenceSession(str(onnx_dir / file), options, providers=["CPUExecutionProvider"])
        if scheme.startswith("external"):
            options.add_session_config_entry("session.disable_prepacking", "1")
            if scheme == "external+arena":
                register_shared_allocator()
                options.add_session_config_entry("session.use_env_allocators", "1")
            return ort.InferenceSession(str(engine_dir / file), options, providers=["CPUExecutionProvider"])
        options = SharedWeights.open(engine_dir).session_options_for(file, options)
        return ort.InferenceSession(str(engine_dir / file), options, providers=["CPUExecutionProvider"])

    def run(session: ort.InferenceSession) -> None:
        # One run per session: kernels allocate on first use, and touching the weights counts their pages.
        feed = {}
        for arg in session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in arg.shape]
            dtype = np.uint8 if arg.type == "tensor(uint8)" else np.float32
            feed[arg.name] = np.ones(shape, dtype)
        session.run(None, feed)

    sessions = [load(spec["buckets"][0]["file"])]
    run(sessions[0])
    one = pss_bytes()
    for file in files:
        if file != spec["buckets"][0]["file"]:
            sessions.append(load(file))
            run(sessions[-1])
    every = pss_bytes()
    return {"one": (one - base) / MIB, "all": (every - base) / MIB, "sessions": len(sessions)}


def measure(onnx_dir: Path, engine_dir: Path, optimization: str, threads: int | None) -> dict[str, dict[str, float]]:
    results = {}
    for scheme in SCHEMES:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            scheme,
            "--onnx-dir",
            str(onnx_dir),
            "--engine-dir",
            str(engine_dir),
        ]
        cmd += ["--optimization", optimization] + (["--threads", str(threads)] if threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[scheme] = json.loads(out.strip().splitlines()[-1])
    return results


def latency_by_level(onnx_dir: Path, engine_dir: Path, threads: int | None, rounds: int = 15) -> dict[str, float]:
    """Median latency (ms) of the full bucket, batch 1, at each optimisation level, shared weights.

    The levels take turns run by run, so a noisy neighbour on the machine slows them all alike.
    """
    import numpy as np
    import onnxruntime as ort

    from vared2.formats.export_spec import read_export_spec
    from vared2.formats.sessions import LEVELS, SharedWeights, session_options

    file = read_export_spec(onnx_dir)["buckets"][0]["file"]
    shared = SharedWeights.open(engine_dir)
    sessions = {}
    for level in LEVELS:
        options = shared.session_options_for(file, session_options(level, threads, {}))
        sessions[level] = ort.InferenceSession(str(engine_dir / file), options, providers=["CPUExecutionProvider"])
    arg = sessions["disabled"].get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in arg.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: dict[str, list[float]] = {level: [] for level in LEVELS}
    for round_ in range(rounds + 2):
        for level, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {arg.name: x})
            if round_ >= 2:  # two warm-up rounds
                times[level].append((time.perf_counter() - start) * 1e3)
    return {level: statistics.median(t) for level, t in times.items()}


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path, str]:
    """The exported ONNX directory and its engine directory (built here when not given)."""
    from vared2.engines.onnxruntime_engine import build_onnxruntime

    if args.onnx_dir:
        onnx_dir, what = Path(args.onnx_dir), str(args.onnx_dir)
    elif args.toy:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the toy model is a test fixture
        from ort_toy import write_toy_onnx_dir

        fractions = [(1, 1, 1, 1), (1, 1, 0.5, 0.5), (1, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.25), (0.5, 0.5, 0.25, 0.25)]
        onnx_dir = write_toy_onnx_dir(work / "onnx", widths=(64, 256, 512, 768, 768), fractions=fractions, size=8)
        what = "toy (onnx.helper, 5 buckets, ~122 MB of weights in the full bucket)"
    else:
        import torch

        from vared2 import models
        from vared2.export.onnx_export import export_model

        torch.manual_seed(0)
        model = getattr(models, args.model)(frames=args.frames, size=args.size, num_classes=args.classes)
        onnx_dir = work / "onnx"
        with torch.no_grad():
            export_model(model, onnx_dir)
        what = f"{args.model} (random weights, {args.frames}x{args.size}x{args.size}, {args.classes} classes)"
    if args.engine_dir:
        return onnx_dir, Path(args.engine_dir), what
    engine_dir = work / "engine"
    from vared2.formats.manifest import write_engine_dir

    write_engine_dir(engine_dir, lambda tmp: build_onnxruntime(onnx_dir, tmp, optimization=args.optimization))
    return onnx_dir, engine_dir, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx-dir")
    parser.add_argument("--engine-dir")
    parser.add_argument("--toy", action="store_true")
    parser.add_argument("--model", default="r2plus1d_18")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--optimization", default="extended")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--levels", action="store_true", help="also time the full bucket at each optimisation level")
    parser.add_argument("--work", help="keep the exported model and engines in this directory (default: temporary)")
    parser.add_argument("--skip-memory", action="store_true", help="only the --levels latency table")
    parser.add_argument("--child", choices=SCHEMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(child(args.child, Path(args.onnx_dir), Path(args.engine_dir), args.optimization, args.threads))
        )
        return
    with tempfile.TemporaryDirectory(prefix="vared2-ort-memory-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        if args.work and (work / "onnx" / "export.json").is_file() and not args.onnx_dir:
            args.onnx_dir = str(work / "onnx")  # reuse an earlier export
            if (work / "engine" / "manifest.json").is_file() and not args.engine_dir:
                args.engine_dir = str(work / "engine")
        onnx_dir, engine_dir, what = prepare(args, work)
        weights = (engine_dir / "weights.bin").stat().st_size / MIB
        print(f"model: {what}")
        print(
            f"onnxruntime {__import__('onnxruntime').__version__}, optimization={args.optimization}, "
            f"{os.cpu_count()} CPUs; weights.bin {weights:.1f} MiB"
        )
        results = {} if args.skip_memory else measure(onnx_dir, engine_dir, args.optimization, args.threads)
        print(f"{'scheme':<15} {'1 session (MiB)':>16} {'all sessions (MiB)':>19} {'sessions':>9} {'all / one':>10}")
        for scheme, r in results.items():
            ratio = r["all"] / r["one"] if r["one"] > 0 else float("nan")
            print(f"{scheme:<15} {r['one']:>16.1f} {r['all']:>19.1f} {int(r['sessions']):>9} {ratio:>10.2f}")
        if args.levels:
            print("full bucket, batch 1, median latency (ms) by optimisation level:")
            for level, ms in latency_by_level(onnx_dir, engine_dir, args.threads).items():
                print(f"  {level:<9} {ms:8.2f}")


if __name__ == "__main__":
    main()
