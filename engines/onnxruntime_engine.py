"""ONNX Runtime engines (the embedded default, CPU): one ONNX file per bucket and one for the gate, all
pointing into one shared weights file (DESIGN.md §5).

Every distinct initializer is stored once in ``weights.bin``. A bucket's partial-convolution weight
``W[:C_c]`` is a prefix of the full bucket's ``W`` under the same initializer name, i.e. a byte prefix in
row-major order, so it becomes the same offset with a shorter length; anything else identical is
deduplicated by content. Each engine file keeps its graph (model-local functions included; ONNX Runtime
inlines them at load) and refers to its initializers as ONNX external data (location, offset, length), so a
plain ``InferenceSession(path)`` works too; ``vared2.runtime.shared_weights`` hands the same bytes to
every session once, memory-mapped, which is what keeps N sessions near the memory of one.

Graph optimisations are applied when a session is created, not saved: a saved ``ORT_ENABLE_ALL`` graph
holds layouts for the build machine's CPU. ``docs/engines.md`` has the measurements behind the choices.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from vared2.engines.manifest import (
    BucketEntry,
    GateEntry,
    Manifest,
    ModelSpec,
    WeightsEntry,
    read_export_spec,
    sha256_file,
)
from vared2.engines.ort_frames import skip_unread_frames
from vared2.engines.ort_gate_head import motion_head_for_ort
from vared2.engines.ort_phases import split_temporal_phases
from vared2.engines.ort_specialize import is_specialized_initializer, specialize
from vared2.engines.ort_stem import stem_for_ort
from vared2.formats.errors import CheckFailed, InputError, InputTypeError

# The weights file format (documented in vared2.runtime.shared_weights, which reads it; the runtime cannot
# import the builders and vice versa, so the few constants live in both and a test checks they agree).
WEIGHTS_FILE = "weights.bin"
MAGIC = b"VRD2WTS1"
HEADER = struct.Struct("<8sQ")
#: Page size: ONNX Runtime memory-maps external data only at offsets it can map directly (docs/engines.md).
ALIGNMENT = 4096
#: Tensors smaller than this stay inside the engine file (shape constants, scalars): sharing them saves
#: nothing and keeps kernels that need constant inputs at creation time happy.
MIN_EXTERNAL_BYTES = 1024
#: ONNX Runtime optimisation levels by name; see ``docs/performance.md`` for why "all" is the default.
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: "all" lets ONNX Runtime run the specialised reconstruction's 2-D depthwise convolutions with its NCHWc kernels
#: (``vared2.engines.ort_specialize``); the 3-D convolutions are the same at every level (docs/performance.md).
DEFAULT_LEVEL = "all"
#: Version of the build-time graph rewrite (part of the build key: a new rewrite rebuilds existing engines).
GRAPH_REWRITE = "ort-specialize-10"
#: Parity between an engine and the ONNX file it was built from (same input, fp32).
TOLERANCE = 1e-4


class ParityError(CheckFailed, RuntimeError):
    """An engine's output differs from its source ONNX beyond the tolerance: the build fails (exit code 1)."""


@dataclass
class PackStats:
    """What deduplication achieved: bytes referenced by all engine files vs bytes stored."""

    referenced_bytes: int = 0
    stored_bytes: int = 0
    external_tensors: int = 0
    distinct_tensors: int = 0


def _tensor_array(tensor: TensorProto) -> np.ndarray:
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)


def encode_header(index: dict[str, Any], alignment: int) -> bytes:
    """Magic, length and JSON index, zero-padded to ``alignment``; the tensors follow."""
    text = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    head = HEADER.pack(MAGIC, len(text)) + text
    return head + b"\0" * (-len(head) % alignment)


def read_header(path: Path) -> dict[str, Any]:
    """The JSON index at the start of a weights file written by ``pack_weights``."""
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
        if len(raw) != HEADER.size:
            raise InputError(f"{path}: too short for a vared2 weights file ({len(raw)} bytes)")
        magic, length = HEADER.unpack(raw)
        if magic != MAGIC:
            raise InputError(f"{path}: not a vared2 weights file (magic {magic!r}, expected {MAGIC!r})")
        try:
            index: dict[str, Any] = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: the index is not valid JSON ({error})") from error
    return index


