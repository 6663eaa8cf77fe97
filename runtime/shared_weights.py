"""One copy of an ONNX Runtime engine directory's weights per process (and per host), shared by every session.

The ONNX Runtime builder writes every distinct initializer of the gate and the buckets once into
``weights.bin``; a bucket's partial-convolution weight is a prefix of the full bucket's tensor, so it is
the same bytes viewed with a smaller shape. This module memory-maps that file read-only, wraps each
tensor view in an ``OrtValue`` *without copying* (created once per process), and hands those to every
session through ``SessionOptions.add_initializer``: ONNX Runtime then uses the caller's buffers instead of
loading its own copy, and keeps shared initializers out of constant folding. The mapped pages belong to
the page cache, so they are shared by all sessions and by all processes on the host.

``weights.bin`` layout (little-endian)::

    0   8 bytes   magic b"VRD2WTS1"
    8   8 bytes   uint64: length L of the JSON index
    16  L bytes   JSON index (utf-8)
    ... tensor data, each view starting at an ``alignment``-aligned absolute offset

The index (torch- and onnx-free)::

    {"alignment": 4096,
     "tensors": [{"offset": o, "length": n, "dtype": "float32", "shape": [..]}, ...],
     "models": {"bucket_1.onnx": {"layer2.0.conv1.0.0.weight": 7, ...}, ...}}

``models`` maps each engine file's initializer names to a tensor view; the same offset can appear in
several views (a full weight and its prefixes).

Workspace memory (im2col buffers, activations) is the other per-session cost: each session's CPU arena
keeps its peak. ``SharedWeights.open`` therefore also registers one CPU arena with ONNX Runtime's
environment (once per process), and ``session_options_for`` opts sessions into it
(``session.use_env_allocators``), so the gate and the buckets — which run one after another — reuse the
same workspace. Numpy and onnxruntime only: the runtime imports this.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from vared2.formats.errors import InputError, InputNotFoundError

MAGIC = b"VRD2WTS1"
HEADER = struct.Struct("<8sQ")
WEIGHTS_FILE = "weights.bin"
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


def read_index(path: Path | str) -> WeightsIndex:
    """Parse and check the index of ``path``; errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such weights file")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) != HEADER.size:
            raise InputError(f"{path}: too short for a vared2 weights file ({size} bytes)")
        magic, length = HEADER.unpack(raw)
        if magic != MAGIC:
            raise InputError(f"{path}: not a vared2 weights file (magic {magic!r}, expected {MAGIC!r})")
        if HEADER.size + length > size:
            raise InputError(f"{path}: index length {length} runs past the end of the file ({size} bytes)")
        try:
            data = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: the index is not valid JSON ({error})") from error
    alignment = data.get("alignment")
    if not isinstance(alignment, int) or alignment < 1:
        raise InputError(f"{path}: index.alignment must be a positive integer, got {alignment!r}")
    start = HEADER.size + length
    start += -start % alignment
    tensors = []
    for i, t in enumerate(data.get("tensors", [])):
        where = f"{path}: index.tensors[{i}]"
        if t.get("dtype") not in DTYPES:
            raise InputError(f"{where}.dtype: expected one of {', '.join(DTYPES)}, got {t.get('dtype')!r}")
        view = TensorView(int(t["offset"]), int(t["length"]), t["dtype"], tuple(int(d) for d in t["shape"]))
        if view.length != np.dtype(view.dtype).itemsize * int(np.prod(view.shape, dtype=np.int64)):
            raise InputError(f"{where}: length {view.length} does not match {view.dtype}{list(view.shape)}")
        if view.offset < start or view.offset + view.length > size:
            raise InputError(f"{where}: bytes {view.offset}..{view.offset + view.length} are outside the data")
        tensors.append(view)
    models: dict[str, dict[str, int]] = {}
    for model, names in data.get("models", {}).items():
        for name, k in names.items():
            if not isinstance(k, int) or not 0 <= k < len(tensors):
                raise InputError(f"{path}: index.models[{model!r}][{name!r}]: no tensor view {k!r}")
        models[model] = dict(names)
    return WeightsIndex(alignment, start, tuple(tensors), models)


