"""The engine directory's ``manifest.json``: a versioned, validated description of one set of engines (DESIGN.md §5).

Import-light on purpose (stdlib only): the runtime reads it on edge devices without the training stack, and the
exporter and the engine builders write it. ``Manifest.load`` trusts nothing in the file: every field is checked for
type and value, every path must stay inside the directory, and (by default) every file's sha256 must match, so a
runtime never runs an engine other than the one that was built and measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vared2.formats.errors import InputError, InputExistsError, InputNotADirectoryError, InputNotFoundError

#: The manifest schema this vared2 reads and writes. Bump it when a field changes meaning or becomes required.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: The exported model directory's description (``vared2 export`` writes it; the builders and ``verify`` read it).
EXPORT_JSON = "export.json"
EXPORT_FORMAT = "vared2-onnx"
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")
#: How TensorRT realised the custom ops of an engine: the AOT plugin, or the ONNX local functions as plain layers.
OP_PATHS = ("plugin", "local-functions")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """``manifest.json`` is malformed or does not match its directory. The message names the field or file."""


class SchemaVersionError(ManifestError):
    """The manifest was written with a schema this vared2 does not read (usually a newer vared2)."""


class EngineFileError(ManifestError):
    """A file the manifest names is unusable: outside the directory, not a regular file, or tampered with."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = Path(path)


class MissingEngineFileError(EngineFileError, FileNotFoundError):
    """A file the manifest names does not exist (also a ``FileNotFoundError``)."""


class ChecksumError(EngineFileError):
    """A file's sha256 differs from the one recorded when the engines were built."""

    def __init__(self, path: Path | str, expected: str, actual: str) -> None:
        super().__init__(path, f"sha256 is {actual}, the manifest expects {expected} (file changed since the build)")
        self.expected = expected
        self.actual = actual


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (engine and weight files can be hundreds of MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --- field checks: each raises ManifestError naming the field -------------------------------------------------


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}{key}: missing")
    return data[key]


