"""ONNX Runtime engines (the embedded default, CPU): one ONNX file per bucket and one for the gate, all
pointing into one shared weights file (DESIGN.md §5).

Every distinct initializer is stored once in ``weights.bin``. A bucket's partial-convolution weight
``W[:C_c]`` is a prefix of the full bucket's ``W`` under the same initializer name, i.e. a byte prefix in
row-major order, so it becomes the same offset with a shorter length; anything else identical is
deduplicated by content. Each engine file keeps its graph (model-local functions included; ONNX Runtime
inlines them at load) and refers to its initializers as ONNX external data (location, offset, length), so a
plain ``InferenceSession(path)`` works too; ``vared2.formats.sessions`` hands the same bytes to
every session once, memory-mapped, which is what keeps N sessions near the memory of one.

Graph optimisations are applied when a session is created, not saved: a saved ``ORT_ENABLE_ALL`` graph
holds layouts for the build machine's CPU. ``docs/engines.md`` has the measurements behind the choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from vared2.engines.calibration import ClipSet
from vared2.engines.ort_graph import is_specialized_initializer
from vared2.engines.ort_passes import BUCKET, GATE, check_skip, passes_for, run_passes
from vared2.engines.quantize import (
    MIN_AGREEMENT,
    check_agreement,
    measure_agreement,
    quantize_engines,
)
from vared2.formats.errors import CheckFailed, InputError, InputTypeError
from vared2.formats.export_spec import model_spec, read_export_spec
from vared2.formats.manifest import BucketEntry, GateEntry, Manifest, WeightsEntry, sha256_file
from vared2.formats.sessions import (
    DEFAULT_LEVEL,
    ENGINE_SESSION_CONFIG,
    LEVELS,
    SharedWeights,
    check_level,
    open_session,
)
from vared2.formats.weights import ALIGNMENT, WEIGHTS_FILE, PackStats, write_weights

#: Tensors smaller than this stay inside the engine file (shape constants, scalars): sharing them saves
#: nothing and keeps kernels that need constant inputs at creation time happy.
MIN_EXTERNAL_BYTES = 1024
#: Version of the build-time graph rewrite (part of the build key: a new rewrite rebuilds existing engines).
GRAPH_REWRITE = "ort-specialize-10"
#: ``session.disable_prepacking`` per precision (docs/performance.md: prepacking measured on and off for both).
PREPACKING = {"fp32": {"session.disable_prepacking": "1"}, "int8": {"session.disable_prepacking": "0"}}
#: Parity between an engine and the ONNX file it was built from (same input, fp32).
TOLERANCE = 1e-4


class ParityError(CheckFailed, RuntimeError):
    """An engine's output differs from its source ONNX beyond the tolerance: the build fails (exit code 1)."""


