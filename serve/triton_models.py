"""The models of a vared2 repository as Triton's Python backend runs them (each ``model.py`` imports one).

:class:`RouterModel` (``vared2``) is a :class:`~vared2.runtime.Runtime` whose backend calls the ``gate`` and
``bucket_<id>`` models through BLS, so bucket choice, budget, forced bucket, grouping and softmax are
``Runtime.classify``'s; the requests a batch hands over are classified together per (budget, bucket) pair.
:class:`EngineModel` (``gate``, ``bucket_<id>`` of ONNX Runtime engines) runs one vared2 engine session on the
concatenated rows of its requests. A bad request gets an error naming the input or parameter; none stops the
server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from vared2.formats.manifest import MANIFEST_NAME, Manifest
from vared2.runtime import BackendError, Result, Runtime
from vared2.runtime.backends import GateOutput, ort_engine_loader

from .repository import GATE, INPUT, OUTPUTS, PARAMETERS, bucket_model


def _pb() -> Any:
    """``triton_python_backend_utils``, which exists only inside Triton's Python backend stub."""
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _engine_dir(args: dict[str, str], parameters: dict[str, str]) -> Path:
    """The engine directory, relative to the model's own folder (so the repository can move)."""
    return (Path(args["model_repository"]) / parameters["engine_dir"]).resolve()


def _error(message: str) -> Any:
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


class _BlsSession:
    """The runtime's backend session over BLS: the gate model, then bucket models by name."""

    def __init__(self, tensorrt: bool) -> None:
        self.tensorrt = tensorrt

    def _call(self, model: str, value: Any, outputs: Sequence[str]) -> Any:
        """One BLS request; the response's output tensors by name (left in the Python backend's shared memory)."""
        pb = _pb()
        kwargs: dict[str, Any] = {}
        if self.tensorrt and hasattr(pb, "PreferredMemory"):  # TensorRT's outputs come back to the host
            kwargs["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        request = pb.InferenceRequest(model_name=model, inputs=[value], requested_output_names=list(outputs), **kwargs)
        response = request.exec()
        if response.has_error():
            raise BackendError(f"model {model!r}: {response.error().message()}")
        return {out: pb.get_output_tensor_by_name(response, out) for out in outputs}

    def run_gate(self, clip: np.ndarray) -> GateOutput:
        out = self._call(GATE, _pb().Tensor("clip", clip), ["features", "bucket_logits"])
        # features stay the gate's output tensor: a bucket that takes every row gets it as it is, with no copy.
        return GateOutput(batch=clip.shape[0], bucket_logits=out["bucket_logits"].as_numpy(), features=out["features"])

    def run_bucket(self, bucket: int, gate: GateOutput, rows: np.ndarray) -> np.ndarray:
        features = gate.features
        if len(rows) != gate.batch:
            features = _pb().Tensor("features", np.ascontiguousarray(features.as_numpy()[rows]))
        return self._call(bucket_model(bucket), features, ["logits"])["logits"].as_numpy()


class _BlsBackend:
    def __init__(self, tensorrt: bool) -> None:
        self._session = _BlsSession(tensorrt)

    def session(self) -> AbstractContextManager[_BlsSession]:
        return nullcontext(self._session)

    def close(self) -> None:
        pass


def read_parameters(text: str | None) -> tuple[float | None, int | str | None]:
    """A request's ``max_gflops`` and ``bucket`` from Triton's JSON of its parameters; unknown ones are refused."""
    parameters = json.loads(text or "{}")
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown request parameter(s) {', '.join(map(repr, unknown))}; vared2 takes {PARAMETERS}")
    budget, bucket = parameters.get("max_gflops"), parameters.get("bucket")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)):
        raise ValueError(f"request parameter 'max_gflops': expected a number, got {budget!r}")
    if budget is not None and not math.isfinite(budget):
        raise ValueError(f"request parameter 'max_gflops': expected a finite number, got {budget!r}")
    if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int | str)):
        raise ValueError(f"request parameter 'bucket': expected a bucket id or name, got {bucket!r}")
    return budget, bucket


