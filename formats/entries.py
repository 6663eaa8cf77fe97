"""The entries of ``manifest.json``: the model's input contract, the gate, each bucket and the shared weights file.

Each ``from_dict`` checks a JSON object field by field (errors name the field, ``buckets[2].file``); ``to_dict``
writes it back. ``vared2.formats.manifest`` holds the whole and its cross-field rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .fields import ManifestError, as_dict, as_float, as_int, as_list, as_relpath, as_rgb, as_sha, as_str, require

#: How TensorRT realised the custom ops of an engine: the AOT plugin, or the ONNX local functions as plain layers.
OP_PATHS = ("plugin", "local-functions")


@dataclass(frozen=True)
class ModelSpec:
    """The model's input contract and classes: what the runtime must feed and how to name the outputs.

    ``size`` is the square crop; frames are first resized so their short side is ``short_side`` (default ``size``),
    exactly as ``vared2.formats.video`` does for training.
    """

    frames: int
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: tuple[str, ...]
    checkpoint_sha256: str
    short_side: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def resize_to(self) -> int:
        """The short side frames are resized to before the centre crop."""
        return self.size if self.short_side is None else self.short_side

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "size": self.size,
            "short_side": self.resize_to,
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
            "labels": list(self.labels),
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "model.") -> ModelSpec:
        data = as_dict(data, where.rstrip("."))
        frames = as_int(require(data, "frames", where), f"{where}frames", 1)
        size = as_int(require(data, "size", where), f"{where}size", 1)
        short_side = as_int(data.get("short_side", size), f"{where}short_side", size)
        mean = as_rgb(require(data, "mean", where), f"{where}mean", positive=False)
        std = as_rgb(require(data, "std", where), f"{where}std", positive=True)
        labels = as_list(require(data, "labels", where), f"{where}labels")
        if not labels:
            raise ManifestError(f"{where}labels: expected at least one label")
        labels = [as_str(v, f"{where}labels[{i}]") for i, v in enumerate(labels)]
        if len(set(labels)) != len(labels):
            raise ManifestError(f"{where}labels: labels must be unique")
        num_classes = as_int(require(data, "num_classes", where), f"{where}num_classes", 1)
        if num_classes != len(labels):
            raise ManifestError(f"{where}num_classes: is {num_classes} but there are {len(labels)} labels")
        return cls(
            frames=frames,
            size=size,
            short_side=short_side,
            mean=mean,
            std=std,
            labels=tuple(labels),
            checkpoint_sha256=as_sha(require(data, "checkpoint_sha256", where), f"{where}checkpoint_sha256"),
        )


@dataclass(frozen=True)
class GateEntry:
    """The gate engine: clip → stem ``features`` + ``bucket_logits``."""

    file: str
    sha256: str
    gflops: float

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "gflops": self.gflops}

    @classmethod
    def from_dict(cls, data: Any, where: str = "gate.") -> GateEntry:
        data = as_dict(data, where.rstrip("."))
        return cls(
            file=as_relpath(require(data, "file", where), f"{where}file"),
            sha256=as_sha(require(data, "sha256", where), f"{where}sha256"),
            gflops=as_float(require(data, "gflops", where), f"{where}gflops", positive=True),
        )


@dataclass(frozen=True)
class BucketEntry:
    """One policy bucket's engine. ``policy`` is one ``(pt, pc)`` per stage; ``path`` records, for TensorRT,
    whether the custom ops ran as the plugin or as the ONNX local functions (None for ONNX Runtime).
    ``short_name`` (``full``, ``t1c2``, …) is the exporter's, stored because the runtime cannot import the rule."""

    id: int
    name: str
    policy: tuple[tuple[int, int], ...]
    gflops: float
    file: str
    sha256: str
    path: str | None = None
    short_name: str | None = None

    @classmethod
    def from_export(cls, entry: Mapping[str, Any], file: str, sha256: str, path: str | None = None) -> BucketEntry:
        """The engine of one bucket of an export spec (``export.json``), built into ``file``."""
        short_name = entry.get("short_name")
        return cls(
            id=int(entry["id"]),
            name=str(entry["name"]),
            policy=tuple((int(p[0]), int(p[1])) for p in entry["policy"]),
            gflops=float(entry["gflops"]),
            file=file,
            sha256=sha256,
            path=path,
            short_name=None if short_name is None else str(short_name),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "policy": [list(p) for p in self.policy],
            "gflops": self.gflops,
            "file": self.file,
            "sha256": self.sha256,
            "path": self.path,
            "short_name": self.short_name,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BucketEntry:
        data = as_dict(data, where.rstrip("."))
        policy = as_list(require(data, "policy", where), f"{where}policy")
        if not policy:
            raise ManifestError(f"{where}policy: expected one [pt, pc] per stage, got an empty list")
        stages = []
        for i, stage in enumerate(policy):
            if not isinstance(stage, list) or len(stage) != 2:
                raise ManifestError(f"{where}policy[{i}]: expected [pt, pc], got {stage!r}")
            stages.append(
                (as_int(stage[0], f"{where}policy[{i}][0]", 0), as_int(stage[1], f"{where}policy[{i}][1]", 0))
            )
        path, short_name = data.get("path"), data.get("short_name")
        return cls(
            id=as_int(require(data, "id", where), f"{where}id", 0),
            name=as_str(require(data, "name", where), f"{where}name"),
            policy=tuple(stages),
            gflops=as_float(require(data, "gflops", where), f"{where}gflops", positive=True),
            file=as_relpath(require(data, "file", where), f"{where}file"),
            sha256=as_sha(require(data, "sha256", where), f"{where}sha256"),
            path=None if path is None else as_str(path, f"{where}path", OP_PATHS),
            short_name=None if short_name is None else as_str(short_name, f"{where}short_name"),
        )


@dataclass(frozen=True)
class WeightsEntry:
    """ONNX Runtime: the external-data file every bucket's initializers point into (memory-mapped, shared)."""

    file: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any, where: str = "weights.") -> WeightsEntry:
        data = as_dict(data, where.rstrip("."))
        return cls(
            file=as_relpath(require(data, "file", where), f"{where}file"),
            sha256=as_sha(require(data, "sha256", where), f"{where}sha256"),
        )
