"""ONNX Runtime sessions on vared2's engine files, made one way for the build's parity check and the runtime alike.

Each engine file's initializers come from one read-only memory map of ``weights.bin`` per process, wrapped as
``OrtValue``s without copying and handed to every session (``SessionOptions.add_initializer``); sessions share one
CPU arena registered with ONNX Runtime's environment. The optimisation level is applied at load, never saved: a
saved ``ORT_ENABLE_ALL`` graph holds layouts for the build machine's CPU (docs/engines.md).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from .errors import InputError, InputNotFoundError
from .weights import WEIGHTS_FILE, read_index

#: ONNX Runtime graph optimisation levels by the names the build options and the manifest use.
LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: Why "all" is the default: docs/performance.md.
DEFAULT_LEVEL = "all"

#: Session config entries every session gets unless the manifest's ``build_options["ort_session_config"]`` says
#: otherwise. Sessions run one after another (gate, then a bucket); idle intra-op threads that spin would compete
#: with the busy session for the same cores, so they sleep instead.
DEFAULT_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}
#: What the ONNX Runtime builder records as ``ort_session_config``: one CPU arena shared by the sessions, and no
#: prepacking (a prepacked weight is a per-session copy, which sharing avoids).
ENGINE_SESSION_CONFIG = {"session.use_env_allocators": "1", "session.disable_prepacking": "1"}


def check_level(level: str, name: str = "optimization") -> str:
    """``level`` if it names an optimisation level; an ``InputError`` naming ``name`` and the choices if not."""
    if level not in LEVELS:
        raise InputError(f"{name}: expected one of {', '.join(LEVELS)}, got {level!r}")
    return level


def session_options(level: str, threads: int | None, config: Mapping[str, str]) -> ort.SessionOptions:
    """The ``SessionOptions`` every vared2 session uses: the graph optimisation ``level`` (a key of ``LEVELS``),
    ``threads`` intra-op threads (None: ORT's default), sequential execution, and the config entries ``config``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[check_level(level)]
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    for key, value in config.items():
        options.add_session_config_entry(str(key), str(value))
    return options


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
    ``SharedWeights(path)`` maps a file outside that cache (the build's check of a directory about to move).
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

        Prepacking is turned off: a prepacked weight is a per-session copy, which is what sharing avoids. For
        tools that build their own options; vared2 loads engines with ``open_session``.
        """
        options = base_options if base_options is not None else ort.SessionOptions()
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.add_session_config_entry("session.use_env_allocators", "1")
        for name, value in self.initializers(model_file).items():
            options.add_initializer(name, value)
        return options


def open_session(
    path: Path | str,
    *,
    level: str = DEFAULT_LEVEL,
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
    weights: SharedWeights | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    configure: Callable[[ort.SessionOptions], None] | None = None,
) -> ort.InferenceSession:
    """A session on one engine file as vared2 runs it: ``session_options`` with ``DEFAULT_SESSION_CONFIG`` under
    ``config``, the file's initializers from ``weights`` (prepacking off unless ``config`` asks for it),
    ``configure`` applied last (the runtime's shared thread pool). The build's parity check and the runtime both
    load engines through here."""
    entries = {**DEFAULT_SESSION_CONFIG, **(config or {})}
    if weights is not None:  # a prepacked weight is a per-session copy; int8 engines ask for it (their speed needs it)
        entries.setdefault("session.disable_prepacking", "1")
    if entries.get("session.use_env_allocators") == "1":
        register_shared_allocator()
    options = session_options(level, threads, entries)
    if configure is not None:
        configure(options)
    if weights is not None:
        for name, value in weights.initializers(Path(path).name).items():
            options.add_initializer(name, value)
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    # ORT does not own the initializers' buffers: the session keeps the mapping they live in.
    session._vared2_weights = weights
    return session
