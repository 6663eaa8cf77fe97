"""The serving API: open an engine directory, classify clips, classify the sliding windows of a video.

``Runtime.classify`` runs the gate once per batch, picks each clip's bucket (the gate's argmax, optionally within a
GFLOPs budget or forced), runs each distinct bucket once on its rows of the gate's features and returns results in
input order. Nothing mutable is shared between calls, so concurrent calls from several threads are safe and give
the serial results.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vared2.formats.errors import InputError, InputNotFoundError, InputTypeError
from vared2.formats.manifest import BucketEntry, Manifest

from .backends import Backend, BackendSession, open_backend
from .errors import RuntimeClosedError, VideoError
from .result import Result
from .video import DEFAULT_TIMEOUT, ON_ERROR, OnError, check_timeout, decode, is_url, windows


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (fp16 engines' logits included), numerically stable."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Runtime:
    """Engines of one directory behind a gate → bucket pipeline. Create with :meth:`open`."""

    def __init__(self, directory: Path, manifest: Manifest, backend: Backend) -> None:
        self.directory = directory
        self.manifest = manifest
        self.backend = backend
        spec = manifest.model
        self.clip_shape = (spec.frames, spec.size, spec.size, 3)
        self.labels = list(spec.labels)
        self._gflops = np.array([manifest.gate.gflops + b.gflops for b in manifest.buckets])
        dims = ", ".join(map(str, self.clip_shape))
        self._expected_shape = f"[T, H, W, 3] = {list(self.clip_shape)} or [N, {dims}]"
        # close() waits for the calls inside the engines and refuses new ones (issue 27: never an IndexError).
        self._calls = 0
        self._closed = False
        self._state = threading.Condition()

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        threads: int | None = None,
        verify: bool = True,
        providers: Sequence[str] | None = None,
        shared_thread_pool: bool = False,
        **backend_options: Any,
    ) -> Runtime:
        """Load the engines of ``directory``; the backend is the one the manifest names.

        Checks the manifest (fields, paths, and every file's sha256 unless ``verify=False``) and the installed
        backend's version before loading anything. ``threads``, ``providers`` and ``shared_thread_pool`` are ONNX
        Runtime options (intra-op threads; execution providers, e.g. ``["CUDAExecutionProvider"]``; one
        process-wide pool of ``threads`` for all sessions, faster for small buckets but fixed for the process:
        ``vared2.runtime.thread_pool``); TensorRT takes ``device``, ``contexts`` (concurrent calls) and
        ``cuda_graphs``.
        """
        path = Path(directory)
        manifest = Manifest.load(path, verify=verify)
        backend = open_backend(
            path,
            manifest,
            threads=threads,
            providers=providers,
            shared_thread_pool=shared_thread_pool,
            **backend_options,
        )
        return cls(path, manifest, backend)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse new calls, wait for the ones running in other threads, then free the engines. Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.wait_for(lambda: self._calls == 0)
        self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosedError(f"{self.directory}: this Runtime is closed; open the engines again to use them")

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One call inside the engines: refused once ``close()`` has begun, waited for by ``close()``."""
        with self._state:
            self._check_open()
            self._calls += 1
        try:
            yield
        finally:
            with self._state:
                self._calls -= 1
                self._state.notify_all()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- input checks ---------------------------------------------------------------------------------
    def _check_clip(self, clip: Any) -> tuple[np.ndarray, bool]:
        """``[T,H,W,3]`` or ``[N,T,H,W,3]`` uint8 → a contiguous batch and whether the input was a single clip."""
        expected = self._expected_shape
        if not isinstance(clip, np.ndarray):
            raise InputTypeError(f"clip must be a numpy uint8 array of shape {expected}, got {type(clip).__name__}")
        if clip.dtype != np.uint8:
            raise InputTypeError(f"clip must be uint8 (RGB 0..255) of shape {expected}, got dtype {clip.dtype}")
        if clip.ndim not in (4, 5):
            raise InputError(f"clip must have shape {expected}, got {list(clip.shape)}")
        single = clip.ndim == 4
        batch = clip[None] if single else clip
        if batch.shape[0] == 0:
            raise InputError(f"empty batch: clip has shape {list(clip.shape)}, expected {expected} with N >= 1")
        if tuple(batch.shape[1:]) != self.clip_shape:
            raise InputError(f"clip must have shape {expected}, got {list(clip.shape)}")
        return np.ascontiguousarray(batch), single

    def _allowed(self, max_gflops: float | None, bucket: int | str | None) -> np.ndarray:
        """Boolean mask of the buckets the choice may take."""
        if bucket is not None and max_gflops is not None:
            raise InputError("give bucket= (force one bucket) or max_gflops= (a budget), not both")
        mask = np.ones(self.manifest.num_buckets, dtype=bool)
        if bucket is not None:
            if isinstance(bucket, bool) or not isinstance(bucket, int | str | np.integer):
                raise InputTypeError(f"bucket must be a bucket id (int) or name (str), got {type(bucket).__name__}")
            entry = self.manifest.bucket(int(bucket) if isinstance(bucket, np.integer) else bucket)
            mask[:] = False
            mask[entry.id] = True
        elif max_gflops is not None:
            # numbers.Real: Python and NumPy numbers alike (a budget often comes out of a NumPy computation).
            if isinstance(max_gflops, bool) or not isinstance(max_gflops, numbers.Real) or math.isnan(max_gflops):
                raise InputTypeError(f"max_gflops must be a number, got {max_gflops!r}")
            mask = self._gflops <= max_gflops
            if not mask.any():
                cheapest: BucketEntry = self.manifest.buckets[int(np.argmin(self._gflops))]
                raise InputError(
                    f"max_gflops={max_gflops} is below every bucket: the cheapest, {cheapest.id} ({cheapest.name}), "
                    f"needs {self._gflops[cheapest.id]:.4g} GFLOPs (gate {self.manifest.gate.gflops:.4g} + bucket "
                    f"{cheapest.gflops:.4g})"
                )
        return mask

    # ---- classification ---------------------------------------------------------------------------------
    def classify(
        self,
        clip: Any,
        *,
        max_gflops: float | None = None,
        bucket: int | str | None = None,
        topk: int = 5,
    ) -> Result | list[Result]:
        """Classify one clip ``[T,H,W,3]`` (→ a Result) or a batch ``[N,T,H,W,3]`` (→ a list, in input order).

        The clip is RGB uint8, already resized and cropped to the manifest's size. ``max_gflops`` restricts the
        choice to buckets whose total cost (gate + bucket) fits; ``bucket`` (id, name or short name) forces one.
        Everything is checked before any engine runs.
        """
        start = time.perf_counter()
        self._check_open()
        batch, single = self._check_clip(clip)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be a positive integer, got {topk!r}")
        allowed = self._allowed(max_gflops, bucket)
        results: list[Result] = []
        step = self.manifest.max_batch
        with self._call(), self.backend.session() as session:
            for begin in range(0, batch.shape[0], step):
                results += self._classify_batch(session, batch[begin : begin + step], allowed, topk, start)
        return results[0] if single else results

    def _classify_batch(
        self, session: BackendSession, batch: np.ndarray, allowed: np.ndarray, topk: int, start: float
    ) -> list[Result]:
        t0 = time.perf_counter()
        gate = session.run_gate(batch)
        gate_ms = (time.perf_counter() - t0) * 1e3
        scores = np.where(allowed, gate.bucket_logits.astype(np.float64), -np.inf)
        choice = np.argmax(scores, axis=1)
        probabilities: list[np.ndarray | None] = [None] * gate.batch
        bucket_ms = np.zeros(gate.batch)
        for b in np.unique(choice):
            rows = np.flatnonzero(choice == b)
            t1 = time.perf_counter()
            logits = session.run_bucket(int(b), gate, rows)
            bucket_ms[rows] = (time.perf_counter() - t1) * 1e3
            for row, p in zip(rows, softmax(logits), strict=True):
                probabilities[row] = p
        total_ms = (time.perf_counter() - start) * 1e3
        k = min(topk, len(self.labels))
        out = []
        for i, p in enumerate(probabilities):
            assert p is not None
            entry = self.manifest.buckets[int(choice[i])]
            order = np.argsort(-p, kind="stable")[:k]
            out.append(
                Result(
                    label=self.labels[int(order[0])],
                    score=float(p[order[0]]),
                    topk=[(self.labels[int(j)], float(p[j])) for j in order],
                    bucket=entry.id,
                    bucket_name=entry.name,
                    gflops=float(self._gflops[entry.id]),
                    timings={"gate": gate_ms, "bucket": float(bucket_ms[i]), "total": total_ms},
                    probabilities=p,
                )
            )
        return out

    # ---- video ------------------------------------------------------------------------------------------
    def stream(
        self,
        source: str | os.PathLike[str],
        stride: int = 8,
        *,
        on_error: OnError = "raise",
        max_gflops: float | None = None,
        bucket: int | str | None = None,
        topk: int = 5,
        options: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Iterator[Result]:
        """Classify the sliding windows of a video file or network stream (anything FFmpeg opens).

        Windows are the manifest's T frames, one every ``stride`` frames; each result carries its frame range and
        timestamps. A source that cannot be opened (or, with ``on_error="raise"``, a truncated local file) raises
        before the first result. A decode failure mid-stream raises :class:`StreamDecodeError` naming the position
        (``"raise"``), ends the stream there (``"stop"``), or is skipped (``"skip"``; windows restart after the gap).
        ``options`` go to FFmpeg (``av.open``), e.g. ``{"rtsp_transport": "tcp"}``. ``timeout`` (seconds, default
        ``DEFAULT_TIMEOUT`` = 10; None waits forever) bounds opening the source and each read from it: a source that
        stalls longer raises :class:`VideoOpenError` (opening) or :class:`StreamDecodeError` (reading).
        """
        # Bad arguments and a missing file fail here, at the call, not at the first iteration.
        self._check_open()
        check_timeout(timeout)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise InputError(f"stride must be a positive integer, got {stride!r}")
        if on_error not in ON_ERROR:
            raise InputError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be a positive integer, got {topk!r}")
        self._allowed(max_gflops, bucket)
        name = os.fspath(source)
        if not is_url(name) and not Path(name).exists():
            raise InputNotFoundError(f"{name}: no such video file")
        return self._stream(name, stride, on_error, max_gflops, bucket, topk, options, timeout)

    def _stream(
        self,
        source: str,
        stride: int,
        on_error: OnError,
        max_gflops: float | None,
        bucket: int | str | None,
        topk: int,
        options: Mapping[str, str] | None,
        timeout: float | None,
    ) -> Iterator[Result]:
        spec = self.manifest.model
        frames = decode(source, spec.size, spec.resize_to, on_error=on_error, options=options, timeout=timeout)
        count = 0
        for window in windows(frames, spec.frames, stride):
            count += 1
            result = self.classify(window.clip, max_gflops=max_gflops, bucket=bucket, topk=topk)
            assert isinstance(result, Result)
            yield replace(
                result,
                source=source,
                start_frame=window.start_frame,
                end_frame=window.end_frame,
                start=window.start,
                end=window.end,
            )
        if count == 0:
            raise VideoError(source, f"too short: no window of {spec.frames} consecutive frames could be decoded")