def pack_weights(
    models: dict[str, onnx.ModelProto],
    weights_path: Path,
    *,
    alignment: int = ALIGNMENT,
    min_bytes: int = MIN_EXTERNAL_BYTES,
) -> PackStats:
    """Move the initializers of ``models`` (engine file name → model, rewritten in place) into one file.

    Tensors are placed largest first, so a full weight is stored before the prefixes other buckets use.
    A tensor reuses stored bytes when a stored tensor of the same name starts with its bytes, or when a
    stored tensor has exactly its bytes; otherwise it is appended at the next ``alignment`` boundary.
    """
    candidates: list[tuple[str, TensorProto, np.ndarray]] = []
    for file, model in models.items():
        for tensor in model.graph.initializer:
            if is_specialized_initializer(tensor.name):
                continue  # per-bucket constants of a specialised reconstruction: small, never shared, kept inline
            array = _tensor_array(tensor)
            if array.nbytes >= min_bytes:
                candidates.append((file, tensor, array))
    candidates.sort(key=lambda c: -c[2].nbytes)

    blobs: list[bytes] = []  # stored regions, in file order
    offsets: list[int] = []
    by_name: dict[str, list[int]] = {}
    by_digest: dict[bytes, int] = {}
    views: dict[tuple[int, int, str, tuple[int, ...]], int] = {}
    index_models: dict[str, dict[str, int]] = {file: {} for file in models}
    placements: list[tuple[TensorProto, int, int]] = []  # tensor, region, length
    stats = PackStats()
    relative = 0  # offsets relative to the data start, fixed up once the header size is known
    for file, tensor, array in candidates:
        data = array.tobytes()
        region = next((r for r in by_name.get(tensor.name, []) if blobs[r].startswith(data)), None)
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
        by_name.setdefault(tensor.name, []).append(region)
        key = (region, len(data), str(array.dtype.newbyteorder("=")), tuple(int(d) for d in array.shape))
        view = views.setdefault(key, len(views))
        index_models[file][tensor.name] = view
        placements.append((tensor, region, len(data)))
        stats.referenced_bytes += len(data)
        stats.external_tensors += 1
    stats.distinct_tensors = len(blobs)

    # The header holds absolute offsets, and its own size moves the data: iterate until it settles.
    data_start = alignment
    while True:
        tensors = [
            {"offset": data_start + offsets[r], "length": n, "dtype": dtype, "shape": list(shape)}
            for (r, n, dtype, shape), _ in sorted(views.items(), key=lambda kv: kv[1])
        ]
        header = encode_header(
            {"alignment": alignment, "tensors": tensors, "models": index_models}, alignment=alignment
        )
        if len(header) == data_start:
            break
        data_start = len(header)

    with weights_path.open("wb") as f:
        f.write(header)
        for region, blob in enumerate(blobs):
            f.seek(data_start + offsets[region])
            f.write(blob)
        f.truncate(data_start + relative)
    for tensor, region, length in placements:
        _point_to(tensor, weights_path.name, data_start + offsets[region], length)
    return stats


def _point_to(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """Turn an initializer into ONNX external data at ``location`` [offset, offset + length)."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


# --- sessions ------------------------------------------------------------------------------------------------


def session_options(*, threads: int | None = None, optimization: str = DEFAULT_LEVEL) -> ort.SessionOptions:
    """The options every vared2 ORT session uses: the optimisation level (applied at load) and thread count."""
    if optimization not in LEVELS:
        raise InputError(f"optimization: expected one of {', '.join(LEVELS)}, got {optimization!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads: expected a positive integer or None, got {threads!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def shared_session(engine_dir: Path, file: str, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session on one engine file fed its weights as ``OrtValue``s over a read-only map of weights.bin —
    the scheme ``vared2.runtime.shared_weights`` implements for the runtime, here for the build's check.
    The session keeps no reference to the map; it is kept alive on the session object."""
    weights = engine_dir / WEIGHTS_FILE
    index = read_header(weights)
    mapped = np.memmap(weights, dtype=np.uint8, mode="r")
    values = {}
    for name, k in index["models"][file].items():
        t = index["tensors"][k]
        array = mapped[t["offset"] : t["offset"] + t["length"]].view(np.dtype(t["dtype"])).reshape(t["shape"])
        values[name] = ort.OrtValue.ortvalue_from_numpy(array)
        options.add_initializer(name, values[name])
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(engine_dir / file), options, providers=["CPUExecutionProvider"])
    session._vared2_shared = (mapped, values)
    return session


