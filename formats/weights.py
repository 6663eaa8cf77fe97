"""``weights.bin``: every distinct initializer of an ONNX Runtime engine directory, stored once; one writer and
one reader of it.

A bucket's partial-convolution weight is a prefix of the full bucket's tensor, so it is the same bytes viewed with a
smaller shape. Layout (little-endian; docs/engines.md): magic ``b"VRD2WTS1"``, a uint64 index length, the JSON index
(``alignment``, ``tensors`` [offset, length, dtype, shape], ``models`` {engine file: {initializer: tensor}}), then the
tensor data, each stored tensor at an ``alignment``-aligned absolute offset. numpy only.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputNotFoundError

MAGIC = b"VRD2WTS1"
HEADER = struct.Struct("<8sQ")
WEIGHTS_FILE = "weights.bin"
#: Page size: ONNX Runtime memory-maps external data only at offsets it can map directly (docs/engines.md).
ALIGNMENT = 4096
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


@dataclass(frozen=True)
class TensorView:
    """One tensor's bytes inside ``weights.bin``."""

    offset: int
    length: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class WeightsIndex:
    """The parsed index of a ``weights.bin``: tensor views and, per engine file, initializer name → view."""

    alignment: int
    data_start: int
    tensors: tuple[TensorView, ...]
    models: dict[str, dict[str, int]]


def encode_header(index: dict[str, Any], alignment: int) -> bytes:
    """Magic, length and JSON index, zero-padded to ``alignment`` (the builder writes the tensors after it)."""
    text = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    head = HEADER.pack(MAGIC, len(text)) + text
    return head + b"\0" * (-len(head) % alignment)


class WeightsFileError(InputError):
    """A weights file that is not one vared2 wrote, or is damaged. The message names the file and the field."""


