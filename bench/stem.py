"""The gate's latency split into the stem every bucket needs and the decision on top of it.

The gate engine computes the stem (its ``features`` output, which the chosen bucket engine reads) and the bucket
logits. A static model computes the stem as well, so what the dynamic model pays for *deciding* is the gate less
its stem. The stem alone is the gate engine's own graph with every output but ``features`` removed and every node
only they needed pruned — the same rewritten stem, session options and thread count — timed interleaved with the
gate itself (``measure_interleaved``), so both medians come from the same phases of the machine.

ONNX Runtime engine directories only (the gate's ``.onnx`` is the graph); ``onnx`` is imported lazily.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vared2.formats.errors import InputError
from vared2.formats.manifest import Manifest

from .ceiling import engine_like
from .timing import DEFAULT_TIMING, TimingSettings, Trace, measure_interleaved

#: The gate output the bucket engines read (DESIGN.md §4).
FEATURES = "features"


@dataclass
class GateSplit:
    """The gate engine and its stem alone, timed interleaved."""

    gate: Trace
    stem: Trace
    nodes: int  # the gate graph's nodes
    stem_nodes: int  # the nodes left when only ``features`` is computed

    @property
    def decision_ms(self) -> float:
        """What the gate costs beyond the stem (the head and its MLP): median gate − median stem."""
        return self.gate.latency.median - self.stem.latency.median

    @property
    def stem_share(self) -> float:
        """The stem's share of the gate's time, from the interleaved medians (the decision's is 1 − this)."""
        return self.stem.latency.median / self.gate.latency.median

    def of_full(self, gate_fraction_of_full: float) -> tuple[float, float]:
        """(stem, decision) as fractions of the full bucket: the interleaved shares times the gate's fraction of
        full from the bench's own timings, so a phase of the machine that slows this pair down does not distort
        them."""
        return self.stem_share * gate_fraction_of_full, (1 - self.stem_share) * gate_fraction_of_full

    def to_dict(self, gate_fraction_of_full: float, samples: bool = True) -> dict[str, Any]:
        stem, decision = self.of_full(gate_fraction_of_full)
        return {
            "gate_median_ms": self.gate.latency.median,
            "stem_median_ms": self.stem.latency.median,
            "decision_ms": self.decision_ms,
            "stem_share_of_gate": self.stem_share,
            "decision_share_of_gate": 1 - self.stem_share,
            "stem_fraction_of_full": stem,
            "decision_fraction_of_full": decision,
            "gate_nodes": self.nodes,
            "stem_nodes": self.stem_nodes,
            "gate_trace": self.gate.to_dict(samples),
            "stem_trace": self.stem.to_dict(samples),
        }


def stem_only_model(gate: Any, source: Path | str) -> Any:
    """A copy of the gate graph ``gate`` (an ``onnx.ModelProto`` read from ``source``, named in errors) computing
    ``features`` alone: every other output and every node and weight only they needed removed, nothing else
    changed."""
    import onnx

    names = [o.name for o in gate.graph.output]
    if FEATURES not in names:
        raise InputError(f"{source}: the gate graph has no {FEATURES!r} output (outputs: {', '.join(names)})")
    model = onnx.ModelProto()
    model.CopyFrom(gate)
    kept_outputs = [o for o in model.graph.output if o.name == FEATURES]
    del model.graph.output[:]
    model.graph.output.extend(kept_outputs)
    # The engine builders have the same pruning (ort_graph.prune), but the bench may not import them
    # (DESIGN.md §1: only the runtime and the formats layer), so it walks the graph itself.
    needed = {FEATURES}
    kept_nodes = []
    for node in reversed(model.graph.node):  # a valid ONNX graph lists its nodes in topological order
        if any(o in needed for o in node.output):
            kept_nodes.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept_nodes))
    kept_inits = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def measure_gate_split(
    engine_dir: Path | str,
    manifest: Manifest,
    clip: np.ndarray,
    *,
    threads: int | None = None,
    shared_thread_pool: bool = False,
    timing: TimingSettings = DEFAULT_TIMING,
) -> GateSplit:
    """Time the gate engine and its stem alone on ``clip`` (uint8 ``[N, T, H, W, 3]``), interleaved, with the
    engines' graph optimisation level and session config."""
    if manifest.backend != "onnxruntime":
        raise InputError(
            f"{engine_dir}: the gate split is measured on ONNX Runtime engine directories (their .onnx graphs); "
            f"this one is {manifest.backend}"
        )
    import onnx

    engine_dir = Path(engine_dir)
    gate_file = engine_dir / manifest.gate.file
    gate = onnx.load(str(gate_file))  # external weights (the shared weights file) read in: the copy stands alone
    stem = stem_only_model(gate, gate_file)
    with tempfile.TemporaryDirectory(prefix="vared2-stem-") as tmp:
        path = Path(tmp) / "stem_only.onnx"
        path.write_bytes(stem.SerializeToString())
        engines = [
            engine_like(manifest, p, threads=threads, shared_thread_pool=shared_thread_pool) for p in (gate_file, path)
        ]
        feeds = {"clip": clip}
        gate_trace, stem_trace = measure_interleaved(
            [partial(engine.run, feeds) for engine in engines], batch=int(clip.shape[0]), **timing.kwargs()
        )
        del engines
    return GateSplit(gate_trace, stem_trace, len(gate.graph.node), len(stem.graph.node))
