"""Where a bucket's time goes: ONNX Runtime's profiler (``SessionOptions.enable_profiling``), totals per op type.

The session is set up as the runtime sets up its own (optimisation level, threads, session config, the shared
weights), so the kernels profiled are the ones the bench timed. The first run is a warm-up and left out.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vared2.formats.errors import InputError
from vared2.formats.manifest import Manifest


@dataclass(frozen=True)
class OpProfile:
    """Mean milliseconds per run spent in each op type (fused ops under ORT's names, e.g. ``FusedConv``)."""

    bucket: int
    runs: int
    per_op_ms: dict[str, float]
    nodes: dict[str, int]
    run_ms: float  # mean wall time of a profiled run (ORT's model_run events)

    @property
    def total_ms(self) -> float:
        return sum(self.per_op_ms.values())

    def table(self) -> str:
        lines = [f"{'op type':<28} {'nodes':>5} {'ms/run':>10} {'share':>7}"]
        total = self.total_ms
        for op, ms in sorted(self.per_op_ms.items(), key=lambda kv: -kv[1]):
            lines.append(f"{op:<28} {self.nodes[op]:>5} {ms:>10.2f} {ms / total:>7.1%}")
        lines.append(f"{'kernels total':<28} {sum(self.nodes.values()):>5} {total:>10.2f} {1:>7.1%}")
        lines.append(f"{'run (wall)':<28} {'':>5} {self.run_ms:>10.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "runs": self.runs,
            "per_op_ms": self.per_op_ms,
            "nodes": self.nodes,
            "kernel_total_ms": self.total_ms,
            "run_ms": self.run_ms,
        }


def profile_bucket(
    engine_dir: Path | str,
    bucket: int,
    *,
    runs: int = 5,
    batch: int = 1,
    threads: int | None = None,
    seed: int = 0,
) -> OpProfile:
    """Profile ``runs`` runs (after one warm-up) of bucket ``bucket`` of an ONNX Runtime engine directory on
    random features of the gate's output shape."""
    from vared2.formats.sessions import SharedWeights, open_session

    engine_dir = Path(engine_dir)
    manifest = Manifest.load(engine_dir)
    if manifest.backend != "onnxruntime":
        raise InputError(f"{engine_dir}: ONNX Runtime's profiler needs ONNX Runtime engines, not {manifest.backend}")
    entry = manifest.bucket(bucket)
    level = manifest.build_options.get("optimization", "all")
    with tempfile.TemporaryDirectory(prefix="vared2-profile-") as tmp:

        def profiled(options: Any) -> None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / f"bucket_{entry.id}")

        # Loaded as the runtime loads it (the manifest's level and session config, the shared weights).
        weights = None if manifest.weights is None else SharedWeights.open(engine_dir, manifest.weights.file)
        config = manifest.build_options.get("ort_session_config", {})
        session = open_session(
            engine_dir / entry.file, level=level, threads=threads, config=config, weights=weights, configure=profiled
        )
        shape = [batch if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
        features = np.maximum(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32), 0)
        for _ in range(runs + 1):
            session.run(None, {"features": features})
        events = json.loads(Path(session.end_profiling()).read_text())
    run_events = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(run_events) < runs + 1:
        raise RuntimeError(f"ONNX Runtime's profile has {len(run_events)} model_run events, expected {runs + 1}")
    warm_end = run_events[0]["ts"] + run_events[0]["dur"]
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < warm_end:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] += e["dur"] / 1e3 / runs
        nodes[op].add(e["name"])
    run_ms = float(np.mean([e["dur"] for e in run_events[1:]]) / 1e3)
    return OpProfile(entry.id, runs, dict(per_op), {op: len(n) for op, n in nodes.items()}, run_ms)
