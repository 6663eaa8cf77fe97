"""Each graph pass's gain: the default engines against engines built with ``vared2 build --skip-pass NAME``,
interleaved A/B (``perf_ab``) on every engine the pass changes (docs/performance.md, "The passes").

    .venv/bin/python bench/scripts/pass_gains.py ENGINE_DIR SKIP_ROOT [--threads 1] [--reps 11] [--clock cpu|wall]

``SKIP_ROOT/<pass name>`` is the engine directory built without that pass. An engine whose top-level op counts and
initializer shapes are the same either way is one the pass does not change, and is not timed. Prints, per pass and
engine, the medians and ``default ÷ skipped`` (below 1: the pass makes it faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from perf_ab import CLOCK_HELP, feeds, session, time_interleaved


def signature(path: Path) -> tuple[Counter[str], list[tuple[int, ...]]]:
    """Top-level op counts and initializer shapes: what a pass changes (padding changes only shapes)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return Counter(n.op_type for n in graph.node), sorted(tuple(t.dims) for t in graph.initializer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", type=Path)
    parser.add_argument("skip_root", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu", help=CLOCK_HELP)
    args = parser.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    manifest = json.loads((args.engines / "manifest.json").read_text())
    level = manifest["build_options"].get("optimization", "all")
    files = [manifest["gate"]["file"], *(b["file"] for b in manifest["buckets"])]
    print(f"{'pass':<28} {'engine':<14} {'default ms':>10} {'skipped ms':>10} {'ratio':>6} {'q1-q3 default':>16}")
    for skipped in sorted(p for p in args.skip_root.iterdir() if (p / "manifest.json").exists()):
        for file in files:
            if signature(args.engines / file) == signature(skipped / file):
                continue
            variants = {}
            for name, directory in (("default", args.engines), ("skipped", skipped)):
                sess = session(str(directory / file), level, args.threads)
                variants[name] = (sess, feeds(sess, 1))
            samples = time_interleaved(variants, args.reps, clock)
            med = {k: statistics.median(v) for k, v in samples.items()}
            q1, q3 = np.percentile(samples["default"], [25, 75])
            ratio = med["default"] / med["skipped"]
            print(
                f"{skipped.name:<28} {file:<14} {med['default']:>10.1f} {med['skipped']:>10.1f} {ratio:>6.3f}"
                f" {q1:>7.1f}-{q3:<8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