def _int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ManifestError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _read_json(path: Path, error: type[ValueError]) -> Any:
    """``path`` parsed, or ``error`` naming it: bad JSON or UTF-8, a 5000-digit number, nesting deeper than the
    parser's recursion."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as reason:
        raise error(f"{path}: not valid JSON ({reason or type(reason).__name__})") from reason


def _float(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1023:  # float() would overflow
        raise ManifestError(f"{name}: expected a finite number, got an integer of {len(str(abs(value)))} digits")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ManifestError(f"{name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ManifestError(f"{name}: expected a number > 0, got {value}")
    return float(value)


def _str(value: Any, name: str, choices: tuple[str, ...] | None = None, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise ManifestError(f"{name}: expected a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise ManifestError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _sha(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ManifestError(f"{name}: expected 64 lowercase hex digits (a sha256), got {value!r}")
    return value


def _dict(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ManifestError(f"{name}: expected an object with string keys, got {value!r}")
    return dict(value)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(f"{name}: expected a list, got {value!r}")
    return value


def _rgb(value: Any, name: str, positive: bool) -> tuple[float, float, float]:
    values = _list(value, name)
    if len(values) != 3:
        raise ManifestError(f"{name}: expected 3 numbers (R, G, B), got {values!r}")
    r, g, b = (_float(v, f"{name}[{i}]", positive=positive) for i, v in enumerate(values))
    return r, g, b


def _relpath(value: Any, name: str) -> str:
    """A path inside the engine directory: relative, forward slashes, no ``..``; the symlink check is at load."""
    text = _str(value, name)
    pure = PurePosixPath(text)
    if "\\" in text or pure.is_absolute() or text.startswith("~") or re.match(r"^[A-Za-z]:", text):
        raise ManifestError(f"{name}: must be a relative path inside the engine directory, got {text!r}")
    if any(part in ("..", ".", "") for part in text.split("/")):
        raise ManifestError(f"{name}: must not contain '..', '.' or empty components, got {text!r}")
    return text


# --- the schema ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The model's input contract and classes: what the runtime must feed and how to name the outputs.

    ``size`` is the square crop; frames are first resized so their short side is ``short_side`` (default ``size``),
    exactly as ``vared2.models.video_io`` does for training.
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
        data = _dict(data, where.rstrip("."))
        frames = _int(_require(data, "frames", where), f"{where}frames", 1)
        size = _int(_require(data, "size", where), f"{where}size", 1)
        short_side = _int(data.get("short_side", size), f"{where}short_side", size)
        mean = _rgb(_require(data, "mean", where), f"{where}mean", positive=False)
        std = _rgb(_require(data, "std", where), f"{where}std", positive=True)
        labels = _list(_require(data, "labels", where), f"{where}labels")
        if not labels:
            raise ManifestError(f"{where}labels: expected at least one label")
        labels = [_str(v, f"{where}labels[{i}]") for i, v in enumerate(labels)]
        if len(set(labels)) != len(labels):
            raise ManifestError(f"{where}labels: labels must be unique")
        num_classes = _int(_require(data, "num_classes", where), f"{where}num_classes", 1)
        if num_classes != len(labels):
            raise ManifestError(f"{where}num_classes: is {num_classes} but there are {len(labels)} labels")
        return cls(
            frames=frames,
            size=size,
            short_side=short_side,
            mean=mean,
            std=std,
            labels=tuple(labels),
            checkpoint_sha256=_sha(_require(data, "checkpoint_sha256", where), f"{where}checkpoint_sha256"),
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
        data = _dict(data, where.rstrip("."))
        return cls(
            file=_relpath(_require(data, "file", where), f"{where}file"),
            sha256=_sha(_require(data, "sha256", where), f"{where}sha256"),
            gflops=_float(_require(data, "gflops", where), f"{where}gflops", positive=True),
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
        data = _dict(data, where.rstrip("."))
        policy = _list(_require(data, "policy", where), f"{where}policy")
        if not policy:
            raise ManifestError(f"{where}policy: expected one [pt, pc] per stage, got an empty list")
        stages = []
        for i, stage in enumerate(policy):
            if not isinstance(stage, list) or len(stage) != 2:
                raise ManifestError(f"{where}policy[{i}]: expected [pt, pc], got {stage!r}")
            stages.append((_int(stage[0], f"{where}policy[{i}][0]", 0), _int(stage[1], f"{where}policy[{i}][1]", 0)))
        path, short_name = data.get("path"), data.get("short_name")
        return cls(
            id=_int(_require(data, "id", where), f"{where}id", 0),
            name=_str(_require(data, "name", where), f"{where}name"),
            policy=tuple(stages),
            gflops=_float(_require(data, "gflops", where), f"{where}gflops", positive=True),
            file=_relpath(_require(data, "file", where), f"{where}file"),
            sha256=_sha(_require(data, "sha256", where), f"{where}sha256"),
            path=None if path is None else _str(path, f"{where}path", OP_PATHS),
            short_name=None if short_name is None else _str(short_name, f"{where}short_name"),
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
        data = _dict(data, where.rstrip("."))
        return cls(
            file=_relpath(_require(data, "file", where), f"{where}file"),
            sha256=_sha(_require(data, "sha256", where), f"{where}sha256"),
        )


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
        _str(self.name, "name")
        _str(self.backend, "backend", BACKENDS)
        _str(self.backend_version, "backend_version")
        _str(self.precision, "precision", PRECISIONS)
        _dict(self.device, "device")
        _int(self.max_batch, "max_batch", 1)
        _dict(self.build_options, "build_options")
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
        version = _require(data, "schema_version", "")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ManifestError(f"schema_version: expected an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema_version: the manifest uses schema {version}, but this vared2 reads schema "
                f"{SCHEMA_VERSION}; upgrade vared2 or rebuild the engines with this version"
            )
        if version < 1:
            raise SchemaVersionError(f"schema_version: expected {SCHEMA_VERSION}, got {version}")
        buckets = _list(_require(data, "buckets", ""), "buckets")
        weights = data.get("weights")
        created_by = data.get("created_by", "")
        return cls(
            schema_version=version,
            name=_str(_require(data, "name", ""), "name"),
            backend=_str(_require(data, "backend", ""), "backend", BACKENDS),
            backend_version=_str(_require(data, "backend_version", ""), "backend_version"),
            precision=_str(_require(data, "precision", ""), "precision", PRECISIONS),
            device=_dict(_require(data, "device", ""), "device"),
            max_batch=_int(_require(data, "max_batch", ""), "max_batch", 1),
            model=ModelSpec.from_dict(_require(data, "model", "")),
            gate=GateEntry.from_dict(_require(data, "gate", "")),
            buckets=tuple(BucketEntry.from_dict(b, f"buckets[{i}].") for i, b in enumerate(buckets)),
            weights=None if weights is None else WeightsEntry.from_dict(weights),
            build_options=_dict(data.get("build_options", {}), "build_options"),
            created_by=_str(created_by, "created_by", empty=True),
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
        data = _read_json(path, ManifestError)
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


def resolve_inside(root: Path, rel: str, name: str) -> Path:
    """``root/rel`` as an existing regular file whose real path is inside ``root`` (no symlink escapes)."""
    _relpath(rel, name)
    path = root / rel
    try:
        real = path.resolve()
        real.exists()
    except (OSError, ValueError) as error:  # a name too long for the file system, a NUL byte, a lone surrogate
        raise EngineFileError(path, f"{name}: not a usable file name ({error})") from None
    if not real.is_relative_to(root):
        raise EngineFileError(path, f"{name} resolves to {real}, outside the engine directory {root}")
    if not real.exists():
        raise MissingEngineFileError(path, f"{name}: no such file (the engine directory is incomplete)")
    if not real.is_file():
        raise EngineFileError(path, f"{name}: not a regular file")
    return real


def check_output_dir(
    out_dir: Path | str,
    *,
    marker: str,
    kind: str,
    source: Path | str | None = None,
    source_kind: str = "source directory",
) -> Path:
    """Refuse, before any work, an output directory a stage must not replace; return it resolved.

    A stage (``vared2 export``, ``vared2 build``) replaces its output directory as a whole, so ``out_dir`` may be
    replaced only if it does not exist, is an empty directory, or holds ``marker`` (a previous output of the same
    stage: ``export.json``, ``manifest.json``); otherwise ``FileExistsError`` (``NotADirectoryError`` for a file).
    Whatever its content, it must not be ``source`` (the stage's input), contain it or lie inside it, nor be the
    current working directory or one of its ancestors: ``ValueError``. Paths are compared with symlinks resolved.
    ``kind`` names what the directory should be (``"an ONNX export"``); every message names the directory.
    """
    out = Path(out_dir).resolve()
    name = os.fspath(out_dir) if Path(out_dir).absolute() == out else f"{os.fspath(out_dir)} (= {out})"
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:  # the working directory was deleted: nothing to protect there
        cwd = None
    if cwd is not None and cwd.is_relative_to(out):
        where = "the current directory" if cwd == out else f"an ancestor of the current directory {cwd}"
        raise InputError(f"{name} is {where}, which would be replaced as a whole; choose another --out")
    if source is not None:
        src = Path(source).resolve()
        if out == src:
            raise InputError(f"{name} is the {source_kind}, which would be replaced; choose another --out")
        if out.is_relative_to(src):
            raise InputError(f"{name} lies inside the {source_kind} {src}; choose another --out")
        if src.is_relative_to(out):
            raise InputError(f"{name} contains the {source_kind} {src}, which would be replaced; choose another --out")
    if out.exists():
        if not out.is_dir():
            raise InputNotADirectoryError(f"{name} exists and is not a directory; choose another --out")
        if not (out / marker).is_file() and any(out.iterdir()):
            raise InputExistsError(f"{name} exists and is not {kind} (no {marker}); choose another --out or empty it")
    return out


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
    parent = final_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.building-", dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)  # mkdtemp makes 0700 directories; engines are served by other users' processes
    try:
        manifest = fill(tmp)
        if not isinstance(manifest, Manifest):
            raise TypeError(f"fill must return a Manifest, got {type(manifest).__name__}")
        manifest.write(tmp)
        manifest = Manifest.load(tmp, verify=True)
        if final_dir.exists() or final_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=parent))
            old.rmdir()
            os.replace(final_dir, old)
            try:
                os.replace(tmp, final_dir)
            except BaseException:
                os.replace(old, final_dir)  # put the previous build back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_export_spec(onnx_dir: Path) -> dict[str, Any]:
    """``export.json`` of an exported model directory, checked for what the builders and ``vared2 verify`` use."""
    path = Path(onnx_dir) / EXPORT_JSON
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no export.json (is {onnx_dir} a directory written by `vared2 export`?)")
    spec = _read_json(path, InputError)
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise InputError(
            f"{path}: format must be {EXPORT_FORMAT!r}, got {spec.get('format') if isinstance(spec, dict) else spec!r}"
        )
    for key in ("model", "gate", "buckets"):
        if key not in spec:
            raise InputError(f"{path}: missing field {key!r}")
    if not isinstance(spec["buckets"], list) or not spec["buckets"]:
        raise InputError(f"{path}: buckets: expected a list of at least one bucket, got {spec['buckets']!r:.80}")
    entries = {"gate": spec["gate"], **{f"buckets[{i}]": b for i, b in enumerate(spec["buckets"])}}
    for field_name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise InputError(f"{path}: {field_name}.file: expected a file name, in an object, got {entry!r:.80}")
    _check_export_fields(spec, path)
    files = [entry["file"] for entry in entries.values()]
    for file in files:
        if len(file.encode("utf-8", "replace")) > 255 or "\0" in file:
            raise InputError(f"{path}: file {file!r:.80}: not a usable file name")
        if Path(file).name != file:
            raise InputError(f"{path}: file {file!r} must be a plain file name inside {onnx_dir}")
        if not (Path(onnx_dir) / file).is_file():
            raise InputNotFoundError(f"{Path(onnx_dir) / file}: listed in export.json but missing")
    return spec


def _check_export_fields(spec: dict[str, Any], path: Path) -> None:
    """The fields the builders turn into a manifest, checked before the parity build so a bad one is named then
    (and a ``num_classes`` of 10**9 without labels does not build a billion placeholder names)."""

    def bad(field_name: str, expected: str, value: Any) -> None:
        raise InputError(f"{path}: {field_name}: expected {expected}, got {value!r:.80}")

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
