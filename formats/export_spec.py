"""The exported model directory's ``export.json`` (``vared2 export`` writes it; the builders and ``verify`` read it),
checked for what they use before any long work, and turned into the manifest's model spec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import InputError, InputNotFoundError
from .fields import read_json
from .manifest import ModelSpec

EXPORT_JSON = "export.json"
EXPORT_FORMAT = "vared2-onnx"


class ExportSpecError(InputError):
    """``export.json`` is malformed or does not match its directory. The message names the file and the field."""


def read_export_spec(onnx_dir: Path) -> dict[str, Any]:
    """``export.json`` of an exported model directory, checked for what the builders and ``vared2 verify`` use."""
    path = Path(onnx_dir) / EXPORT_JSON
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no export.json (is {onnx_dir} a directory written by `vared2 export`?)")
    spec = read_json(path, ExportSpecError)
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise ExportSpecError(
            f"{path}: format must be {EXPORT_FORMAT!r}, got {spec.get('format') if isinstance(spec, dict) else spec!r}"
        )
    for key in ("model", "gate", "buckets"):
        if key not in spec:
            raise ExportSpecError(f"{path}: missing field {key!r}")
    if not isinstance(spec["buckets"], list) or not spec["buckets"]:
        raise ExportSpecError(f"{path}: buckets: expected a list of at least one bucket, got {spec['buckets']!r:.80}")
    entries = {"gate": spec["gate"], **{f"buckets[{i}]": b for i, b in enumerate(spec["buckets"])}}
    for field_name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise ExportSpecError(f"{path}: {field_name}.file: expected a file name, in an object, got {entry!r:.80}")
    _check_fields(spec, path)
    files = [entry["file"] for entry in entries.values()]
    for file in files:
        if len(file.encode("utf-8", "replace")) > 255 or "\0" in file:
            raise ExportSpecError(f"{path}: file {file!r:.80}: not a usable file name")
        if Path(file).name != file:
            raise ExportSpecError(f"{path}: file {file!r} must be a plain file name inside {onnx_dir}")
        if not (Path(onnx_dir) / file).is_file():
            raise InputNotFoundError(f"{Path(onnx_dir) / file}: listed in export.json but missing")
    return spec


def _check_fields(spec: dict[str, Any], path: Path) -> None:
    """The fields the builders turn into a manifest, checked before the parity build so a bad one is named then
    (and a ``num_classes`` of 10**9 without labels does not build a billion placeholder names)."""

    def bad(field_name: str, expected: str, value: Any) -> None:
        raise ExportSpecError(f"{path}: {field_name}: expected {expected}, got {value!r:.80}")

    def integer(value: Any, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    def number(value: Any) -> bool:  # the size check first: math.isfinite(10**400) overflows
        return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e300

    model = spec["model"]
    if not isinstance(model, dict):
        bad("model", "an object", model)
    for key in ("frames", "size"):
        if not integer(model.get(key), 1, 100_000):
            bad(f"model.{key}", "an integer from 1 to 100000", model.get(key))
    for key in ("mean", "std"):
        value = model.get(key)
        if not isinstance(value, list) or len(value) != 3 or not all(number(v) for v in value):
            bad(f"model.{key}", "three numbers (R, G, B)", value)
    labels = model.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        bad("model.labels", "a list of class names", labels)
    if not labels and not integer(model.get("num_classes"), 1, 1_000_000):
        bad("model.num_classes", "an integer from 1 to 1000000 (there are no labels)", model.get("num_classes"))
    if not number(spec["gate"].get("gflops")):
        bad("gate.gflops", "a number", spec["gate"].get("gflops"))
    for i, entry in enumerate(spec["buckets"]):
        policy = entry.get("policy")
        pairs = isinstance(policy, list) and all(
            isinstance(p, list) and len(p) == 2 and all(integer(v, 0, 16) for v in p) for p in policy
        )
        for key, ok, expected in (
            ("id", integer(entry.get("id"), 0, 1_000_000), "a bucket id"),
            ("name", isinstance(entry.get("name"), str), "a bucket name"),
            ("policy", pairs, "a list of [pt, pc] pairs of small integers"),
            ("gflops", number(entry.get("gflops")), "a number"),
        ):
            if not ok:
                bad(f"buckets[{i}].{key}", expected, entry.get(key))


def model_spec(spec: dict[str, Any]) -> ModelSpec:
    """The manifest's model spec from ``export.json``'s ``model``."""
    m = spec["model"]
    checkpoint = m.get("checkpoint_sha256") or ""
    if not checkpoint:
        # A model exported from memory (no checkpoint file): identify it by its ONNX content instead.
        checkpoint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return ModelSpec(
        frames=int(m["frames"]),
        size=int(m["size"]),
        mean=tuple(float(v) for v in m["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in m["std"]),  # type: ignore[arg-type]
        # A model trained without label names still needs one per class in the manifest.
        labels=tuple(str(v) for v in m.get("labels", [])) or tuple(f"class{i}" for i in range(int(m["num_classes"]))),
        checkpoint_sha256=checkpoint,
    )
