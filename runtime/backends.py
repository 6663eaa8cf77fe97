"""Inference backends behind the runtime: one engine per file, and the gate → bucket pipeline over them.

Two levels, so each backend can keep data where it belongs:

* :class:`Engine` — one loaded model: input names, output names, ``run``. :class:`OrtEngine` wraps an ONNX Runtime
  session.
* :class:`Backend` — the gate and the bucket engines of one engine directory. ``run_gate`` returns the bucket
  logits on the host and the stem ``features`` in whatever form the backend keeps them (a numpy array for ONNX
  Runtime; device memory for TensorRT, which never copies them to the host); ``run_bucket`` feeds rows of those
  features to one bucket engine.

Every method is safe to call from several threads at once: nothing here keeps per-call state on the object.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vared2.formats.errors import InputError, InputTypeError
from vared2.formats.manifest import Manifest, ManifestError

from .errors import BackendError, BackendVersionError

if TYPE_CHECKING:  # onnxruntime is imported when an ONNX Runtime backend is opened, not with the runtime
    from vared2.formats.sessions import SharedWeights


class VersionMismatchWarning(UserWarning):
    """The backend's patch version differs from the one that built the engines (they still load)."""


class Engine(Protocol):
    """One loaded engine file."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class GateOutput:
    """One gate run: ``bucket_logits`` on the host, ``features`` wherever the backend keeps them."""

    batch: int
    bucket_logits: np.ndarray
    features: Any


class BackendSession(Protocol):
    """What one classify call uses: the gate, then bucket engines on rows of the gate's features."""

    def run_gate(self, clip: np.ndarray) -> GateOutput: ...

    def run_bucket(self, bucket: int, gate: GateOutput, rows: np.ndarray) -> np.ndarray: ...


class Backend(Protocol):
    """The gate and bucket engines of one engine directory. ``session()`` hands one call what it may use alone
    (TensorRT: execution contexts and buffers; ONNX Runtime: the shared, thread-safe sessions)."""

    def session(self) -> AbstractContextManager[BackendSession]: ...

    def close(self) -> None: ...


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch in "0123456789")  # ASCII: str.isdigit() accepts "²"
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_backend_version(manifest: Manifest, installed: str, exact: int) -> None:
    """Compare the installed backend version with the one that built the engines.

    The first ``exact`` components (major.minor for ONNX Runtime, major.minor.patch for TensorRT, whose plans are
    tied to the version that built them) must match — a clear :class:`BackendVersionError` otherwise; a difference
    further down is a :class:`VersionMismatchWarning`.
    """
    built, here = _version_tuple(manifest.backend_version), _version_tuple(installed)
    if built[:exact] != here[:exact]:
        want = ".".join(str(v) for v in built[:exact])
        raise BackendVersionError(
            f"backend_version: the engines in {manifest.name!r} were built with {manifest.backend} "
            f"{manifest.backend_version}, but {installed} is installed; install {manifest.backend} {want}.x "
            f"or rebuild the engines with `vared2 build`"
        )
    if built != here:
        warnings.warn(
            f"{manifest.name!r} was built with {manifest.backend} {manifest.backend_version}, running with {installed}",
            VersionMismatchWarning,
            stacklevel=3,
        )


