"""Field checks shared by the on-disk formats: each returns the checked value or raises an error naming the field.

The manifest's errors live here too, since the checks raise them; all are ``InputError``s (so ``ValueError``s).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import InputError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(InputError):
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


def read_json(path: Path, error: type[ValueError]) -> Any:
    """``path`` parsed, or ``error`` naming it: bad JSON or UTF-8, a 5000-digit number, nesting deeper than the
    parser's recursion."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as reason:
        raise error(f"{path}: not valid JSON ({reason or type(reason).__name__})") from reason


def require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}{key}: missing")
    return data[key]


def as_int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ManifestError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def as_float(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1023:  # float() would overflow
        raise ManifestError(f"{name}: expected a finite number, got an integer of {len(str(abs(value)))} digits")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ManifestError(f"{name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ManifestError(f"{name}: expected a number > 0, got {value}")
    return float(value)


def as_str(value: Any, name: str, choices: tuple[str, ...] | None = None, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise ManifestError(f"{name}: expected a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise ManifestError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def as_sha(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ManifestError(f"{name}: expected 64 lowercase hex digits (a sha256), got {value!r}")
    return value


def as_dict(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ManifestError(f"{name}: expected an object with string keys, got {value!r}")
    return dict(value)


def as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(f"{name}: expected a list, got {value!r}")
    return value


def as_rgb(value: Any, name: str, positive: bool) -> tuple[float, float, float]:
    values = as_list(value, name)
    if len(values) != 3:
        raise ManifestError(f"{name}: expected 3 numbers (R, G, B), got {values!r}")
    r, g, b = (as_float(v, f"{name}[{i}]", positive=positive) for i, v in enumerate(values))
    return r, g, b


def as_relpath(value: Any, name: str) -> str:
    """A path inside the engine directory: relative, forward slashes, no ``..``; the symlink check is at load."""
    text = as_str(value, name)
    pure = PurePosixPath(text)
    if "\\" in text or pure.is_absolute() or text.startswith("~") or re.match(r"^[A-Za-z]:", text):
        raise ManifestError(f"{name}: must be a relative path inside the engine directory, got {text!r}")
    if any(part in ("..", ".", "") for part in text.split("/")):
        raise ManifestError(f"{name}: must not contain '..', '.' or empty components, got {text!r}")
    return text
