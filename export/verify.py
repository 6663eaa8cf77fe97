"""``vared2 verify``: every exported graph through ONNX Runtime against PyTorch eager on the same input.

The comparison itself is Polygraphy's (``CompareFunc.simple`` with an absolute tolerance and no relative
one), so it is the same check the GPU tier runs between TensorRT and ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from polygraphy.comparator import Comparator, RunResults, SimpleCompareFunc
from polygraphy.comparator.struct import IterationResult
from polygraphy.logger import G_LOGGER

from vared2.export.graphs import normalize_clip
from vared2.export.onnx_export import model_description
from vared2.formats.errors import InputError, InputNotFoundError
from vared2.formats.export_spec import EXPORT_JSON, read_export_spec
from vared2.formats.progress import progress
from vared2.models import VaRed2VideoResNet, load

ATOL = 1e-4


@dataclass
class Check:
    """One graph's comparison."""

    graph: str
    max_abs: dict[str, float]
    passed: bool
    note: str = ""


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        lines = [f"{'graph':<14} {'output':<14} {'max |ORT - PyTorch|':>20}  result", "-" * 60]
        for c in self.checks:
            # The verdict goes on the row that earned it: each output against the tolerance; a check that failed
            # with every output within it (the gate's bucket choice differs) fails on its note's row.
            within = {name: diff <= ATOL for name, diff in c.max_abs.items()}
            for i, (name, diff) in enumerate(c.max_abs.items()):
                result = "ok" if within[name] else "FAIL"
                lines.append(f"{c.graph if i == 0 else '':<14} {name:<14} {diff:>20.3e}  {result}")
            if c.note:
                failed_here = not c.passed and all(within.values())
                lines.append(f"{'':<14} {c.note}{'  FAIL' if failed_here else ''}")
        verdict = "all graphs match" if self.passed else "MISMATCH"
        lines.append(f"{verdict} (tolerance: max abs <= {ATOL:g}, fp32)")
        return "\n".join(lines)


def _compare(graph: str, ort_out: dict[str, np.ndarray], torch_out: dict[str, np.ndarray]) -> Check:
    results = RunResults(
        [
            ("onnxruntime", [IterationResult(ort_out, runner_name="onnxruntime")]),
            ("pytorch", [IterationResult(torch_out, runner_name="pytorch")]),
        ]
    )
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=ATOL, rtol=0.0, check_shapes=True)
        )
    diffs = {name: float(np.max(np.abs(ort_out[name] - torch_out[name]))) for name in torch_out}
    return Check(graph, diffs, bool(accuracy))


def _session(path: Path) -> ort.InferenceSession:
    if not path.is_file():
        raise InputNotFoundError(f"{path}: exported graph is missing")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, …) for a bad file
        raise InputError(f"{path}: ONNX Runtime cannot load this exported graph ({error}); export it again") from error


def verify_model(onnx_dir: Path, model: VaRed2VideoResNet, *, batch: int = 2, seed: int = 0) -> VerifyReport:
    """Compare the gate and every bucket in ``onnx_dir`` with ``model`` on one seeded clip batch."""
    onnx_dir = Path(onnx_dir)
    spec_path = onnx_dir / EXPORT_JSON
    spec = read_export_spec(onnx_dir)  # the builders' checks: a missing, malformed or incomplete export is named
    config = model.config
    if len(spec["buckets"]) != len(model.buckets):
        raise InputError(
            f"{spec_path}: {len(spec['buckets'])} buckets exported, the checkpoint has {len(model.buckets)}"
        )
    described = model_description(model)
    differs = [
        f"{key} {spec['model'].get(key)!r:.60} (the checkpoint: {value!r:.60})"
        for key, value in described.items()
        if spec["model"].get(key) != value
    ]
    if differs:  # the graphs may match, but the engines would decode and label clips by export.json's fields
        raise InputError(f"{spec_path}: the model is described differently from the checkpoint: {'; '.join(differs)}")
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.frames, config.size, config.size, 3)
    clip = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    report = VerifyReport()

    with torch.no_grad():
        features = model.features(normalize_clip(clip, config.mean, config.std))
        logits = model.bucket_logits(features)
    gate_out = _session(onnx_dir / spec["gate"]["file"]).run(None, {"clip": clip.numpy()})
    check = _compare(
        "gate",
        {"features": gate_out[0], "bucket_logits": gate_out[1]},
        {"features": features.numpy(), "bucket_logits": logits.numpy()},
    )
    same_choice = bool(np.array_equal(gate_out[1].argmax(1), logits.numpy().argmax(1)))
    check.passed = check.passed and same_choice
    check.note = f"bucket argmax {'identical' if same_choice else 'DIFFERS'}: {logits.numpy().argmax(1).tolist()}"
    report.checks.append(check)

    for entry in progress(spec["buckets"], desc="verifying buckets", unit="bucket"):
        with torch.no_grad():
            expected = model.forward_features(features, entry["id"]).numpy()
        got = _session(onnx_dir / entry["file"]).run(None, {"features": features.numpy()})[0]
        report.checks.append(_compare(f"bucket_{entry['id']}", {"logits": got}, {"logits": expected}))
    return report


def verify_checkpoint(onnx_dir: Path, checkpoint_dir: Path) -> VerifyReport:
    """``vared2 verify ONNX_DIR --checkpoint CKPT_DIR``."""
    return verify_model(onnx_dir, load(Path(checkpoint_dir)))
