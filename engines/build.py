"""``vared2 build``: an exported ONNX directory → an engine directory, written atomically (DESIGN.md §5).

The engine directory is built in a temporary sibling and renamed into place only when every engine
passed its check and the manifest re-read cleanly (``vared2.formats.manifest.write_engine_dir``): an
interrupted or failed build leaves no directory behind, and a previous good one untouched.

Rebuilding is incremental at directory granularity: the manifest records the sha256 of every source file
(``export.json`` and each ONNX file), the build options and the backend version; if those match and the
existing directory still verifies, ``build_engines`` returns it without building anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vared2.engines.calibration import ClipSet
from vared2.engines.onnxruntime_engine import DEFAULT_LEVEL, GRAPH_REWRITE
from vared2.engines.ort_passes import check_skip
from vared2.engines.quantize import METHOD, MIN_AGREEMENT
from vared2.formats.errors import InputError
from vared2.formats.export_spec import EXPORT_JSON, read_export_spec
from vared2.formats.manifest import (
    MANIFEST_NAME,
    PRECISIONS,
    Manifest,
    ManifestError,
    sha256_file,
    write_engine_dir,
)
from vared2.formats.paths import check_output_dir
from vared2.formats.progress import progress as show_progress

log = logging.getLogger(__name__)
BACKENDS = ("onnxruntime", "tensorrt")


def source_digest(onnx_dir: Path, spec: dict[str, Any]) -> dict[str, str]:
    """sha256 of ``export.json`` and of every ONNX file its ``spec`` lists (and their external data, if any)."""
    files = [EXPORT_JSON, spec["gate"]["file"], *(b["file"] for b in spec["buckets"])]
    extra = sorted(p.name for p in onnx_dir.iterdir() if p.is_file() and p.suffix in (".data", ".bin"))
    return {name: sha256_file(onnx_dir / name) for name in [*files, *extra]}


def _graph_io(path: Path) -> dict[str, list[int | str]]:
    """Every input and output of an exported graph → its shape (a name for a dynamic axis); weights not read."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # protobuf's DecodeError and friends; onnx has no error class of its own
        raise InputError(f"{path}: not a readable ONNX model ({error}); export it again") from error
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }


def check_export_graphs(onnx_dir: Path, spec: dict[str, Any]) -> None:
    """The graphs agree with what ``export.json`` says of them: the gate reads ``[N, frames, size, size, 3]``
    clips and writes one logit per bucket and ``features_shape`` features, which every bucket reads, and every
    bucket writes one logit per class. The manifest copies ``export.json``, and the runtime decodes and feeds
    clips by it, so a disagreement would otherwise surface only as a wrong-shape error at the first call."""
    model, gate = spec["model"], spec["gate"]
    classes = len(model.get("labels", [])) or model["num_classes"]
    features = ["N", *gate["features_shape"]] if "features_shape" in gate else None
    expected = {
        gate["file"]: {
            "clip": ["N", model["frames"], model["size"], model["size"], 3],
            "features": features,
            "bucket_logits": ["N", len(spec["buckets"])],
        },
        **{b["file"]: {"features": features, "logits": ["N", classes]} for b in spec["buckets"]},
    }
    for file, tensors in expected.items():
        io = _graph_io(onnx_dir / file)
        for name, shape in tensors.items():
            if name not in io:
                raise InputError(f"{onnx_dir / file}: no tensor {name!r} (it has {', '.join(io)}); export it again")
            if shape is None:
                continue
            got = [d if isinstance(d, int) else "N" for d in io[name]]
            if got != shape:
                raise InputError(
                    f"{onnx_dir / file}: tensor {name!r} is {got}, but {onnx_dir / EXPORT_JSON} describes {shape} "
                    "(frames, size, buckets, classes or features_shape); export the model again"
                )


def _backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        import onnxruntime

        return str(onnxruntime.__version__)
    from vared2.engines.tensorrt_engine import import_tensorrt

    return str(import_tensorrt().__version__)


