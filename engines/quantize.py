"""int8 bucket engines for ONNX Runtime (CPU): a step after the graph rewrites, before the weights are packed.

Each bucket graph is made quantizable (local functions inlined, constant weights folded: the rewritten graphs
compute weights as ``Slice``/``Reshape`` of initializers, which a quantizer would treat as activations), then
quantized by ONNX Runtime's ``quantize_static`` in QDQ form: per-channel symmetric int8 weights, uint8
activations (the x86 VNNI path) with MinMax ranges from ``vared2.engines.calibration``, a Concat's inputs sharing
one scale, and the classifier (``Gemm``, the logits) left fp32. A reduced bucket's int8 weight rows are a prefix
of the full bucket's (per-output-channel scales), and they take the full bucket's initializer name so
``pack_weights`` stores them once. Parity is agreement of top-1 with fp32 on held-out clips, not 1e-4.
docs/engines.md has the measurements behind the choices.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, TensorProto, inliner, numpy_helper
from onnx.reference import ReferenceEvaluator

from vared2.engines.calibration import ClipSet, activation_ranges, share_concat_ranges
from vared2.formats.errors import CheckFailed

#: How int8 engines are calibrated and quantized (recorded in the manifest).
METHOD = "ort-qdq-minmax: per-channel symmetric int8 weights, uint8 activations, concat one scale, logits fp32"
#: The default bar of the agreement rule (``vared2 build --min-agreement``).
MIN_AGREEMENT = 0.985
#: The accuracy rule: int8 top-1 accuracy within this of fp32's (or of 1 - min_agreement, if larger: a model
#: allowed to disagree on a fraction of clips can move its accuracy by that much).
MAX_ACCURACY_DELTA = 0.01
#: Op types never quantized: the classifier, so the logits stay fp32 (quantized logits clip).
FP32_OPS = ("Gemm",)


class AgreementError(CheckFailed):
    """The int8 engines disagree with fp32 beyond the bar: the build fails (exit code 1, as every ``CheckFailed``)."""


def fold_constants(model: ModelProto) -> ModelProto:
    """``model`` with local functions inlined and every node whose inputs are all constant replaced by its value
    as an initializer (named as the node's output). Weights must be loaded (not external)."""
    model = inliner.inline_local_functions(model)
    graph = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    kept = []
    for node in graph.node:
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if not subgraph and node.domain in ("", "ai.onnx") and all(i == "" or i in values for i in node.input):
            evaluator = ReferenceEvaluator(node, opsets={"": opsets.get("", 17)})
            feeds = {i: values[i] for i in node.input if i}
            for name, value in zip(node.output, evaluator.run(None, feeds), strict=True):
                values[name] = np.asarray(value)
            continue
        kept.append(node)
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in sorted(used & values.keys()))
    del graph.value_info[:]
    return model


def quantize_model(
    model: ModelProto, ranges: Mapping[str, tuple[float, float]], *, fp32_ops: Sequence[str] = FP32_OPS
) -> ModelProto:
    """QDQ int8 of a folded graph (``fold_constants``) with the given activation ranges (MinMax)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    data = TensorsData(
        CalibrationMethod.MinMax, {name: (np.float32(lo), np.float32(hi)) for name, (lo, hi) in ranges.items()}
    )
    excluded = [n.name for n in model.graph.node if n.op_type in fp32_ops]
    with tempfile.TemporaryDirectory(prefix="vared2-int8-") as tmp:
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(data, cache)  # the ranges measured here; quantize_static then runs no calibration
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # it warns to "pre-process" the graph on the root logger; fold_constants did
        try:
            quantize_static(
                model,
                out,
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True},
                calibration_cache_path=cache,
            )
        finally:
            root.setLevel(level)
        return onnx.load(str(out))


def share_weight_prefixes(full: ModelProto, reduced: ModelProto, min_bytes: int = 1024) -> tuple[int, int]:
    """Rename each int8 weight of ``reduced`` whose rows are a prefix of an int8 weight of ``full`` to that
    weight's name, so ``pack_weights`` stores it as a prefix of the full one. Returns (shared, int8 weights)."""
    candidates: dict[tuple[int, ...], list[tuple[str, bytes]]] = {}
    for tensor in full.graph.initializer:
        if tensor.data_type == TensorProto.INT8:
            array = numpy_helper.to_array(tensor)
            candidates.setdefault(tuple(array.shape[1:]), []).append((tensor.name, array.tobytes()))
    names = {t.name for t in reduced.graph.initializer}
    renames: dict[str, str] = {}
    total = 0
    for tensor in reduced.graph.initializer:
        if tensor.data_type != TensorProto.INT8 or len(tensor.dims) < 2:
            continue
        array = numpy_helper.to_array(tensor)
        if array.nbytes < min_bytes:
            continue
        total += 1
        data = array.tobytes()
        for name, stored in candidates.get(tuple(array.shape[1:]), []):
            if stored.startswith(data) and (name == tensor.name or name not in names):
                renames[tensor.name] = name
                break
    for tensor in reduced.graph.initializer:
        if tensor.name in renames:
            tensor.name = renames[tensor.name]
    for node in reduced.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return len(renames), total


