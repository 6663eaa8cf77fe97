"""The model config (DESIGN.md §2): everything needed to rebuild a VA-RED2 VideoResNet and to feed it.

Torch-free: architecture, bucket table, input spec, labels and free-form provenance, with every field checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vared2.formats.errors import InputError, InputTypeError
from vared2.formats.video import MAX_FRAMES, MAX_SIZE

from .buckets import BACKBONES, BucketTable, default_buckets

__all__ = ["GATE_HIDDEN", "KINETICS_MEAN", "KINETICS_STD", "ModelConfig"]

# torchvision's video presets (Kinetics-400).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
GATE_HIDDEN = 64
MAX_CLASSES = 1_000_000  # as export.json's check: a label per class must fit in a manifest


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (and to feed it): architecture, bucket table, input spec, labels.

    ``buckets`` left empty means the backbone's default table for ``frames``; the stored config always lists
    the resolved names. ``provenance`` is free-form JSON (how the weights were trained) and the only field that
    may be reassigned: the others describe layers already built (use ``dataclasses.replace`` and a new model).
    """

    backbone: str = "r2plus1d_18"
    width: float = 1.0
    num_classes: int = 400
    frames: int = 16
    size: int = 112
    mean: tuple[float, ...] = KINETICS_MEAN
    std: tuple[float, ...] = KINETICS_STD
    labels: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    gate_hidden: int = GATE_HIDDEN
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def fail(name: str, problem: str, kind: type[Exception] = InputError) -> None:
            raise kind(f"ModelConfig.{name}: {problem}")

        if self.backbone not in BACKBONES:
            fail("backbone", f"unknown {self.backbone!r}; expected one of {', '.join(BACKBONES)}")
        if not _is_number(self.width):
            fail("width", f"must be a number, got {type(self.width).__name__}", InputTypeError)
        if not (math.isfinite(self.width) and self.width > 0):
            fail("width", f"must be > 0, got {self.width}")
        object.__setattr__(self, "width", float(self.width))
        for name in ("num_classes", "frames", "size", "gate_hidden"):
            value = getattr(self, name)
            if not _is_int(value):
                fail(name, f"must be an int, got {type(value).__name__}", InputTypeError)
            if value < 1:
                fail(name, f"must be >= 1, got {value}")
            limit = {"frames": MAX_FRAMES, "size": MAX_SIZE, "num_classes": MAX_CLASSES}.get(name)
            if limit is not None and value > limit:
                fail(name, f"must be <= {limit}, got {value}")
        for name in ("mean", "std"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(_is_number(v) and math.isfinite(v) for v in value):
                fail(name, f"must be 3 finite numbers (RGB), got {list(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            fail("std", f"must be positive, got {list(self.std)}")
        labels = tuple(self.labels)
        if not all(isinstance(label, str) for label in labels):
            fail("labels", "must be strings", InputTypeError)
        if labels and len(labels) != self.num_classes:
            fail("labels", f"{len(labels)} labels for {self.num_classes} classes")
        object.__setattr__(self, "labels", labels)
        try:
            table = BucketTable(self.buckets) if self.buckets else default_buckets(self.backbone, self.frames)
        except (TypeError, ValueError) as error:
            raise InputError(f"ModelConfig.buckets: {error}") from None
        object.__setattr__(self, "buckets", table.names)
        if not isinstance(self.provenance, dict):
            fail("provenance", f"must be a dict, got {type(self.provenance).__name__}", InputTypeError)
        self._check_provenance()
        object.__setattr__(self, "_built", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "provenance" and getattr(self, "_built", False):
            raise AttributeError(f"ModelConfig.{name} is read-only (only provenance may be reassigned)")
        object.__setattr__(self, name, value)

    def _check_provenance(self) -> None:
        try:
            json.dumps(self.provenance)
        except (TypeError, ValueError) as error:
            raise InputError(f"ModelConfig.provenance: must be JSON-serialisable ({error})") from None

    @property
    def bucket_table(self) -> BucketTable:
        return BucketTable(self.buckets)

    def summary(self) -> str:
        """One line naming the architecture, for messages that compare two models."""
        return (
            f"{self.backbone} w{self.width} {self.frames}x{self.size}, {self.num_classes} classes, "
            f"gate {self.gate_hidden}, buckets {list(self.buckets)}"
        )

    def to_json(self) -> dict[str, Any]:
        self._check_provenance()
        data = asdict(self)
        for name in ("mean", "std", "labels", "buckets"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: object) -> ModelConfig:
        """From ``to_json``'s dict; every problem is a ValueError naming the field."""
        if not isinstance(data, dict):
            raise InputError(f"a model config is a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown model config field(s): {', '.join(unknown)}")
        missing = sorted(known - {"provenance"} - set(data))
        if missing:
            raise InputError(f"missing model config field(s): {', '.join(missing)}")
        values = dict(data)
        for name in ("mean", "std", "labels", "buckets"):
            if not isinstance(values[name], list):
                raise InputError(f"ModelConfig.{name}: must be a JSON list, got {type(values[name]).__name__}")
            values[name] = tuple(values[name])
        if "labels" in values and not all(isinstance(v, str) for v in values["labels"]):
            raise InputError("ModelConfig.labels: must be strings")
        if not isinstance(values.get("backbone"), str):
            raise InputError("ModelConfig.backbone: must be a string")
        try:
            return cls(**values)
        except TypeError as error:
            raise InputError(str(error)) from None
