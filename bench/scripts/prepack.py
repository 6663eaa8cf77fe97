"""ONNX Runtime weight prepacking on and off for one engine directory: memory with every bucket loaded and run.

    .venv/bin/python bench/scripts/prepack.py ENGINE_DIR --out DIR [--threads 2]

Writes ``DIR/prepack-on`` and ``DIR/prepack-off``: hard-linked copies of ENGINE_DIR whose manifests differ only in
``session.disable_prepacking``; then, each in a fresh process, opens the runtime (gate and every bucket), runs
every bucket once and prints the proportional set size (PSS) over the process before loading. Latency of the two
is then ``vared2 bench DIR/prepack-on --against DIR/prepack-off`` (interleaved rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ort_memory import MIB, pss_bytes  # this script's folder is on sys.path


def variant(engine_dir: Path, out: Path, disable: str) -> Path:
    """A hard-linked copy of ``engine_dir`` with ``session.disable_prepacking`` = ``disable``."""
    target = out / ("prepack-off" if disable == "1" else "prepack-on")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for file in engine_dir.iterdir():
        if file.name != "manifest.json":
            os.link(file, target / file.name)
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    manifest["build_options"]["ort_session_config"]["session.disable_prepacking"] = disable
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def measure(engine_dir: Path, threads: int) -> dict[str, float]:
    """In this process: PSS before and after loading every engine and running each bucket once."""
    import numpy as np

    from vared2.runtime import Runtime

    before = pss_bytes()
    with Runtime.open(engine_dir, threads=threads) as rt:
        loaded = pss_bytes()
        spec = rt.manifest.model
        clip = np.random.default_rng(0).integers(0, 256, (spec.frames, spec.size, spec.size, 3), np.uint8)
        for b in rt.manifest.buckets:
            rt.classify(clip, bucket=b.id)
        ran = pss_bytes()
    return {"loaded_mib": (loaded - before) / MIB, "after_run_mib": (ran - before) / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.engine_dir, args.threads)))
        return
    for disable in ("0", "1"):
        target = variant(args.engine_dir, args.out, disable)
        child = [sys.executable, __file__, str(target), "--out", str(args.out), "--threads", str(args.threads)]
        result = subprocess.run([*child, "--measure"], capture_output=True, text=True, check=True)
        print(f"{target.name}: {result.stdout.strip()}")


if __name__ == "__main__":
    main()
