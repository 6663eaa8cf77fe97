"""The engine directory's ``manifest.json``: a versioned, validated description of one set of engines (DESIGN.md §5).

The runtime reads it on edge devices without the training stack; the builders write it. ``Manifest.load`` trusts
nothing in the file: every field is checked for type and value, every path must stay inside the directory, and (by
default) every file's sha256 must match, so a runtime never runs an engine other than the one built and measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entries import OP_PATHS, BucketEntry, GateEntry, ModelSpec, WeightsEntry
from .errors import InputError, InputNotADirectoryError, InputNotFoundError
from .fields import (
    ChecksumError,
    EngineFileError,
    ManifestError,
    MissingEngineFileError,
    SchemaVersionError,
    as_dict,
    as_int,
    as_list,
    as_str,
    read_json,
    require,
    sha256_file,
)
from .paths import atomic_directory, check_output_dir, resolve_inside

#: The manifest schema this vared2 reads and writes. Bump it when a field changes meaning or becomes required.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")

__all__ = [
    "BACKENDS",
    "MANIFEST_NAME",
    "OP_PATHS",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "BucketEntry",
    "ChecksumError",
    "EngineFileError",
    "GateEntry",
    "Manifest",
    "ManifestError",
    "MissingEngineFileError",
    "ModelSpec",
    "SchemaVersionError",
    "WeightsEntry",
    "sha256_file",
    "write_engine_dir",
]


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about an engine directory, and nothing it has to guess."""

    name: str
    backend: str
    backend_version: str
    precision: str
    device: dict[str, Any]
    max_batch: int
    model: ModelSpec
    gate: GateEntry
    buckets: tuple[BucketEntry, ...]
    weights: WeightsEntry | None = None
    build_options: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Dataclass construction and from_dict agree: a Manifest object is always a valid one.
        object.__setattr__(self, "buckets", tuple(self.buckets))
        self.validate()

    # ---- checks -----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every field's type and value, then the cross-field rules. Errors name the field (``buckets[2].file``)."""
        parts: list[tuple[str, Any, Any]] = [("model", self.model, ModelSpec), ("gate", self.gate, GateEntry)]
        parts += [(f"buckets[{i}]", b, BucketEntry) for i, b in enumerate(self.buckets)]
        if self.weights is not None:
            parts.append(("weights", self.weights, WeightsEntry))
        for name, value, kind in parts:
            if not isinstance(value, kind):
                raise ManifestError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
            # Re-parsing checks objects built in Python exactly as from_dict checks JSON.
            kind.from_dict(value.to_dict(), f"{name}.")
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema_version: this vared2 reads manifest schema {SCHEMA_VERSION}, got {self.schema_version}"
            )
        as_str(self.name, "name")
        as_str(self.backend, "backend", BACKENDS)
        as_str(self.backend_version, "backend_version")
        as_str(self.precision, "precision", PRECISIONS)
        as_dict(self.device, "device")
        as_int(self.max_batch, "max_batch", 1)
        as_dict(self.build_options, "build_options")
        if not self.buckets:
            raise ManifestError("buckets: expected at least one bucket (bucket 0 is the full model)")
        stages = len(self.buckets[0].policy)
        names: set[str] = set()
        for i, bucket in enumerate(self.buckets):
            if bucket.id != i:
                raise ManifestError(
                    f"buckets[{i}].id: bucket ids must be 0..{len(self.buckets) - 1} in order "
                    f"(id k is column k of the gate's bucket_logits), got {bucket.id}"
                )
            if bucket.name in names:
                raise ManifestError(f"buckets[{i}].name: {bucket.name!r} is used by another bucket")
            names.add(bucket.name)
            if len(bucket.policy) != stages:
                raise ManifestError(f"buckets[{i}].policy: has {len(bucket.policy)} stages, buckets[0] has {stages}")
            if self.backend == "onnxruntime" and bucket.path is not None:
                raise ManifestError(f"buckets[{i}].path: only TensorRT engines record a path, got {bucket.path!r}")
        if any(stage != (0, 0) for stage in self.buckets[0].policy):
            full = [list(s) for s in self.buckets[0].policy]
            raise ManifestError(f"buckets[0].policy: bucket 0 must be the full model (all [0, 0]), got {full}")
        files: dict[str, str] = {}
        for name, entry_file in self.named_files():
            if entry_file == MANIFEST_NAME:
                raise ManifestError(f"{name}: must not be {MANIFEST_NAME}")
            if entry_file in files:
                raise ManifestError(f"{name}: {entry_file!r} is also {files[entry_file]}")
            files[entry_file] = name

    def named_files(self) -> list[tuple[str, str]]:
        """``(field, relative path)`` of every file the manifest names."""
        out = [("gate.file", self.gate.file)]
        out += [(f"buckets[{i}].file", b.file) for i, b in enumerate(self.buckets)]
        if self.weights is not None:
            out.append(("weights.file", self.weights.file))
        return out

    def _checksums(self) -> list[tuple[str, str, str]]:
        out = [("gate", self.gate.file, self.gate.sha256)]
        out += [(f"buckets[{i}]", b.file, b.sha256) for i, b in enumerate(self.buckets)]
        if self.weights is not None:
            out.append(("weights", self.weights.file, self.weights.sha256))
        return out

    def check_files(self, directory: Path | str, *, verify: bool = True) -> None:
        """Every named file exists, is a regular file inside ``directory`` (symlinks resolved), and — with
        ``verify`` — has the recorded sha256."""
        root = Path(directory).resolve()
        for where, rel, expected in self._checksums():
            path = resolve_inside(root, rel, f"{where}.file")
            if verify:
                actual = sha256_file(path)
                if actual != expected:
                    raise ChecksumError(path, expected, actual)

    # ---- lookups ----------------------------------------------------------------------------------------
    @property
    def num_buckets(self) -> int:
        return len(self.buckets)

    def bucket(self, key: int | str) -> BucketEntry:
        """A bucket by id, by name, or by short name where one bucket has it; a ``KeyError``-free ``ValueError``
        listing the choices otherwise."""
        for b in self.buckets:
            if (isinstance(key, str) and b.name == key) or (
                isinstance(key, int) and not isinstance(key, bool) and b.id == key
            ):
                return b
        by_short = [b for b in self.buckets if isinstance(key, str) and b.short_name == key]
        if len(by_short) == 1:
            return by_short[0]
        choices = ", ".join(f"{b.id} ({b.name}{f', {b.short_name}' if b.short_name else ''})" for b in self.buckets)
        if by_short:
            raise InputError(f"bucket {key!r} is ambiguous in engine {self.name!r}; buckets are: {choices}")
        raise InputError(f"no bucket {key!r} in engine {self.name!r}; buckets are: {choices}")

    # ---- (de)serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "precision": self.precision,
            "device": self.device,
            "max_batch": self.max_batch,
            "model": self.model.to_dict(),
            "gate": self.gate.to_dict(),
            "buckets": [b.to_dict() for b in self.buckets],
            "weights": None if self.weights is None else self.weights.to_dict(),
            "build_options": self.build_options,
            "created_by": self.created_by,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"manifest: expected a JSON object, got {type(data).__name__}")
        version = require(data, "schema_version", "")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ManifestError(f"schema_version: expected an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema_version: the manifest uses schema {version}, but this vared2 reads schema "
                f"{SCHEMA_VERSION}; upgrade vared2 or rebuild the engines with this version"
            )
        if version < 1:
            raise SchemaVersionError(f"schema_version: expected {SCHEMA_VERSION}, got {version}")
        buckets = as_list(require(data, "buckets", ""), "buckets")
        weights = data.get("weights")
        created_by = data.get("created_by", "")
        return cls(
            schema_version=version,
            name=as_str(require(data, "name", ""), "name"),
            backend=as_str(require(data, "backend", ""), "backend", BACKENDS),
            backend_version=as_str(require(data, "backend_version", ""), "backend_version"),
            precision=as_str(require(data, "precision", ""), "precision", PRECISIONS),
            device=as_dict(require(data, "device", ""), "device"),
            max_batch=as_int(require(data, "max_batch", ""), "max_batch", 1),
            model=ModelSpec.from_dict(require(data, "model", "")),
            gate=GateEntry.from_dict(require(data, "gate", "")),
            buckets=tuple(BucketEntry.from_dict(b, f"buckets[{i}].") for i, b in enumerate(buckets)),
            weights=None if weights is None else WeightsEntry.from_dict(weights),
            build_options=as_dict(data.get("build_options", {}), "build_options"),
            created_by=as_str(created_by, "created_by", empty=True),
        )

    @classmethod
    def load(cls, directory: Path | str, *, verify: bool = True) -> Manifest:
        """Read and validate ``directory/manifest.json`` and the files it names (sha256 too unless ``verify=False``)."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise InputNotADirectoryError(f"{directory}: a file, not an engine directory")
        if not directory.is_dir():
            raise InputNotFoundError(f"{directory}: no such engine directory")
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no manifest (is {directory} an engine directory built by vared2?)")
        data = read_json(path, ManifestError)
        try:
            manifest = cls.from_dict(data)
        except ManifestError as error:
            raise type(error)(f"{path}: {error}") from error
        manifest.check_files(directory, verify=verify)
        return manifest

    def write(self, directory: Path | str) -> Path:
        """Write ``manifest.json`` into ``directory`` (the files it names are the builder's job)."""
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def write_engine_dir(
    final_dir: Path | str, fill: Callable[[Path], Manifest], *, source: Path | str | None = None
) -> Manifest:
    """Build an engine directory atomically: ``fill`` writes the engine files into a temporary sibling directory
    and returns their manifest; the manifest is written and the whole directory re-read and verified, and only
    then renamed to ``final_dir``. An existing ``final_dir`` is replaced (renamed away, new one renamed in, old
    one deleted), so readers see the old directory or the new one, never a half-built one. If ``fill`` raises, the
    temporary directory is removed and nothing at ``final_dir`` changes.

    Only a previous engine directory (one with ``manifest.json``) or an empty one is replaced: anything else, the
    current directory or an ancestor of it, and (given ``source``, the ONNX directory) the source, a directory
    inside it or one containing it are refused before ``fill`` runs (``check_output_dir``).
    """
    # A symlinked ENGINE_DIR (``current -> engines-v2``) keeps its link: the directory it points to is rebuilt,
    # as ``vared2 export`` does for its output.
    final_dir = check_output_dir(
        final_dir, marker=MANIFEST_NAME, kind="an engine directory", source=source, source_kind="ONNX directory"
    )
    with atomic_directory(final_dir, label="building") as tmp:
        manifest = fill(tmp)
        if not isinstance(manifest, Manifest):
            raise TypeError(f"fill must return a Manifest, got {type(manifest).__name__}")
        manifest.write(tmp)
        manifest = Manifest.load(tmp, verify=True)
    return manifest
