"""TensorRT backend: ``.plan`` engines on an NVIDIA GPU, through TensorRT's Python API and pycuda.

Written against the TensorRT 10 and 11 named-tensor API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), the way Polygraphy's ``TrtRunner`` drives an engine. It has not run on a GPU in this
repository's CI (no GPU there); its tests are marked ``gpu`` and run with ``./build.sh gpu-check``.

Per call: the clip goes to the device once; the gate writes ``features`` into device memory, where they stay —
a bucket engine reads them in place (all rows) or from a device-side gather (a subset) — and only
``bucket_logits`` and each bucket's ``logits`` come back to the host. Calls from several threads each check out
a *worker* (execution contexts, a stream and buffers of their own) from a pool; ``contexts`` sets its size.

``tensorrt`` and ``pycuda`` are imported here only, when a TensorRT engine directory is opened. CUDA graphs
(``cuda_graphs=True``) additionally need ``cuda-python`` (pycuda has no graph API), imported when the directory is
opened; each worker captures one graph per engine, batch size and input address on its second use and replays it
afterwards.

Every engine must have exactly the gate's or a bucket's I/O tensors (``execute_async_v3`` needs an address for each
one), and every ``set_input_shape`` / ``set_tensor_address`` is checked, naming the engine file and tensor. After
``close()`` a call raises ``BackendError`` instead of waiting for a worker.

``_Worker.time_gate`` / ``time_bucket`` run the same engines timed with CUDA events (trtexec's H2D, GPU compute,
D2H and enqueue times) for ``vared2 bench``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vared2.formats.errors import InputError
from vared2.formats.manifest import Manifest

from .backends import GateOutput, check_backend_version
from .errors import BackendError, DeviceMismatchError

if TYPE_CHECKING:  # TensorRT's published stubs (build.sh puts them on mypy's path): checked by signature
    import tensorrt as trt

GATE_INPUTS, GATE_OUTPUTS = {"clip"}, {"features", "bucket_logits"}
BUCKET_INPUTS, BUCKET_OUTPUTS = {"features"}, {"logits"}


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as error:
        raise BackendError(
            f"these are TensorRT engines, which need the tensorrt and pycuda packages ({error}); "
            "install them on a machine with an NVIDIA GPU, or build ONNX Runtime engines instead"
        ) from error
    return trt, cuda


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _set_shape(context: trt.IExecutionContext, name: str, shape: tuple[int, ...], engine: Path) -> None:
    """``set_input_shape``, whose False (a shape outside the profile) would otherwise surface only as a failed
    ``execute_async_v3``."""
    if not context.set_input_shape(name, shape):
        raise BackendError(f"{engine}: TensorRT refused shape {shape} for input {name!r} (outside its profile?)")


def _set_address(context: trt.IExecutionContext, name: str, address: int, engine: Path) -> None:
    """``set_tensor_address``, checked: TensorRT returns False for a name it does not know or a misaligned
    address."""
    if not context.set_tensor_address(name, address):
        raise BackendError(f"{engine}: TensorRT refused the device address of tensor {name!r}")


class _EngineInfo:
    """A deserialised engine and its I/O tensors: name → (dtype, shape without the batch axis)."""

    def __init__(self, trt: Any, runtime: trt.Runtime, path: Path, max_batch: int) -> None:
        self.path = path
        self.engine: trt.ICudaEngine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"{path}: TensorRT could not deserialize this plan (built with another TensorRT version or GPU, "
                "or a plugin it needs is not registered); the TensorRT log above says why"
            )
        self.inputs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.outputs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            dims = self.engine.get_tensor_shape(name)
            shape = tuple(dims[axis] for axis in range(len(dims)))  # Dims is a sequence, not typed iterable
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = (dtype, shape[1:])
                _min, _opt, most = self.engine.get_tensor_profile_shape(name, 0)
                if most[0] < max_batch:
                    raise BackendError(
                        f"{path}: input {name!r} accepts batches up to {most[0]}, the manifest says {max_batch}"
                    )
            else:
                self.outputs[name] = (dtype, shape[1:])


class _Worker:
    """Execution contexts, one stream and device/pinned buffers sized for ``max_batch``: one call at a time."""

    def __init__(
        self, cuda: Any, gate: _EngineInfo, buckets: list[_EngineInfo], max_batch: int, cudart: Any | None
    ) -> None:
        """``cudart``: cuda-python's runtime module to capture CUDA graphs with, or None for plain launches."""
        self.cuda = cuda
        self.cudart = cudart
        self.max_batch = max_batch
        self.gate_path = gate.path
        self.bucket_paths = [b.path for b in buckets]
        self.stream = cuda.Stream()
        self.gate_context = gate.engine.create_execution_context()
        self.bucket_contexts = [b.engine.create_execution_context() for b in buckets]
        clip_dtype, clip_shape = gate.inputs["clip"]
        feat_dtype, feat_shape = gate.outputs["features"]
        logit_dtype, logit_shape = gate.outputs["bucket_logits"]
        self.feature_row_bytes = _volume(feat_shape) * feat_dtype.itemsize
        self.clip_host = cuda.pagelocked_empty((max_batch, *clip_shape), clip_dtype)
        self.clip_device = cuda.mem_alloc(self.clip_host.nbytes)
        self.features = cuda.mem_alloc(max_batch * self.feature_row_bytes)
        self.gathered = cuda.mem_alloc(max_batch * self.feature_row_bytes)
        self.bucket_logits_host = cuda.pagelocked_empty((max_batch, *logit_shape), logit_dtype)
        self.bucket_logits_device = cuda.mem_alloc(self.bucket_logits_host.nbytes)
        out_dtype, out_shape = buckets[0].outputs["logits"]
        self.logits_host = cuda.pagelocked_empty((max_batch, *out_shape), out_dtype)
        self.logits_device = cuda.mem_alloc(self.logits_host.nbytes)
        self.graphs: dict[tuple[int, int, int], Any] | None = {} if cudart is not None else None
        self.seen: set[tuple[int, int, int]] = set()
        self._events: list[Any] | None = None

    def _execute(self, key: tuple[int, int, int], context: trt.IExecutionContext) -> None:
        """``execute_async_v3`` on this worker's stream, or the CUDA graph captured for ``key``."""
        if self.graphs is None:
            if not context.execute_async_v3(self.stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed; the TensorRT log above says why")
            return
        graph = self.graphs.get(key)
        if graph is not None:
            _check(graph.cudart.cudaGraphLaunch(graph.exec, self.stream.handle))
            return
        if not context.execute_async_v3(self.stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed; the TensorRT log above says why")
        if key in self.seen:  # shapes and addresses are settled after one plain run: capture for the next call
            self.graphs[key] = _CudaGraph.capture(self.cudart, context, self.stream.handle)
        self.seen.add(key)

    def run_gate(self, clip: np.ndarray) -> GateOutput:
        n = clip.shape[0]
        host = self.clip_host[:n]
        np.copyto(host, clip)
        self.cuda.memcpy_htod_async(self.clip_device, host, self.stream)
        context = self._bind_gate(n)
        self._execute((-1, n, int(self.clip_device)), context)
        logits = self.bucket_logits_host[:n]
        self.cuda.memcpy_dtoh_async(logits, self.bucket_logits_device, self.stream)
        self.stream.synchronize()
        return GateOutput(batch=n, bucket_logits=logits.copy(), features=self.features)

    def _bind_gate(self, n: int) -> trt.IExecutionContext:
        """The gate's context with its input shape and every I/O address set for a batch of ``n``."""
        context = self.gate_context
        clip_shape = (n, *self.clip_host.shape[1:])
        _set_shape(context, "clip", clip_shape, self.gate_path)
        _set_address(context, "clip", int(self.clip_device), self.gate_path)
        _set_address(context, "features", int(self.features), self.gate_path)
        _set_address(context, "bucket_logits", int(self.bucket_logits_device), self.gate_path)
        return context

    def _bind_bucket(self, bucket: int, n: int, source: int) -> trt.IExecutionContext:
        """Bucket ``bucket``'s context reading ``n`` feature rows at device address ``source``."""
        context = self.bucket_contexts[bucket]
        path = self.bucket_paths[bucket]
        feat_shape = tuple(context.engine.get_tensor_shape("features"))[1:]
        _set_shape(context, "features", (n, *feat_shape), path)
        _set_address(context, "features", source, path)
        _set_address(context, "logits", int(self.logits_device), path)
        return context

    def run_bucket(self, bucket: int, gate: GateOutput, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        source = int(gate.features)
        if n != gate.batch or np.any(rows != np.arange(gate.batch)):
            # Gather this bucket's rows on the device; the batch axis is outermost, so a row is contiguous.
            size = self.feature_row_bytes
            for i, row in enumerate(rows):
                self.cuda.memcpy_dtod_async(int(self.gathered) + i * size, source + int(row) * size, size, self.stream)
            source = int(self.gathered)
        context = self._bind_bucket(bucket, n, source)
        self._execute((bucket, n, source), context)
        out = self.logits_host[:n]
        self.cuda.memcpy_dtoh_async(out, self.logits_device, self.stream)
        self.stream.synchronize()
        return out.copy()

    # ---- timing hooks for vared2.bench (trtexec's Enqueue Time, H2D Latency, GPU Compute Time, D2H Latency) ----
    def _timing_events(self) -> list[Any]:
        if self._events is None:
            self._events = [self.cuda.Event() for _ in range(4)]
        return self._events

    def time_gate(self, clip: np.ndarray) -> tuple[GateOutput, dict[str, float]]:
        """One gate run as ``run_gate``, timed with CUDA events on this worker's stream: ``h2d`` (the clip),
        ``compute``, ``d2h`` (``bucket_logits``) in device milliseconds and ``enqueue`` (host milliseconds of
        ``execute_async_v3``)."""
        n = clip.shape[0]
        host = self.clip_host[:n]
        np.copyto(host, clip)
        context = self._bind_gate(n)
        start, copied, computed, done = self._timing_events()
        start.record(self.stream)
        self.cuda.memcpy_htod_async(self.clip_device, host, self.stream)
        copied.record(self.stream)
        t0 = time.perf_counter()
        self._execute((-1, n, int(self.clip_device)), context)
        enqueue = (time.perf_counter() - t0) * 1e3
        computed.record(self.stream)
        logits = self.bucket_logits_host[:n]
        self.cuda.memcpy_dtoh_async(logits, self.bucket_logits_device, self.stream)
        done.record(self.stream)
        self.stream.synchronize()
        times = {
            "enqueue": enqueue,
            "h2d": copied.time_since(start),
            "compute": computed.time_since(copied),
            "d2h": done.time_since(computed),
        }
        return GateOutput(batch=n, bucket_logits=logits.copy(), features=self.features), times

    def time_bucket(self, bucket: int, gate: GateOutput) -> dict[str, float]:
        """One run of bucket ``bucket`` on all rows of ``gate``'s device features, timed like ``time_gate``.
        The features stay on the device (the serving path), so ``h2d`` is 0; ``d2h`` is the logits."""
        n = gate.batch
        context = self._bind_bucket(bucket, n, int(gate.features))
        start, _, computed, done = self._timing_events()
        start.record(self.stream)
        t0 = time.perf_counter()
        self._execute((bucket, n, int(gate.features)), context)
        enqueue = (time.perf_counter() - t0) * 1e3
        computed.record(self.stream)
        self.cuda.memcpy_dtoh_async(self.logits_host[:n], self.logits_device, self.stream)
        done.record(self.stream)
        self.stream.synchronize()
        return {
            "enqueue": enqueue,
            "h2d": 0.0,
            "compute": computed.time_since(start),
            "d2h": done.time_since(computed),
        }


def _check(result: Any) -> Any:
    """cuda-python returns ``(error, *values)``; raise on an error, else return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise BackendError(f"CUDA graph call failed with CUDA error {int(error)} ({error})")
    return values[0] if len(values) == 1 else values


class _CudaGraph:
    """A captured ``execute_async_v3``: replaying it skips TensorRT's per-launch host work."""

    def __init__(self, cudart: Any, graph: Any, exec_: Any) -> None:
        self.cudart, self.graph, self.exec = cudart, graph, exec_

    @classmethod
    def capture(cls, cudart: Any, context: Any, stream: int) -> _CudaGraph:
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(cudart.cudaStreamBeginCapture(stream, mode))
        try:
            if not context.execute_async_v3(stream):
                raise BackendError("TensorRT execute_async_v3 failed while capturing a CUDA graph")
        finally:
            graph = _check(cudart.cudaStreamEndCapture(stream))
        return cls(cudart, graph, _check(cudart.cudaGraphInstantiate(graph, 0)))


def _import_cudart() -> Any:
    """cuda-python's runtime API, imported when the backend opens, so a missing package is an error there and
    not at the second call (when the first graph is captured)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as error:
        raise BackendError(f"cuda_graphs=True needs the cuda-python package ({error})") from error
    return cudart


def check_device(manifest: Manifest, name: str, capability: tuple[int, int]) -> None:
    """Plans run only on the compute capability they were built for (unless built hardware-compatible)."""
    if manifest.build_options.get("hardware_compatibility"):
        return
    built = manifest.device.get("compute_capability")
    here = f"{capability[0]}.{capability[1]}"
    if built is None:
        raise DeviceMismatchError("device.compute_capability: missing; TensorRT manifests must record the GPU")
    if str(built) != here:
        raise DeviceMismatchError(
            f"device.compute_capability: the engines in {manifest.name!r} were built for compute capability "
            f"{built} ({manifest.device.get('name', 'unknown GPU')}); this GPU ({name}) is {here}; rebuild them here"
        )


class TrtBackend:
    """The gate and bucket ``.plan`` engines of a TensorRT engine directory, on one GPU."""

    def __init__(
        self,
        directory: Path | str,
        manifest: Manifest,
        *,
        device: int = 0,
        contexts: int = 1,
        cuda_graphs: bool = False,
    ) -> None:
        if contexts < 1:
            raise InputError(f"contexts must be at least 1, got {contexts}")
        trt, cuda = _import_tensorrt()
        cudart = _import_cudart() if cuda_graphs else None
        check_backend_version(manifest, trt.__version__, exact=3)
        cuda.init()
        gpu = cuda.Device(device)
        check_device(manifest, gpu.name(), gpu.compute_capability())
        self._cuda = cuda
        self._context = gpu.retain_primary_context()
        self._context.push()
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            trt.init_libnvinfer_plugins(logger, "")
            self._runtime = trt.Runtime(logger)
            directory = Path(directory)
            gate = _EngineInfo(trt, self._runtime, directory / manifest.gate.file, manifest.max_batch)
            buckets = [
                _EngineInfo(trt, self._runtime, directory / b.file, manifest.max_batch) for b in manifest.buckets
            ]
            self._check_interface(gate, buckets)
            self._engines = [gate, *buckets]
            self._closed = False
            self._lock = threading.Lock()
            self._pool: queue.Queue[_Worker | None] = queue.Queue()  # None: closed
            for _ in range(contexts):
                self._pool.put(_Worker(cuda, gate, buckets, manifest.max_batch, cudart))
        finally:
            self._context.pop()

    @staticmethod
    def _check_interface(gate: _EngineInfo, buckets: list[_EngineInfo]) -> None:
        """Exactly these I/O tensors: ``execute_async_v3`` needs an address for every one, and a worker binds
        only these."""
        if set(gate.inputs) != GATE_INPUTS or set(gate.outputs) != GATE_OUTPUTS:
            raise BackendError(
                f"{gate.path}: a gate engine has exactly input 'clip' and outputs 'features', 'bucket_logits'; "
                f"this one has inputs {list(gate.inputs)}, outputs {list(gate.outputs)}"
            )
        features = gate.outputs["features"]
        for b in buckets:
            if set(b.inputs) != BUCKET_INPUTS or set(b.outputs) != BUCKET_OUTPUTS:
                raise BackendError(
                    f"{b.path}: a bucket engine has exactly input 'features' and output 'logits'; "
                    f"this one has inputs {list(b.inputs)}, outputs {list(b.outputs)}"
                )
            if b.inputs["features"] != features:
                raise BackendError(
                    f"{b.path}: input 'features' is {b.inputs['features']}, the gate writes {features} "
                    "(dtype, shape without the batch axis)"
                )
            if b.outputs["logits"] != buckets[0].outputs["logits"]:
                raise BackendError(f"{b.path}: logits {b.outputs['logits']} differ from bucket 0's")

    @contextlib.contextmanager
    def session(self) -> Iterator[_Worker]:
        """A worker for one call, with the CUDA context current on this thread."""
        worker = self._pool.get()
        if worker is None:  # closed: pass the marker on, so every waiting call wakes up and fails too
            self._pool.put(None)
            raise BackendError("this TensorRT runtime is closed")
        self._context.push()
        try:
            yield worker
        finally:
            self._cuda.Context.pop()
            with self._lock:
                if not self._closed:
                    self._pool.put(worker)

    def close(self) -> None:
        """Release the engines and workers; calls waiting for a worker, and later calls, raise ``BackendError``
        instead of blocking."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._context.push()
            try:
                while True:
                    try:
                        self._pool.get_nowait()
                    except queue.Empty:
                        break
                self._engines = []
            finally:
                self._cuda.Context.pop()
            self._pool.put(None)
