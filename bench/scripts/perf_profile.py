"""Where each bucket's time goes: ONNX Runtime's profiler, totals per op type, for every bucket of an engine dir.

    .venv/bin/python bench/scripts/perf_profile.py ENGINE_DIR [--threads 1] [--runs 3] [--buckets 0,5]

Sessions are set up as the runtime sets them up (``vared2.bench.profile.profile_bucket``: the manifest's
optimisation level and session config, the shared weights). Prints one table per bucket (op type, nodes,
ms per run, share) and, with ``--optimized DIR``, writes each bucket's ORT-optimised graph there so fusions can
be inspected (``SessionOptions.optimized_model_filepath``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vared2.bench.profile import profile_bucket
from vared2.formats.manifest import Manifest


def write_optimized(engine_dir: Path, file: str, level: str, out: Path, threads: int) -> Path:
    """The graph ONNX Runtime actually runs for ``file`` (functions inlined, fusions applied)."""
    from vared2.formats.sessions import SharedWeights, open_session

    manifest = Manifest.load(engine_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / file

    def save_optimized(options: Any) -> None:
        options.optimized_model_filepath = str(path)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{file}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")

    weights = None if manifest.weights is None else SharedWeights.open(engine_dir, manifest.weights.file)
    open_session(engine_dir / file, level=level, threads=threads, weights=weights, configure=save_optimized)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--buckets", default="", help="comma-separated bucket ids (default: all)")
    parser.add_argument("--optimized", type=Path, default=None, help="write the ORT-optimised graphs here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    manifest = Manifest.load(args.engine_dir)
    ids = [int(b) for b in args.buckets.split(",")] if args.buckets else [b.id for b in manifest.buckets]
    results = []
    for bucket in ids:
        entry = manifest.bucket(bucket)
        profile = profile_bucket(args.engine_dir, bucket, runs=args.runs, threads=args.threads)
        print(f"\n== bucket {entry.id} {entry.name} ({entry.gflops:.2f} GFLOPs), {args.threads} thread(s)")
        print(profile.table(), flush=True)
        results.append({"name": entry.name, "gflops": entry.gflops, **profile.to_dict()})
        if args.optimized is not None:
            level = manifest.build_options.get("optimization", "all")
            write_optimized(args.engine_dir, entry.file, level, args.optimized, args.threads)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
