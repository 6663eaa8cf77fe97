"""Checkpoint → ``gate.onnx`` + ``bucket_<id>.onnx`` + ``export.json`` (DESIGN.md §4).

The TorchScript exporter (``dynamo=False``) is used on purpose: with ``torch.onnx.register_custom_op_symbolic``
it emits the ``vared2::`` nodes with their plugin attributes, and the model-local functions are appended
afterwards. The dynamo exporter's inlining pass failed on the same op (DESIGN.md §4). Everything that can
fail on bad input (loading, validating, building the graphs) happens before anything is written; the
files are written to a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from vared2.export.graphs import BucketGraph, GateGraph
from vared2.formats.export_spec import EXPORT_FORMAT, EXPORT_JSON
from vared2.formats.paths import atomic_directory, check_output_dir
from vared2.formats.progress import progress
from vared2.models import VaRed2VideoResNet, load
from vared2.models.checkpoint import sha256_of
from vared2.plugins import onnx_functions, torch_ops

OPSET = 17
EXPORT_VERSION = 1


@dataclass(frozen=True)
class ExportedModel:
    """What ``export_checkpoint`` wrote."""

    directory: Path
    gate: Path
    buckets: list[Path]


def to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
) -> onnx.ModelProto:
    """Export one module with a dynamic batch axis, attach the custom ops' functions and check it."""
    torch_ops.register_onnx_symbolics(OPSET)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # no_grad: the custom ops return views of fresh tensors
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            example,
            buffer,  # type: ignore[arg-type]  # file-like objects are accepted by the TorchScript exporter
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={name: {0: "N"} for name in input_names + output_names},
            do_constant_folding=True,
        )
    model = onnx_functions.attach_functions(onnx.load_from_string(buffer.getvalue()))
    onnx.checker.check_model(model, full_check=True)
    return model


def model_description(model: VaRed2VideoResNet) -> dict[str, Any]:
    """``export.json``'s ``model`` fields (the checkpoint's sha256 aside): what the builders copy into the
    manifest and the runtime decodes and labels clips by; ``vared2 verify`` compares them with the checkpoint."""
    config = model.config
    return {
        "backbone": config.backbone,
        "frames": config.frames,
        "size": config.size,
        "mean": list(config.mean),
        "std": list(config.std),
        "labels": list(config.labels),
        "num_classes": config.num_classes,
    }


def export_model(
    model: VaRed2VideoResNet, out_dir: Path, *, checkpoint_sha256: str = "", checkpoint_dir: Path | None = None
) -> ExportedModel:
    """Write the gate and every bucket of ``model`` to ``out_dir`` (replacing it atomically).

    ``out_dir`` is replaced as a whole, so it must be absent, empty, or a previous export (it has ``export.json``);
    anything else is refused with ``FileExistsError`` before any work, as is (``ValueError``) the current directory
    or an ancestor of it, and ``checkpoint_dir`` (the model's source, when it has one), a directory inside it or one
    containing it (``vared2.formats.manifest.check_output_dir``).
    """
    check_output_dir(
        out_dir, marker=EXPORT_JSON, kind="an ONNX export", source=checkpoint_dir, source_kind="checkpoint directory"
    )
    model = model.eval()
    config = model.config
    # Build every graph first: a bucket the model cannot run fails here, before anything is written.
    gate = GateGraph(model)
    buckets = [BucketGraph(model, index) for index in range(len(model.buckets))]
    clip = torch.randint(0, 256, (2, config.frames, config.size, config.size, 3), dtype=torch.uint8)
    with torch.no_grad():
        features, _ = gate(clip)

    with atomic_directory(Path(out_dir)) as work:
        onnx.save(to_onnx(gate, (clip,), ["clip"], ["features", "bucket_logits"]), str(work / "gate.onnx"))
        entries: list[dict[str, Any]] = []
        for index, graph in enumerate(progress(buckets, desc="exporting buckets", unit="bucket")):
            name = f"bucket_{index}.onnx"
            onnx.save(to_onnx(graph, (features,), ["features"], ["logits"]), str(work / name))
            bucket = model.buckets[index]
            entries.append(
                {
                    "id": index,
                    "name": bucket.name,
                    "short_name": bucket.short_name,
                    "policy": [list(p) for p in bucket.policies],
                    "gflops": model.gflops(index),
                    "file": name,
                }
            )
        spec = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "opset": OPSET,
            "model": {**model_description(model), "checkpoint_sha256": checkpoint_sha256},
            "gate": {"file": "gate.onnx", "gflops": model.gate_gflops(), "features_shape": list(features.shape[1:])},
            "buckets": entries,
            "exporter": {"torch": torch.__version__, "onnx": onnx.__version__},
        }
        (work / EXPORT_JSON).write_text(json.dumps(spec, indent=2) + "\n")
    out = Path(out_dir).resolve()
    return ExportedModel(out, out / "gate.onnx", [out / e["file"] for e in entries])


def export_checkpoint(checkpoint_dir: Path, out_dir: Path) -> ExportedModel:
    """``vared2 export``: load a checkpoint directory (never unpickling) and export it.

    ``out_dir`` follows ``export_model``'s rule, and must also not be ``checkpoint_dir``, lie inside it or contain
    it (``ValueError``; ``export_model`` checks once the checkpoint has loaded, so a bad checkpoint is reported first).
    """
    checkpoint_dir = Path(checkpoint_dir)
    model = load(checkpoint_dir)
    checkpoint_sha256 = sha256_of(checkpoint_dir / "model.safetensors")
    return export_model(model, out_dir, checkpoint_sha256=checkpoint_sha256, checkpoint_dir=checkpoint_dir)