@dataclass
class QuantizedBuckets:
    """The int8 bucket graphs and what the manifest records of how they were made."""

    models: dict[str, ModelProto]
    shared_weights: dict[str, list[int]]  # file -> [int8 weights stored as a prefix of the full's, int8 weights]
    method: str = METHOD


def quantize_engines(
    onnx_dir: Path,
    spec: Mapping[str, Any],
    models: Mapping[str, ModelProto],
    calibration: ClipSet,
    *,
    threads: int | None = None,
    batch: int = 8,
) -> QuantizedBuckets:
    """Quantize the bucket graphs of ``models`` (file → rewritten fp32 model, ``spec`` = export.json), calibrated
    on the exported gate's ``features`` of the ``calibration`` clips; the full bucket (the most GFLOPs) is the
    one whose int8 weights the other buckets' prefixes share."""
    gate = ort.InferenceSession(str(Path(onnx_dir) / spec["gate"]["file"]), providers=["CPUExecutionProvider"])
    features = gate_features(gate, calibration, batch)
    files = [b["file"] for b in spec["buckets"]]
    full = max(spec["buckets"], key=lambda b: float(b["gflops"]))["file"]
    quantized: dict[str, ModelProto] = {}
    for file in files:
        folded = fold_constants(models[file])
        # One clip per run: every intermediate tensor is an output while calibrating (a batch of 8 full-size
        # clips would hold gigabytes of them at once).
        feeds = ({"features": f[i : i + 1]} for f in features for i in range(len(f)))
        ranges = activation_ranges(folded, feeds, threads=threads)
        quantized[file] = quantize_model(folded, share_concat_ranges(folded, ranges))
    shared = {f: list(share_weight_prefixes(quantized[full], quantized[f])) for f in files if f != full}
    return QuantizedBuckets(models=quantized, shared_weights=shared)


def gate_features(gate: ort.InferenceSession, clips: ClipSet, batch: int = 8) -> list[np.ndarray]:
    """The gate's ``features`` of every clip, in batches of ``batch``."""
    return [gate.run(["features"], {"clip": b})[0] for b in clips.batches(batch)]


def measure_agreement(
    gate: ort.InferenceSession,
    files: Iterable[str],
    sessions: Callable[[str], tuple[ort.InferenceSession, ort.InferenceSession]],
    validation: ClipSet,
    batch: int = 8,
) -> dict[str, dict[str, Any]]:
    """Per bucket file: on every validation clip (its gate features), how often the candidate's top-1 equals the
    reference's, and both top-1 accuracies on the labels (None without labels). ``sessions(file)`` opens the
    (reference, candidate) pair of one bucket; one pair is open at a time (full-size buckets are large)."""
    features = gate_features(gate, validation, batch)
    labels = np.asarray(validation.labels)
    known = labels >= 0
    result: dict[str, dict[str, Any]] = {}
    for file in files:
        reference, candidate = sessions(file)
        want, got = _top1(reference, features), _top1(candidate, features)
        del reference, candidate
        result[file] = {
            "clips": int(labels.size),
            "agreement": float(np.mean(want == got)),
            "accuracy_fp32": float(np.mean(want[known] == labels[known])) if known.any() else None,
            "accuracy_int8": float(np.mean(got[known] == labels[known])) if known.any() else None,
        }
    return result


def _top1(session: ort.InferenceSession, features: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate([session.run(["logits"], {"features": f})[0].argmax(axis=1) for f in features])


def check_agreement(figures: Mapping[str, Mapping[str, Any]], min_agreement: float, source: str) -> None:
    """Raise ``AgreementError`` naming every bucket whose agreement is below ``min_agreement`` or whose accuracy
    moved more than ``max(MAX_ACCURACY_DELTA, 1 - min_agreement)``."""
    delta = max(MAX_ACCURACY_DELTA, 1.0 - min_agreement)
    failures = []
    for file, f in figures.items():
        if f["agreement"] < min_agreement:
            failures.append(f"{file}: top-1 agrees with fp32 on {f['agreement']:.2%} < {min_agreement:.2%}")
        if f["accuracy_fp32"] is not None and abs(f["accuracy_int8"] - f["accuracy_fp32"]) > delta:
            failures.append(
                f"{file}: accuracy {f['accuracy_int8']:.2%} int8 vs {f['accuracy_fp32']:.2%} fp32 "
                f"(allowed ±{delta:.2%})"
            )
    if failures:
        clips = next(iter(figures.values()))["clips"]
        raise AgreementError(
            f"int8 parity failed on {clips} validation clips of {source}: {'; '.join(failures)}"
            " (lower the bar with --min-agreement only for models whose labels mean nothing)"
        )