class OrtEngine:
    """An ONNX Runtime session over one ``.onnx`` file (external data next to it is found by ORT itself).

    ``threads`` is the intra-op thread count (None: ORT's default, one per physical core); with
    ``shared_thread_pool`` the session runs on the process's shared pool of ``threads`` instead
    (``vared2.runtime.thread_pool.shared_pool_threads``). ``providers`` are ONNX Runtime execution provider
    names; the CPU provider is always appended as the fallback.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        graph_optimization: str = "all",
        session_config: Mapping[str, str] | None = None,
        weights: SharedWeights | None = None,
        shared_thread_pool: bool = False,
    ) -> None:
        import onnxruntime as ort

        from vared2.formats.sessions import LEVELS, open_session

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)):
            raise InputTypeError(f"threads must be an integer or None, got {threads!r}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be a positive integer or None, got {threads!r}")
        if graph_optimization not in LEVELS:
            raise InputError(f"graph_optimization must be one of {', '.join(LEVELS)}, got {graph_optimization!r}")
        wanted = list(providers or ["CPUExecutionProvider"])
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(
                f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)}); "
                "install onnxruntime-gpu for CUDAExecutionProvider"
            )
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        if shared_thread_pool:  # the process's pool, created (or checked against threads) here
            from .thread_pool import shared_pool_threads

            shared_pool_threads(threads)
        else:
            from .thread_pool import check_per_session_pools

            check_per_session_pools()

        def use_shared_pool(options: Any) -> None:
            options.use_per_session_threads = False
            options.intra_op_num_threads = options.inter_op_num_threads = 0  # else ORT warns they are ignored

        self.path = Path(path)
        try:
            # Weights owned by the caller (a memory map shared by every session) are used in place: the loader
            # the build's parity check uses too (vared2.formats.sessions).
            self.session = open_session(
                self.path,
                level=graph_optimization,
                threads=threads,
                config=session_config,
                weights=weights,
                providers=wanted,
                configure=use_shared_pool if shared_thread_pool else None,
            )
        except KeyError:  # an engine file the weights index does not list: the weights' own error
            raise
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"{self.path}: ONNX Runtime could not load it ({error})") from error
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def input_shape(self, name: str) -> list[int | str | None]:
        for i in self.session.get_inputs():
            if i.name == name:
                return list(i.shape)
        raise KeyError(name)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self._outputs
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))


def ort_engine_loader(
    directory: Path | str,
    manifest: Manifest,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    shared_thread_pool: bool = False,
) -> Callable[[str], OrtEngine]:
    """A function that opens one engine file of an ONNX Runtime engine directory as :class:`OrtBackend` does:
    the manifest's optimisation level and session config, initializers from the shared weights file. Checks the
    ONNX Runtime version first. Also used where a process serves one engine only (``vared2.serve``)."""
    import onnxruntime as ort

    from vared2.formats.sessions import LEVELS, SharedWeights

    check_backend_version(manifest, ort.__version__, exact=2)
    directory = Path(directory)
    level = manifest.build_options.get("optimization", "all")
    if level not in LEVELS:
        raise ManifestError(f"build_options.optimization: expected one of {', '.join(LEVELS)}, got {level!r}")
    config = manifest.build_options.get("ort_session_config", {})
    if not isinstance(config, dict):
        raise ManifestError(f"build_options.ort_session_config: expected an object, got {config!r}")
    weights = None if manifest.weights is None else SharedWeights.open(directory, manifest.weights.file)

    def load(rel: str) -> OrtEngine:
        return OrtEngine(
            directory / rel,
            threads=threads,
            providers=providers,
            graph_optimization=level,
            session_config=config,
            weights=weights,
            shared_thread_pool=shared_thread_pool,
        )

    return load


class OrtBackend:
    """The gate and bucket sessions of an ONNX Runtime engine directory.

    Session options come from the call (threads, providers) and from the manifest's build options: the graph
    optimisation level the builder chose and checked parity with (``optimization``) and any extra session
    config entries (``ort_session_config``). With a shared weights file (``manifest.weights``), every session
    reads its initializers from one read-only memory map of it (``vared2.formats.sessions``).
    """

    def __init__(
        self,
        directory: Path | str,
        manifest: Manifest,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        shared_thread_pool: bool = False,
    ) -> None:
        load = ort_engine_loader(
            directory, manifest, threads=threads, providers=providers, shared_thread_pool=shared_thread_pool
        )
        self.gate = load(manifest.gate.file)
        self.buckets = [load(b.file) for b in manifest.buckets]
        self._check_interface(manifest)

    def _check_interface(self, manifest: Manifest) -> None:
        """The tensor names of DESIGN.md §4; a wrong file fails here, at open, not at the first clip."""
        if "clip" not in self.gate.input_names or not {"features", "bucket_logits"} <= set(self.gate.output_names):
            raise BackendError(
                f"{self.gate.path}: a gate engine has input 'clip' and outputs 'features', 'bucket_logits'; "
                f"this one has inputs {self.gate.input_names}, outputs {self.gate.output_names}"
            )
        for entry, engine in zip(manifest.buckets, self.buckets, strict=True):
            if engine.input_names != ["features"] or "logits" not in engine.output_names:
                raise BackendError(
                    f"{engine.path}: bucket {entry.id} ({entry.name}) needs input 'features' and output 'logits'; "
                    f"it has inputs {engine.input_names}, outputs {engine.output_names}"
                )

    def session(self) -> AbstractContextManager[BackendSession]:
        # ORT's InferenceSession.run is thread-safe, and nothing here keeps per-call state: share everything.
        return nullcontext(self)

    def run_gate(self, clip: np.ndarray) -> GateOutput:
        out = self.gate.run({"clip": clip}, ["features", "bucket_logits"])
        return GateOutput(batch=clip.shape[0], bucket_logits=out["bucket_logits"], features=out["features"])

    def run_bucket(self, bucket: int, gate: GateOutput, rows: np.ndarray) -> np.ndarray:
        features = gate.features
        if len(rows) != gate.batch or np.any(rows != np.arange(gate.batch)):
            features = features[rows]
        return self.buckets[bucket].run({"features": features}, ["logits"])["logits"]

    def close(self) -> None:
        """Drop the sessions (ORT frees them with the last reference)."""
        self.buckets = []


def open_backend(
    directory: Path | str,
    manifest: Manifest,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    shared_thread_pool: bool = False,
    **options: Any,
) -> Backend:
    """The backend the manifest names, loaded. TensorRT is imported only here, only for TensorRT engines."""
    if manifest.backend == "onnxruntime":
        if options:
            raise InputTypeError(f"unexpected options for ONNX Runtime engines: {', '.join(sorted(options))}")
        return OrtBackend(
            directory, manifest, threads=threads, providers=providers, shared_thread_pool=shared_thread_pool
        )
    if manifest.backend == "tensorrt":
        if providers is not None or threads is not None or shared_thread_pool:
            raise InputTypeError(
                "threads=, providers= and shared_thread_pool= are ONNX Runtime options; TensorRT engines run on the GPU"
            )
        from .tensorrt_backend import TrtBackend

        return TrtBackend(directory, manifest, **options)
    raise BackendError(f"backend: unknown backend {manifest.backend!r}")
