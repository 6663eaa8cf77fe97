"""TensorRT engines (NVIDIA GPUs), built with Polygraphy's TensorRT loaders (DESIGN.md §5).

Every network is strongly typed: precision is in the ONNX graph, never a builder flag (TensorRT 11 has none).
fp32 builds the exported graphs; fp16 their fp16 graphs; int8 a Q/DQ graph per bucket, with activation ranges
from calibration clips run through the fp32 gate, which itself stays fp32 (``tensorrt_graphs``).
One ``.plan`` per bucket and one for the gate; one optimisation profile over the batch axis
(``1..max_batch``, ``opt_batch`` the typical batch); one timing cache file shared by every build, so
tactics timed for one bucket are reused by the next. The vared2 plugins are registered before parsing
(TensorRT ≥ 10.9: ahead-of-time ``tensorrt.plugin`` kernels compiled for the build GPU; the ONNX parser
prefers a registered plugin over the model-local function when the node names it with ``plugin_namespace``).
Without them — ``use_plugins=False``, TensorRT older than 10.9 (JetPack 6 ships 10.3), or a registration that
failed (logged as a warning with its cause) — each model is parsed from a copy whose vared2 nodes lack
``plugin_namespace``/``plugin_version``, so the parser turns the local functions into ordinary layers even
when an earlier build in this process registered the plugins (a registration cannot be undone). The network
of each engine is inspected for plugin layers, and the manifest records which path each engine took.

TensorRT and Polygraphy's TensorRT modules are imported only inside the functions here. This path has
not run on the machine it was written on (no GPU): ``tests/test_engines_tensorrt.py`` covers it on a
GPU host (``./build.sh gpu-check``).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from vared2.formats.errors import InputError
from vared2.formats.export_spec import model_spec, read_export_spec
from vared2.formats.manifest import PRECISIONS, BucketEntry, GateEntry, Manifest, sha256_file

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

#: The first TensorRT whose ``tensorrt.plugin`` has ahead-of-time (``aot_impl``) plugins.
AOT_PLUGIN_VERSION = (10, 9)
TIMING_CACHE = "timing.cache"
CUSTOM_OPS = ("TemporalReconstruct", "ChannelReconstruct")
#: The node attributes that make TensorRT's ONNX parser look for a registered plugin before the local function.
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")
CALIBRATION_METHOD = "max-abs"  # per-tensor max |x| of each convolution input over the calibration clips


class TensorRTUnavailableError(InputError, ImportError):
    """TensorRT (or Polygraphy's TensorRT backend) is not installed here."""


def import_tensorrt() -> Any:  # the module: typed where used through ``if TYPE_CHECKING: import tensorrt``
    """``import tensorrt`` with an error that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise TensorRTUnavailableError(
            "the tensorrt backend needs NVIDIA TensorRT's Python package (`pip install tensorrt`, or JetPack's "
            "python3-libnvinfer on Jetson) and an NVIDIA GPU; use --backend onnxruntime on this machine"
        ) from error
    return trt


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` → ``(10, 13, 0, 35)`` (non-numeric tails dropped)."""
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch in "0123456789")  # ASCII: str.isdigit() accepts "²"
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of a GPU through the CUDA driver API (``libcuda``, present wherever the
    NVIDIA driver is, Jetson included) — no CUDA Python package needed."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        raise InputError(f"no NVIDIA driver here (libcuda.so.1: {error})") from error

    def check(status: int, call: str) -> None:
        if status != 0:
            raise RuntimeError(f"CUDA driver call {call} failed with error {status}")

    check(cuda.cuInit(0), "cuInit")
    handle = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    check(cuda.cuDeviceGetName(name, 256, handle), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76 (cuda.h).
    check(cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, handle), "cuDeviceGetAttribute(major)")
    check(cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle), "cuDeviceGetAttribute(minor)")
    return {
        "type": "cuda",
        "index": device,
        "name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
    }


def register_vared2_plugins(trt_version: str, compute_capability: str) -> str | None:
    """Register the vared2 AOT plugins, compiling for the GPU of ``compute_capability`` (``"8.6"``); returns
    None when they are registered, else why not (logged as a warning), and the builder then parses the ONNX
    local functions."""
    if version_tuple(trt_version)[:2] < AOT_PLUGIN_VERSION:
        wanted = ".".join(map(str, AOT_PLUGIN_VERSION))
        return f"TensorRT {trt_version} is older than {wanted}, which ahead-of-time Python plugins need"
    from vared2.plugins.tensorrt_plugin import PluginUnavailable, arch_from_capability, register_plugins

    try:
        register_plugins(arch_from_capability(compute_capability))
    except (PluginUnavailable, ImportError) as error:
        log.warning("vared2 TensorRT plugins not registered: %s", error)  # the reason says what happens instead
        return str(error)
    return None