def read_index(path: Path | str) -> WeightsIndex:
    """Parse and check the index of ``path``; errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such weights file")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) != HEADER.size:
            raise WeightsFileError(f"{path}: too short for a vared2 weights file ({size} bytes)")
        magic, length = HEADER.unpack(raw)
        if magic != MAGIC:
            raise WeightsFileError(f"{path}: not a vared2 weights file (magic {magic!r}, expected {MAGIC!r})")
        if HEADER.size + length > size:
            raise WeightsFileError(f"{path}: index length {length} runs past the end of the file ({size} bytes)")
        try:
            data = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise WeightsFileError(f"{path}: the index is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise WeightsFileError(f"{path}: the index must be a JSON object, got {type(data).__name__}")
    alignment = data.get("alignment")
    if not isinstance(alignment, int) or alignment < 1:
        raise WeightsFileError(f"{path}: index.alignment must be a positive integer, got {alignment!r}")
    start = HEADER.size + length
    start += -start % alignment
    tensors = []
    entries, models_field = data.get("tensors", []), data.get("models", {})
    if not isinstance(entries, list) or not isinstance(models_field, dict):
        raise WeightsFileError(f"{path}: index.tensors must be a list and index.models an object")
    for i, t in enumerate(entries):
        where = f"{path}: index.tensors[{i}]"
        if not isinstance(t, dict) or t.get("dtype") not in DTYPES:
            got = t.get("dtype") if isinstance(t, dict) else t
            raise WeightsFileError(f"{where}.dtype: expected one of {', '.join(DTYPES)}, got {got!r}")
        try:
            view = TensorView(int(t["offset"]), int(t["length"]), t["dtype"], tuple(int(d) for d in t["shape"]))
        except (KeyError, TypeError, ValueError) as error:
            raise WeightsFileError(f"{where}: expected integer offset, length and shape ({error!r})") from None
        if view.length != np.dtype(view.dtype).itemsize * int(np.prod(view.shape, dtype=np.int64)):
            raise WeightsFileError(f"{where}: length {view.length} does not match {view.dtype}{list(view.shape)}")
        if view.offset < start or view.offset + view.length > size:
            raise WeightsFileError(f"{where}: bytes {view.offset}..{view.offset + view.length} are outside the data")
        tensors.append(view)
    models: dict[str, dict[str, int]] = {}
    for model, names in models_field.items():
        if not isinstance(names, dict):
            raise WeightsFileError(f"{path}: index.models[{model!r}]: expected an object, got {names!r:.80}")
        for name, k in names.items():
            if not isinstance(k, int) or not 0 <= k < len(tensors):
                raise WeightsFileError(f"{path}: index.models[{model!r}][{name!r}]: no tensor view {k!r}")
        models[model] = dict(names)
    return WeightsIndex(alignment, start, tuple(tensors), models)


@dataclass
class PackStats:
    """What deduplication achieved: bytes referenced by all engine files vs bytes stored."""

    referenced_bytes: int = 0
    stored_bytes: int = 0
    external_tensors: int = 0
    distinct_tensors: int = 0


def write_weights(
    tensors: Mapping[str, Sequence[tuple[str, np.ndarray]]], path: Path, *, alignment: int = ALIGNMENT
) -> tuple[dict[tuple[str, str], tuple[int, int]], PackStats]:
    """Write ``tensors`` (engine file name → its ``(initializer name, array)`` pairs) into one weights file at
    ``path``; return where each landed, ``(file, name) → (offset, length)``, and the deduplication stats.

    Tensors are placed largest first, so a full weight is stored before the prefixes other buckets use. A tensor
    reuses stored bytes when a stored tensor of the same name starts with its bytes, or when a stored tensor has
    exactly its bytes; otherwise it is appended at the next ``alignment`` boundary.
    """
    candidates = [
        (file, name, np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False))
        for file, entries in tensors.items()
        for name, array in entries
    ]
    for file, name, array in candidates:
        if str(array.dtype.newbyteorder("=")) not in DTYPES:
            raise InputError(f"{file}: initializer {name!r} has dtype {array.dtype}, not one of {', '.join(DTYPES)}")
    candidates.sort(key=lambda c: -c[2].nbytes)

    blobs: list[bytes] = []  # stored regions, in file order
    offsets: list[int] = []
    by_name: dict[str, list[int]] = {}
    by_digest: dict[bytes, int] = {}
    views: dict[tuple[int, int, str, tuple[int, ...]], int] = {}
    index_models: dict[str, dict[str, int]] = {file: {} for file in tensors}
    placements: dict[tuple[str, str], tuple[int, int]] = {}  # (file, name) -> (region, length)
    stats = PackStats()
    relative = 0  # offsets relative to the data start, fixed up once the header size is known
    for file, name, array in candidates:
        data = array.tobytes()
        region = next((r for r in by_name.get(name, []) if blobs[r].startswith(data)), None)
        if region is None:
            region = by_digest.get(hashlib.sha256(data).digest())
        if region is None:
            relative += -relative % alignment
            region = len(blobs)
            blobs.append(data)
            offsets.append(relative)
            relative += len(data)
            by_digest[hashlib.sha256(data).digest()] = region
            stats.stored_bytes += len(data)
        by_name.setdefault(name, []).append(region)
        key = (region, len(data), str(array.dtype.newbyteorder("=")), tuple(int(d) for d in array.shape))
        index_models[file][name] = views.setdefault(key, len(views))
        placements[(file, name)] = (region, len(data))
        stats.referenced_bytes += len(data)
        stats.external_tensors += 1
    stats.distinct_tensors = len(blobs)

    # The header holds absolute offsets, and its own size moves the data: iterate until it settles.
    data_start = alignment
    while True:
        entries = [
            {"offset": data_start + offsets[r], "length": n, "dtype": dtype, "shape": list(shape)}
            for (r, n, dtype, shape), _ in sorted(views.items(), key=lambda kv: kv[1])
        ]
        header = encode_header({"alignment": alignment, "tensors": entries, "models": index_models}, alignment)
        if len(header) == data_start:
            break
        data_start = len(header)

    with path.open("wb") as f:
        f.write(header)
        for region, blob in enumerate(blobs):
            f.seek(data_start + offsets[region])
            f.write(blob)
        f.truncate(data_start + relative)
    where = {key: (data_start + offsets[region], length) for key, (region, length) in placements.items()}
    return where, stats