def _example_feed(session: ort.InferenceSession, rng: np.random.Generator, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded input for every graph input (dynamic axes become ``batch``)."""
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in arg.shape]
        if arg.type == "tensor(uint8)":
            feed[arg.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif arg.type == "tensor(float)":
            feed[arg.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            raise InputTypeError(f"input {arg.name!r}: unsupported type {arg.type} (expected uint8 or float tensors)")
    return feed


def check_parity(
    source: Path, engine_dir: Path, file: str, feed: dict[str, np.ndarray], *, optimization: str = DEFAULT_LEVEL
) -> float:
    """Run the source ONNX and the engine (shared weights) on ``feed``; raise ``ParityError`` beyond tolerance."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    expected = reference.run(None, feed)
    engine = shared_session(engine_dir, file, session_options(optimization=optimization))
    got = engine.run(None, feed)
    worst = 0.0
    for out, a, b in zip(engine.get_outputs(), expected, got, strict=True):
        if a.shape != b.shape:
            raise ParityError(
                f"{file}: output {out.name!r} has shape {list(b.shape)}, the source gives {list(a.shape)}"
            )
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        if not np.isfinite(diff) or diff > TOLERANCE:
            raise ParityError(
                f"{file}: output {out.name!r} differs from {source} by {diff:.3g} (max abs), tolerance {TOLERANCE}"
            )
        worst = max(worst, diff)
    return worst


# --- the builder ---------------------------------------------------------------------------------------------


def _load_exported(path: Path) -> onnx.ModelProto:
    """An exported graph, or an error naming the file when it is not a readable ONNX model (truncated, say)."""
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends; onnx has no error class of its own
        raise InputError(f"{path}: not a readable ONNX model ({error}); export it again") from error


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


def build_onnxruntime(
    onnx_dir: Path | str,
    out_dir: Path | str,
    *,
    threads: int | None = None,
    optimization: str = DEFAULT_LEVEL,
    max_batch: int = 8,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
    rewrite: bool = True,
) -> Manifest:
    """Write the ONNX Runtime engines of ``onnx_dir`` into ``out_dir`` (an empty working directory) and
    return their manifest (not written: ``vared2.engines.build`` does that, atomically).

    Every engine is run against its source ONNX on the same seeded input; a difference beyond
    ``TOLERANCE`` raises ``ParityError`` and the caller discards the directory. With ``rewrite`` (the default)
    each bucket's custom nodes are specialised for ONNX Runtime first (``vared2.engines.ort_specialize``, after
    ``vared2.engines.ort_frames`` dropped the reconstructed frames nothing reads and ``vared2.engines.ort_phases``
    split the temporal convolutions that read ϕt into even and odd frames; the
    gate's stem by ``vared2.engines.ort_stem``, its descriptor by ``vared2.engines.ort_gate_head``), so the parity
    check also checks the rewrites against the exported graphs.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    spec = read_export_spec(onnx_dir)
    session_options(threads=threads, optimization=optimization)  # validates both before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    gate_file = spec["gate"]["file"]
    files = [gate_file, *(b["file"] for b in spec["buckets"])]
    models = {file: _load_exported(onnx_dir / file) for file in files}
    if rewrite:
        models = {
            file: motion_head_for_ort(specialize(stem_for_ort(m)))
            if file == gate_file
            else specialize(split_temporal_phases(skip_unread_frames(m)))
            for file, m in models.items()
        }
    stats = pack_weights(models, out_dir / WEIGHTS_FILE)
    for file, model in models.items():
        # save_model would re-externalise by its own rules; the tensors already point into weights.bin.
        (out_dir / file).write_bytes(model.SerializeToString())

    rng = np.random.default_rng(seed)
    probe = ort.InferenceSession(str(onnx_dir / gate_file), providers=["CPUExecutionProvider"])
    gate_feed = _example_feed(probe, rng)
    features = probe.run(["features"], gate_feed)[0] if "features" in {o.name for o in probe.get_outputs()} else None
    worst: dict[str, float] = {}
    for file in files:
        if progress is not None:
            progress(file)
        if file == gate_file:
            feed = gate_feed
        else:
            session = ort.InferenceSession(str(onnx_dir / file), providers=["CPUExecutionProvider"])
            inputs = [i.name for i in session.get_inputs()]
            feed = (
                {"features": features}
                if features is not None and inputs == ["features"]
                else _example_feed(session, rng)
            )
        worst[file] = check_parity(onnx_dir / file, out_dir, file, feed, optimization=optimization)

    gate = GateEntry(file=gate_file, sha256=sha256_file(out_dir / gate_file), gflops=float(spec["gate"]["gflops"]))
    buckets = tuple(BucketEntry.from_export(b, b["file"], sha256_file(out_dir / b["file"])) for b in spec["buckets"])
    return Manifest(
        name=name or out_dir.name,
        backend="onnxruntime",
        backend_version=ort.__version__,
        precision="fp32",
        device={"type": "cpu", "providers": ["CPUExecutionProvider"]},
        max_batch=max_batch,
        model=model_spec(spec),
        gate=gate,
        buckets=buckets,
        weights=WeightsEntry(file=WEIGHTS_FILE, sha256=sha256_file(out_dir / WEIGHTS_FILE)),
        build_options={
            "threads": threads,
            "optimization": optimization,
            "graph_rewrite": GRAPH_REWRITE if rewrite else None,
            # Sessions share one CPU arena (registered by vared2.runtime.shared_weights): docs/engines.md.
            "ort_session_config": {"session.use_env_allocators": "1", "session.disable_prepacking": "1"},
            "weights_alignment": ALIGNMENT,
            "weights_stored_bytes": stats.stored_bytes,
            "weights_referenced_bytes": stats.referenced_bytes,
            "parity_max_abs": worst,
        },
    )