def strip_plugin_attributes(model: onnx.ModelProto) -> int:
    """Remove ``plugin_namespace``/``plugin_version`` from ``model``'s vared2 nodes, in place; returns how many
    nodes changed. The functions declare both attributes with defaults, so the model stays valid, and TensorRT's
    parser then imports the local function even if a vared2 plugin is registered in this process."""
    changed = 0
    for node in model.graph.node:
        if node.domain != "vared2" or node.op_type not in CUSTOM_OPS:
            continue
        kept = [a for a in node.attribute if a.name not in PLUGIN_ATTRIBUTES]
        if len(kept) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(kept)
            changed += 1
    return changed


def local_function_bytes(onnx_path: Path) -> bytes:
    """``onnx_path`` serialized without the plugin attributes (``strip_plugin_attributes``), external data
    (if any) inlined, for ``NetworkFromOnnxBytes``."""
    model = onnx.load(str(onnx_path))  # loads external data from beside the file
    strip_plugin_attributes(model)
    return bytes(model.SerializeToString())


def _graph(source: Path | onnx.ModelProto) -> onnx.ModelProto:
    return source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)


def has_custom_ops(source: Path | onnx.ModelProto) -> bool:
    """Whether the ONNX graph has any ``vared2::`` node (the full bucket and the gate have none)."""
    return any(node.domain == "vared2" and node.op_type in CUSTOM_OPS for node in _graph(source).graph.node)