def build_key(sources: dict[str, str], backend: str, options: dict[str, Any]) -> str:
    """One digest of everything a build depends on: the sources' digests (``source_digest``), options, backend
    version and, for TensorRT, the GPU's compute capability (plans and the plugins' PTX are tied to it, so a
    rebuild on another GPU is not "up to date")."""
    payload = {
        "sources": sources,
        "backend": backend,
        "backend_version": _backend_version(backend),
        "options": options,
    }
    if backend == "tensorrt":
        from vared2.engines.tensorrt_engine import gpu_info

        payload["compute_capability"] = gpu_info()["compute_capability"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def up_to_date(out_dir: Path, key: str) -> bool:
    """Whether ``out_dir`` is a complete, unmodified engine directory built from exactly ``key``."""
    if not (Path(out_dir) / "manifest.json").is_file():
        return False
    try:
        manifest = Manifest.load(out_dir, verify=True)
    except (ManifestError, OSError) as error:
        log.info("%s: existing engines unusable (%s); rebuilding", out_dir, error)
        return False
    return manifest.build_options.get("build_key") == key


def check_build_options(
    backend: str,
    *,
    fp16: bool = False,
    max_batch: int = 8,
    opt_batch: int = 1,
    timing_cache: Path | str | None = None,
    use_plugins: bool = True,
    precision: str = "fp32",
    calibration: ClipSet | Path | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> None:
    """Refuse options ``build_engines`` cannot honour, and a backend this machine lacks, before any work: the
    main job calls it before it exports and checks parity, which take minutes on a full-size model. Of
    ``calibration`` (the clips, or the directory they will be read from) only whether it is given matters."""
    if backend not in BACKENDS:
        raise InputError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if fp16 and precision not in ("fp32", "fp16"):
        raise InputError(f"--fp16 is --precision fp16; it cannot be combined with --precision {precision}")
    precision = "fp16" if fp16 else precision
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "onnxruntime" and precision == "fp16":
        raise InputError("precision fp16: a TensorRT option (ONNX Runtime engines are fp32 or int8 on the CPU)")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch: expected a positive integer, got {max_batch!r}")
    if isinstance(opt_batch, bool) or not isinstance(opt_batch, int) or not 1 <= opt_batch <= max_batch:
        raise InputError(f"opt_batch: expected an integer from 1 to max_batch ({max_batch}), got {opt_batch!r}")
    if precision == "int8" and calibration is None:
        raise InputError("precision int8: calibration clips are needed (vared2 build --calib DATA_DIR)")
    if precision != "int8" and calibration is not None:
        raise InputError("calibration clips (--calib): only int8 engines are calibrated; add --precision int8")
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, int | float) or not 0 <= min_agreement <= 1:
        raise InputError(f"min_agreement: expected a fraction from 0 to 1, got {min_agreement!r}")
    if backend == "onnxruntime":  # said, not silently ignored: the user expected them to do something
        given = [name for name, on in (("opt_batch", opt_batch != 1), ("timing_cache", timing_cache is not None)) if on]
        given += [] if use_plugins else ["use_plugins=False (--no-plugins)"]
        if given:
            raise InputError(f"{', '.join(given)}: TensorRT options; the onnxruntime backend has no use for them")
    else:
        _backend_version(backend)  # TensorRTUnavailableError, saying what to install, when TensorRT is missing


def build_engines(
    onnx_dir: Path | str,
    out_dir: Path | str,
    *,
    backend: str = "onnxruntime",
    fp16: bool = False,
    max_batch: int = 8,
    threads: int | None = None,
    optimization: str = DEFAULT_LEVEL,
    opt_batch: int = 1,
    timing_cache: Path | str | None = None,
    use_plugins: bool = True,
    force: bool = False,
    progress: bool = True,
    skip_passes: tuple[str, ...] | list[str] = (),
    precision: str = "fp32",
    calibration: ClipSet | None = None,
    validation: ClipSet | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> Path:
    """Build (or reuse) the engine directory ``out_dir`` for ``onnx_dir``; returns ``out_dir``.

    ONNX Runtime options: ``threads`` (recorded as the default session thread count), ``optimization``
    (the graph optimisation level sessions use). TensorRT options: ``fp16``, ``opt_batch``, ``timing_cache``,
    ``use_plugins``. ONNX Runtime int8 (``precision="int8"``): ``calibration`` and ``validation`` clips (held
    apart) and the agreement bar ``min_agreement`` (``vared2.engines.quantize``). ``max_batch`` is recorded for
    both (TensorRT's profile maximum). ``force`` rebuilds even when the directory is up to date. ``skip_passes``
    (ONNX Runtime) names declared graph passes to build without (``vared2.engines.ort_passes``; an unknown name is
    an ``InputError`` listing the known ones).

    ``out_dir`` is replaced as a whole, so it must be absent, empty, or a previous engine directory (it has
    ``manifest.json``); anything else is refused with ``FileExistsError`` before any work, as is (``ValueError``)
    ``onnx_dir`` itself, a directory inside or containing it, and the current directory or an ancestor of it.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    check_build_options(
        backend,
        fp16=fp16,
        max_batch=max_batch,
        opt_batch=opt_batch,
        timing_cache=timing_cache,
        use_plugins=use_plugins,
        precision=precision,
        calibration=calibration,
        min_agreement=min_agreement,
    )
    precision = "fp16" if fp16 else precision  # --fp16 is --precision fp16 (checked above)
    skip = check_skip(skip_passes)
    if skip and backend != "onnxruntime":
        raise InputError(f"--skip-pass {', '.join(skip)}: the graph passes are ONNX Runtime's; {backend} has none")
    spec = read_export_spec(onnx_dir)  # a clear error for a missing or malformed export before anything else
    check_output_dir(
        out_dir, marker=MANIFEST_NAME, kind="an engine directory", source=onnx_dir, source_kind="ONNX directory"
    )

    options: dict[str, Any]
    if backend == "onnxruntime":
        options = {"max_batch": max_batch, "threads": threads, "optimization": optimization, "rewrite": GRAPH_REWRITE}
        if skip:  # only then: an unchanged default build keeps its build key
            options["skip_passes"] = list(skip)
        if precision == "int8":  # a new key only for int8, so existing fp32 directories stay up to date
            assert isinstance(calibration, ClipSet)
            options["int8"] = {
                "method": METHOD,
                "calibration": calibration.digest(),
                "validation": None if validation is None else validation.digest(),
                "min_agreement": min_agreement,
            }
    else:
        options = {
            "max_batch": max_batch,
            "fp16": precision == "fp16",
            "opt_batch": opt_batch,
            "use_plugins": use_plugins,
        }
        if precision == "int8":  # a new key only for int8, so existing directories stay up to date
            assert isinstance(calibration, ClipSet)
            options["int8"] = {"calibration": calibration.digest()}
    sources = source_digest(onnx_dir, spec)  # hashed once: the reference model's ONNX files are 440 MB
    key = build_key(sources, backend, options)
    if not force and up_to_date(out_dir, key):
        message = f"{out_dir}: engines are up to date (same sources, options and {backend} version); nothing to build"
        log.info(message)
        if progress:
            print(message, file=sys.stderr)
        return out_dir

    check_export_graphs(onnx_dir, spec)  # after the up-to-date check: a clean rebuild reads no graph
    bar = show_progress(
        total=1 + len(spec["buckets"]), desc=f"building {backend} engines", unit="engine", disable=not progress
    )

    started: list[str] = []

    def step(file: str) -> None:
        """Called as each engine starts: the previous one is done."""
        if started:
            bar.update(1)
        started.append(file)
        bar.set_postfix_str(file)

    def fill(work: Path) -> Manifest:
        manifest: Manifest
        if backend == "onnxruntime":
            from vared2.engines.onnxruntime_engine import build_onnxruntime

            manifest = build_onnxruntime(
                onnx_dir,
                work,
                threads=threads,
                optimization=optimization,
                max_batch=max_batch,
                name=out_dir.name,
                progress=step,
                skip_passes=skip,
                precision=precision,
                calibration=calibration,
                validation=validation,
                min_agreement=min_agreement,
            )
        else:
            from vared2.engines.tensorrt_engine import build_tensorrt

            manifest = build_tensorrt(
                onnx_dir,
                work,
                precision=precision,
                # The calibration clips, in batches of max_batch (TensorRT's agreement check: gpu-check).
                calibration=None if calibration is None else _batches(calibration, max_batch),
                max_batch=max_batch,
                opt_batch=opt_batch,
                timing_cache=timing_cache if timing_cache is not None else out_dir.parent / "timing.cache",
                use_plugins=use_plugins,
                name=out_dir.name,
                progress=step,
            )
        bar.update(1)
        extra = {"build_key": key, "build_options": options, "sources": sources}
        return Manifest.from_dict(
            {**manifest.to_dict(), "build_options": {**manifest.build_options, **extra}, "created_by": created_by()}
        )

    try:
        write_engine_dir(out_dir, fill, source=onnx_dir)
    finally:
        bar.close()
    return out_dir


def _batches(clips: ClipSet, size: int) -> list[np.ndarray]:
    """``clips`` as uint8 batches ``[N, T, H, W, 3]`` of at most ``size``."""
    return [np.stack(clips.clips[i : i + size]) for i in range(0, len(clips.clips), size)]


def created_by() -> str:
    """``vared2 <version>`` for the manifest."""
    try:
        from importlib.metadata import version

        return f"vared2 {version('vared2')}"
    except Exception:
        return "vared2"
