"""Whether two engine directories of the same export compute the same numbers (issue 23: a rewrite of the build
passes must leave the engines as they were).

    .venv/bin/python bench/scripts/engines_equal.py OLD_ENGINE_DIR NEW_ENGINE_DIR [--batch 2] [--tolerance 1e-6]

Every engine file the manifests list runs in both directories at the build's optimisation level on one seeded
input (``perf_ab.feeds``: a uint8 clip for the gate, ``max(N(0,1), 0)`` features for the buckets); prints the
max abs difference of every output, whether the files are byte-identical and whether their top-level op counts
agree. Exit 1 beyond the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from perf_ab import feeds, session  # this folder's interleaved A/B: the runtime's session options, its inputs


def ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    manifest = json.loads((args.old / "manifest.json").read_text())
    level = manifest.get("build_options", {}).get("optimization", "all")
    files = [manifest["gate"]["file"], *(b["file"] for b in manifest["buckets"])]
    worst = 0.0
    for file in files:
        old, new = session(str(args.old / file), level, 1), session(str(args.new / file), level, 1)
        inputs = feeds(old, args.batch)
        diff = max(
            float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            for a, b in zip(old.run(None, inputs), new.run(None, inputs), strict=True)
        )
        same_bytes = (args.old / file).read_bytes() == (args.new / file).read_bytes()
        same_ops = ops(args.old / file) == ops(args.new / file)
        print(f"{file:<16} max abs {diff:.3g}  byte-identical {same_bytes}  same op counts {same_ops}")
        worst = max(worst, diff)
    print(f"worst {worst:.3g} (tolerance {args.tolerance:g}, level {level}, batch {args.batch})")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