def batch_profile_shapes(
    source: Path | onnx.ModelProto, max_batch: int, opt_batch: int
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Per graph input, (min, opt, max) shapes: the batch axis varies, every other axis is the static one."""
    model = _graph(source)
    onnx_path = source if isinstance(source, Path) else model.graph.name
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        rest = []
        for i, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value"):
                raise InputError(f"{onnx_path}: input {value.name!r} axis {i} is dynamic; only the batch axis may be")
            rest.append(int(d.dim_value))
        shapes[value.name] = tuple((b, *rest) for b in (1, opt_batch, max_batch))
    return shapes


def plugin_layers(network: trt.INetworkDefinition, trt: Any) -> list[str]:
    """Names of the plugin layers of a parsed network."""
    kinds = {trt.LayerType.PLUGIN, trt.LayerType.PLUGIN_V2, trt.LayerType.PLUGIN_V3}
    return [network.get_layer(i).name for i in range(network.num_layers) if network.get_layer(i).type in kinds]


def calibration_ranges(
    onnx_dir: Path, spec: dict[str, Any], clips: Iterable[np.ndarray]
) -> tuple[dict[str, dict[str, float]], int]:
    """Per bucket file, ``{conv input: amax}`` over ``clips`` (uint8 batches ``[N, T, H, W, 3]``) run through the
    fp32 gate on ONNX Runtime's CPU, and how many clips that was."""
    import onnxruntime as ort

    from vared2.engines.tensorrt_graphs import max_abs_ranges

    model = spec["model"]
    want = (model["frames"], model["size"], model["size"], 3)
    batches = [np.asarray(clip) for clip in clips]
    for i, batch in enumerate(batches):
        if batch.dtype != np.uint8 or batch.ndim != 5 or batch.shape[1:] != want:
            raise InputError(
                f"calibration batch {i}: expected uint8 clips [N, {', '.join(map(str, want))}], "
                f"got {batch.dtype} {list(batch.shape)}"
            )
    gate = ort.InferenceSession(str(onnx_dir / spec["gate"]["file"]), providers=["CPUExecutionProvider"])
    features = [gate.run(["features"], {"clip": batch})[0] for batch in batches]
    if not features:
        raise InputError("int8: no calibration clips were given (calibration= an iterable of uint8 clip batches)")
    ranges = {
        b["file"]: max_abs_ranges(onnx.load(str(onnx_dir / b["file"])), [{"features": f} for f in features])
        for b in spec["buckets"]
    }
    return ranges, sum(len(f) for f in features)


def precision_graph(onnx_path: Path, precision: str, ranges: dict[str, float] | None = None) -> onnx.ModelProto:
    """The graph TensorRT builds for ``precision``: the exported one (fp32), its fp16 graph, or its Q/DQ graph
    from ``ranges`` (int8; None keeps the graph fp32, as for the gate)."""
    from vared2.engines import tensorrt_graphs

    model = onnx.load(str(onnx_path))  # external data (if any) inlined: the network is parsed from bytes
    if precision == "fp16":
        return tensorrt_graphs.fp16_graph(model)
    if precision == "int8" and ranges is not None:
        return tensorrt_graphs.qdq_graph(model, ranges)
    return model


def build_plan(
    model: onnx.ModelProto,
    plan_path: Path,
    *,
    max_batch: int,
    opt_batch: int,
    timing_cache: Path,
    use_plugins: bool = True,
    label: str = "",
) -> str | None:
    """Build one strongly typed ``.plan`` from ``model`` (named ``label`` in errors); returns how the custom
    ops were realised (``"plugin"``, ``"local-functions"``, or None when the graph has none).
    ``use_plugins=False`` parses a copy without the plugin attributes, so the local functions are used
    whatever is registered."""
    trt = import_tensorrt()
    try:
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxBytes, Profile
    except ImportError as error:
        raise TensorRTUnavailableError(f"Polygraphy's TensorRT backend is unavailable ({error})") from error

    label = label or model.graph.name
    profile = Profile()
    for name, (lo, opt, hi) in batch_profile_shapes(model, max_batch, opt_batch).items():
        profile.add(name, min=lo, opt=opt, max=hi)
    custom = has_custom_ops(model)
    if custom and not use_plugins:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        strip_plugin_attributes(model)
    builder, network, parser = NetworkFromOnnxBytes(model.SerializeToString(), strongly_typed=True)()
    plugins = plugin_layers(network, trt)
    if plugins and not use_plugins:
        raise RuntimeError(f"{label}: plugin layers {plugins} remain after removing the plugin attributes")
    config = CreateConfig(profiles=[profile], load_timing_cache=str(timing_cache))  # no precision flag: typed
    serialized = EngineBytesFromNetwork(
        (builder, network, parser), config=config, save_timing_cache=str(timing_cache)
    )()
    if serialized is None:
        raise RuntimeError(f"{label}: TensorRT failed to build an engine (see the TensorRT log above)")
    plan_path.write_bytes(bytes(memoryview(serialized)))
    if not custom:
        return None
    return "plugin" if plugins else "local-functions"


def build_tensorrt(
    onnx_dir: Path | str,
    out_dir: Path | str,
    *,
    precision: str = "fp32",
    calibration: Iterable[np.ndarray] | None = None,
    max_batch: int = 8,
    opt_batch: int = 1,
    timing_cache: Path | str | None = None,
    use_plugins: bool = True,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Write the TensorRT engines of ``onnx_dir`` into ``out_dir`` (a working directory) and return their
    manifest (``vared2.engines.build`` writes it atomically).

    ``timing_cache`` (default: ``timing.cache`` beside the engine directory) is loaded before and saved
    after every build, so each bucket — and a later rebuild on the same GPU — starts from the tactics
    already timed. ``precision`` is ``fp32``, ``fp16`` or ``int8``; int8 needs ``calibration``, uint8 clip
    batches ``[N, T, H, W, 3]`` (e.g. training clips).
    ``use_plugins=False``, or plugins that cannot be registered here (the manifest's
    ``build_options.plugins_unavailable`` says why), builds the custom ops from the ONNX local functions.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch: expected a positive integer, got {max_batch!r}")
    if isinstance(opt_batch, bool) or not isinstance(opt_batch, int) or not 1 <= opt_batch <= max_batch:
        raise InputError(f"opt_batch: expected an integer in 1..{max_batch} (max_batch), got {opt_batch!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if (precision == "int8") != (calibration is not None):
        raise InputError("calibration: int8 engines need calibration clips, and only int8 engines use them")
    spec = read_export_spec(onnx_dir)
    trt = import_tensorrt()
    device = gpu_info()
    cache = Path(timing_cache) if timing_cache is not None else out_dir.parent / TIMING_CACHE
    unavailable = (
        register_vared2_plugins(trt.__version__, device["compute_capability"]) if use_plugins else "use_plugins=False"
    )
    registered = unavailable is None
    out_dir.mkdir(parents=True, exist_ok=True)
    ranges: dict[str, dict[str, float]] = {}
    calibrated: dict[str, Any] | None = None
    if calibration is not None:
        ranges, clips = calibration_ranges(onnx_dir, spec, calibration)
        calibrated = {"clips": clips, "method": CALIBRATION_METHOD, "gate_precision": "fp32"}

    def plan(source: str) -> tuple[str, str | None]:
        if progress is not None:
            progress(source)
        target = Path(source).with_suffix(".plan").name
        path = build_plan(
            precision_graph(onnx_dir / source, precision, ranges.get(source)),
            out_dir / target,
            label=str(onnx_dir / source),
            max_batch=max_batch,
            opt_batch=opt_batch,
            timing_cache=cache,
            use_plugins=registered,
        )
        return target, path

    gate_file, _ = plan(spec["gate"]["file"])
    buckets = []
    for b in spec["buckets"]:
        file, path = plan(b["file"])
        buckets.append(BucketEntry.from_export(b, file, sha256_file(out_dir / file), path))
    return Manifest(
        name=name or out_dir.name,
        backend="tensorrt",
        backend_version=trt.__version__,
        precision=precision,
        device=device,
        max_batch=max_batch,
        model=model_spec(spec),
        gate=GateEntry(file=gate_file, sha256=sha256_file(out_dir / gate_file), gflops=float(spec["gate"]["gflops"])),
        buckets=tuple(buckets),
        build_options={
            "opt_batch": opt_batch,
            "use_plugins": use_plugins,
            "plugins_registered": registered,
            "plugins_unavailable": unavailable,
            "timing_cache": str(cache),
            "calibration": calibrated,
        },
    )