_allocator_lock = threading.Lock()
_allocator_registered = False


def register_shared_allocator() -> bool:
    """Register one CPU arena allocator with ONNX Runtime's process-wide environment (idempotent).

    Sessions created with ``session.use_env_allocators=1`` then share it instead of each growing its own
    arena. Returns False when another component registered a CPU allocator first (that one is shared then).
    """
    global _allocator_registered
    with _allocator_lock:
        if _allocator_registered:
            return True
        _allocator_registered = True
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({}))
        except Exception:  # ORT raises its own Fail type when a CPU allocator is already registered
            return False
        return True


class SharedWeights:
    """A read-only memory map of one ``weights.bin`` and one ``OrtValue`` per tensor view over it.

    Use ``SharedWeights.open(engine_dir)``: it returns the same object for the same file within a process,
    so every session of every runtime on that directory shares one mapping. The object (and with it the
    mapping the sessions read from) lives as long as the process; ONNX Runtime does not own these buffers.
    """

    _cache: ClassVar[dict[tuple[str, int, int], SharedWeights]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        if sys.byteorder != "little":
            raise InputError("vared2 weights files are little-endian; this host is big-endian")
        self.path = path
        self.index = read_index(path)
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        self._arrays: dict[int, np.ndarray] = {}
        self._values: dict[int, ort.OrtValue] = {}
        for k, view in enumerate(self.index.tensors):
            raw = self._map[view.offset : view.offset + view.length]
            self._arrays[k] = raw.view(np.dtype(view.dtype)).reshape(view.shape)
            # ortvalue_from_numpy wraps a CPU array's buffer without copying; the OrtValue keeps it alive.
            self._values[k] = ort.OrtValue.ortvalue_from_numpy(self._arrays[k])

    @classmethod
    def open(cls, engine_dir: Path | str, file: str = WEIGHTS_FILE) -> SharedWeights:
        """The process-wide ``SharedWeights`` of ``engine_dir/file`` (created on first use)."""
        path = (Path(engine_dir) / file).resolve()
        if not path.is_file():
            raise InputNotFoundError(
                f"{path}: no such weights file (is {engine_dir} an ONNX Runtime engine directory?)"
            )
        stat = path.stat()
        key = (str(path), stat.st_ino, stat.st_mtime_ns)
        register_shared_allocator()
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls(path)
            return cls._cache[key]

    @property
    def nbytes(self) -> int:
        """Size of the mapped file."""
        return int(self._map.size)

    def initializers(self, model_file: str) -> dict[str, ort.OrtValue]:
        """Initializer name → shared ``OrtValue`` for one engine file (its name relative to the directory)."""
        key = Path(model_file).name
        if key not in self.index.models:
            known = ", ".join(sorted(self.index.models))
            raise KeyError(f"{self.path}: the index has no engine file {key!r} (it has {known})")
        return {name: self._values[k] for name, k in self.index.models[key].items()}

    def array(self, model_file: str, name: str) -> np.ndarray:
        """A read-only numpy view of one initializer (for checks and tools)."""
        self.initializers(model_file)  # the clear error for an unknown file
        return self._arrays[self.index.models[Path(model_file).name][name]]

    def session_options_for(
        self, model_file: str, base_options: ort.SessionOptions | None = None
    ) -> ort.SessionOptions:
        """``base_options`` (or defaults) with every initializer ``model_file`` needs added once, shared, and
        the process-wide CPU arena opted into.

        Prepacking is turned off: a prepacked weight is a per-session copy, which is what sharing avoids.
        """
        options = base_options if base_options is not None else ort.SessionOptions()
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.add_session_config_entry("session.use_env_allocators", "1")
        for name, value in self.initializers(model_file).items():
            options.add_initializer(name, value)
        return options


def session_options_for(
    engine_dir: Path | str, model_file: str, base_options: ort.SessionOptions | None = None
) -> ort.SessionOptions:
    """Shortcut: ``SharedWeights.open(engine_dir).session_options_for(model_file, base_options)``."""
    return SharedWeights.open(engine_dir).session_options_for(model_file, base_options)