def pack_weights(
    models: dict[str, onnx.ModelProto],
    weights_path: Path,
    *,
    alignment: int = ALIGNMENT,
    min_bytes: int = MIN_EXTERNAL_BYTES,
) -> PackStats:
    """Move the initializers of ``models`` (engine file name → model, rewritten in place) of at least
    ``min_bytes`` into one weights file (``vared2.formats.weights.write_weights``: deduplicated, aligned), each
    becoming ONNX external data pointing into it."""
    tensors: dict[str, list[tuple[str, np.ndarray]]] = {file: [] for file in models}
    protos: dict[tuple[str, str], TensorProto] = {}
    for file, model in models.items():
        for tensor in model.graph.initializer:
            if is_specialized_initializer(tensor.name):
                continue  # per-bucket constants of a specialised reconstruction: small, never shared, kept inline
            array = numpy_helper.to_array(tensor)
            if array.nbytes >= min_bytes:
                tensors[file].append((tensor.name, array))
                protos[(file, tensor.name)] = tensor
    placements, stats = write_weights(tensors, weights_path, alignment=alignment)
    for key, (offset, length) in placements.items():
        _point_to(protos[key], weights_path.name, offset, length)
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
    source: Path,
    engine_dir: Path,
    file: str,
    feed: dict[str, np.ndarray],
    *,
    optimization: str = DEFAULT_LEVEL,
    config: dict[str, str] = ENGINE_SESSION_CONFIG,
) -> float:
    """Run the source ONNX and the engine (shared weights) on ``feed``; raise ``ParityError`` beyond tolerance."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS["disabled"]
    reference = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    expected = reference.run(None, feed)
    # The engine loads exactly as the runtime loads it (vared2.runtime.backends.OrtBackend). Its weights are
    # mapped for this check only, not through the process-wide cache: the directory is renamed after the build.
    weights = SharedWeights(engine_dir / WEIGHTS_FILE)
    engine = open_session(engine_dir / file, level=optimization, config=config, weights=weights)
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


def int8_parity(
    onnx_dir: Path,
    engine_dir: Path,
    spec: dict[str, Any],
    files: Iterable[str],
    validation: ClipSet,
    min_agreement: float,
    optimization: str,
    config: dict[str, str],
) -> dict[str, Any]:
    """Top-1 agreement of the int8 engines ``files`` (shared weights, as the runtime runs them) with the exported
    fp32 buckets on ``validation``'s gate features; ``AgreementError`` below the bar. The manifest's figures."""
    plain = {"providers": ["CPUExecutionProvider"]}
    gate = ort.InferenceSession(str(onnx_dir / spec["gate"]["file"]), **plain)

    weights = SharedWeights(engine_dir / WEIGHTS_FILE)

    def sessions(file: str) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        candidate = open_session(engine_dir / file, level=optimization, config=config, weights=weights)
        return ort.InferenceSession(str(onnx_dir / file), **plain), candidate

    figures = measure_agreement(gate, files, sessions, validation)
    check_agreement(figures, min_agreement, validation.source)
    return {"min_agreement": min_agreement, "validation_clips": len(validation.names), "int8_parity": figures}


# --- the builder ---------------------------------------------------------------------------------------------


def _load_exported(path: Path) -> onnx.ModelProto:
    """An exported graph, or an error naming the file when it is not a readable ONNX model (truncated, say)."""
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends; onnx has no error class of its own
        raise InputError(f"{path}: not a readable ONNX model ({error}); export it again") from error


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
    skip_passes: tuple[str, ...] | list[str] = (),
    precision: str = "fp32",
    calibration: ClipSet | None = None,
    validation: ClipSet | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> Manifest:
    """Write the ONNX Runtime engines of ``onnx_dir`` into ``out_dir`` (an empty working directory) and
    return their manifest (not written: ``vared2.engines.build`` does that, atomically).

    Every engine is run against its source ONNX on the same seeded input; a difference beyond
    ``TOLERANCE`` raises ``ParityError`` and the caller discards the directory. With ``rewrite`` (the default)
    the gate and every bucket first go through their declared graph passes (``vared2.engines.ort_passes``) but
    those named in ``skip_passes``, so the parity check also checks the passes against the exported graphs.

    ``precision="int8"`` quantizes the bucket graphs after their int8 passes (``vared2.engines.quantize``; the gate
    stays fp32), calibrated on the gate features of ``calibration``; their parity is top-1 agreement with the
    exported fp32 buckets on ``validation`` (>= ``min_agreement``, accuracy within a point), else ``AgreementError``.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    skip = check_skip(skip_passes)  # unknown names refused before any work
    spec = read_export_spec(onnx_dir)
    check_level(optimization)  # both validated before any work
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads: expected a positive integer or None, got {threads!r}")
    if precision not in ("fp32", "int8"):
        raise InputError(f"precision: expected fp32 or int8 for ONNX Runtime, got {precision!r}")
    if precision == "int8" and (calibration is None or validation is None):
        raise InputError("precision int8: needs calibration and validation clips (vared2 build --calib DATA_DIR)")
    # How every session of this directory is opened: by the parity checks here and by the runtime (the manifest).
    config = {**ENGINE_SESSION_CONFIG, **PREPACKING[precision]}
    out_dir.mkdir(parents=True, exist_ok=True)
    gate_file = spec["gate"]["file"]
    files = [gate_file, *(b["file"] for b in spec["buckets"])]
    models = {file: _load_exported(onnx_dir / file) for file in files}
    # The gate stays fp32 in every engine directory (so int8 never changes a bucket choice).
    precisions = {GATE: "fp32", BUCKET: precision}
    ran = {
        kind: [p.name for p in passes_for(kind, precisions[kind], skip)] if rewrite else [] for kind in (GATE, BUCKET)
    }
    if rewrite:
        models = {
            file: run_passes(m, kind, passes_for(kind, precisions[kind], skip), precisions[kind])
            for file, m in models.items()
            for kind in [GATE if file == gate_file else BUCKET]
        }
    int8 = None
    if precision == "int8":
        assert calibration is not None
        int8 = quantize_engines(onnx_dir, spec, models, calibration, threads=threads)
        models = {**models, **int8.models}
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
        if int8 is None or file not in int8.models:
            worst[file] = check_parity(onnx_dir / file, out_dir, file, feed, optimization=optimization, config=config)
    extra: dict[str, Any] = {}
    if int8 is not None:
        assert calibration is not None and validation is not None
        extra = int8_parity(onnx_dir, out_dir, spec, int8.models, validation, min_agreement, optimization, config)
        extra["calibration"] = {
            "path": calibration.source,
            "clips": len(calibration.names),
            "clip_list_sha256": calibration.digest(),
            "method": int8.method,
        }
        extra["int8_weights_shared"] = int8.shared_weights

    gate = GateEntry(file=gate_file, sha256=sha256_file(out_dir / gate_file), gflops=float(spec["gate"]["gflops"]))
    buckets = tuple(BucketEntry.from_export(b, b["file"], sha256_file(out_dir / b["file"])) for b in spec["buckets"])
    return Manifest(
        name=name or out_dir.name,
        backend="onnxruntime",
        backend_version=ort.__version__,
        precision=precision,
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
            # The declared passes run on the gate and on every bucket, in order (vared2.engines.ort_passes).
            "graph_passes": ran,
            # Sessions share one CPU arena (registered by vared2.formats.sessions): docs/engines.md.
            "ort_session_config": config,
            "weights_alignment": ALIGNMENT,
            "weights_stored_bytes": stats.stored_bytes,
            "weights_referenced_bytes": stats.referenced_bytes,
            "parity_max_abs": worst,
            **extra,
        },
    )