class RouterModel:
    """``vared2``: clips in, one label, score, bucket and cost per clip out."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        directory = _engine_dir(args, _parameters(config))
        # TensorRT repositories keep only the manifest here (the plans are the engine models'): read, not loaded.
        manifest = Manifest.from_dict(json.loads((directory / MANIFEST_NAME).read_text()))
        self.runtime = Runtime(directory, manifest, _BlsBackend(manifest.backend == "tensorrt"))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        pb = _pb()
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[Any, Any], list[tuple[int, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            try:
                key = read_parameters(request.parameters())
            except ValueError as error:
                responses[i] = _error(str(error))
                continue
            clip = pb.get_input_tensor_by_name(request, INPUT).as_numpy()
            if len(clip) == 0:  # alone, the runtime would refuse it; batched with others it must not reach them
                responses[i] = _error(f"input {INPUT!r}: empty batch (shape {list(clip.shape)}); send 1 or more clips")
                continue
            groups.setdefault(key, []).append((i, clip))
        for (budget, bucket), members in groups.items():
            batch = np.concatenate([clip for _, clip in members])
            try:
                results = self.runtime.classify(batch, max_gflops=budget, bucket=bucket)
            except (ValueError, TypeError) as error:
                name = "max_gflops" if budget is not None else "bucket" if bucket is not None else INPUT
                for i, _ in members:
                    responses[i] = _error(f"request parameter {name!r}: {error}" if name != INPUT else str(error))
                continue
            except Exception as error:  # an engine model failed: this batch fails, the server goes on
                for i, _ in members:
                    responses[i] = _error(f"vared2 router: {error}")
                continue
            assert isinstance(results, list)
            begin = 0
            for i, clip in members:
                wanted = set(requests[i].requested_output_names()) or set(OUTPUTS)
                tensors = self._tensors(results[begin : begin + len(clip)], wanted)
                responses[i] = pb.InferenceResponse(output_tensors=tensors)
                begin += len(clip)
        return responses

    def _tensors(self, results: list[Result], wanted: set[str]) -> list[Any]:
        """The outputs the request asked for (Triton asks for all when the client names none)."""
        pb = _pb()
        make: dict[str, Callable[[], np.ndarray]] = {
            "label_index": lambda: np.array([self.runtime.labels.index(r.label) for r in results], dtype=np.int32),
            "label": lambda: np.array([r.label.encode() for r in results], dtype=np.object_),
            "score": lambda: np.array([r.score for r in results], dtype=np.float64),
            "bucket": lambda: np.array([r.bucket for r in results], dtype=np.int32),
            "bucket_name": lambda: np.array([r.bucket_name.encode() for r in results], dtype=np.object_),
            "gflops": lambda: np.array([r.gflops for r in results], dtype=np.float64),
            "probabilities": lambda: np.stack([r.probabilities for r in results]).astype(np.float64),
        }
        return [pb.Tensor(name, make[name]()) for name in OUTPUTS if name in wanted]

    def finalize(self) -> None:
        self.runtime.close()


class EngineModel:
    """``gate`` or ``bucket_<id>``: one ONNX Runtime engine of the shared engine directory."""

    def initialize(self, args: dict[str, str]) -> None:
        parameters = _parameters(json.loads(args["model_config"]))
        directory = _engine_dir(args, parameters)
        role = parameters["engine"]
        # One process per instance: the gate's checks every sha256, the buckets only find their files.
        manifest = Manifest.load(directory, verify=role == "gate")
        load = ort_engine_loader(directory, manifest, threads=int(parameters["threads"]))
        if role == "gate":
            self.engine, self.input, self.outputs = load(manifest.gate.file), "clip", ["features", "bucket_logits"]
        else:
            entry = manifest.bucket(int(role))
            self.engine, self.input, self.outputs = load(entry.file), "features", ["logits"]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        pb = _pb()
        arrays = [pb.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        try:
            out = self.engine.run({self.input: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)}, self.outputs)
        except Exception as error:  # ORT's own error types: every request of the batch gets the message
            return [_error(f"{self.engine.path.name}: {error}") for _ in requests]
        ends = np.cumsum([len(a) for a in arrays])
        return [
            pb.InferenceResponse(output_tensors=[pb.Tensor(n, out[n][end - len(a) : end]) for n in self.outputs])
            for a, end in zip(arrays, ends, strict=True)
        ]

    def finalize(self) -> None:
        del self.engine
