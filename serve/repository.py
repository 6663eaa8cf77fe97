"""``vared2 triton``: a Triton Inference Server model repository written from an engine directory's manifest.

``REPO/vared2`` is the router (Python backend, BLS: the gate, then each clip's bucket model) and holds the engine
directory in ``vared2/engines``; ``REPO/gate`` and ``REPO/bucket_<id>`` are one model per engine, with dynamic
batching and an instance group: Python-backend models over vared2's sessions for ONNX Runtime engines (one
memory-mapped weights file for every instance process), native ``tensorrt_plan`` models for TensorRT.
``REPO/vared2-repository.json`` records what wrote it. Paths inside are relative: the folder can move
(docs/serving.md).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vared2.formats.errors import InputError
from vared2.formats.manifest import MANIFEST_NAME, Manifest
from vared2.formats.paths import atomic_directory, check_output_dir

ROUTER = "vared2"
GATE = "gate"
ENGINES = "engines"  # inside the router's folder: Triton takes only numeric subfolders for model versions
MARKER = "vared2-repository.json"
#: The router's input and outputs (one row per clip).
INPUT = "clip"
OUTPUTS = ("label_index", "label", "score", "bucket", "bucket_name", "gflops", "probabilities")
#: Request parameters the router reads, as ``Runtime.classify`` takes them.
PARAMETERS = ("max_gflops", "bucket")

_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(uint8)": "TYPE_UINT8"}


def bucket_model(bucket: int) -> str:
    """The model name of bucket ``bucket`` in the repository."""
    return f"bucket_{bucket}"


@dataclass(frozen=True)
class RepositoryOptions:
    """What ``vared2 triton`` takes besides the engine directory.

    ``instances``: instances of each engine model (processes for ONNX Runtime, execution contexts on the GPU for
    TensorRT); ``router_instances``: of the router (None: twice ``instances``, so the engines have work queued while
    a router waits on one); ``max_batch``: the largest batch a model takes (None: the manifest's); ``threads``:
    ONNX Runtime intra-op threads per instance; ``max_queue_delay_us``: how long the router's dynamic batcher
    waits to grow a batch (0: it takes what is queued). The engine models' batchers take what is queued: a router
    batch reaches them whole.
    """

    instances: int = 1
    router_instances: int | None = None
    max_batch: int | None = None
    threads: int = 1
    max_queue_delay_us: int = 0

    def check(self, manifest: Manifest) -> None:
        for name in ("instances", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if self.router_instances is not None and (
            isinstance(self.router_instances, bool) or not isinstance(self.router_instances, int)
        ):
            raise InputError(f"--router-instances: expected a positive integer, got {self.router_instances!r}")
        if self.router_instances is not None and self.router_instances < 1:
            raise InputError(f"--router-instances: expected a positive integer, got {self.router_instances!r}")
        delay = self.max_queue_delay_us
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise InputError(f"--max-queue-delay-us: expected an integer >= 0, got {delay!r}")
        batch = self.max_batch
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise InputError(f"--max-batch: expected a positive integer, got {batch!r}")
        if batch is not None and batch > manifest.max_batch:
            raise InputError(
                f"--max-batch: {batch} is more than the engines' max_batch {manifest.max_batch} "
                f"(manifest of {manifest.name!r}); rebuild them with `vared2 build --max-batch {batch}`"
            )


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(name: str, data_type: str, dims: Sequence[int], scalar: bool = False) -> str:
    # A per-clip scalar: Triton's batched dims need one element; the client sees [N] (reshape to []).
    reshape = " reshape: { shape: [ ] }" if scalar else ""
    return f"  {{ name: {json.dumps(name)} data_type: {data_type} dims: {_dims(dims)}{reshape} }}"


def model_config(
    name: str,
    *,
    backend: str | None = None,
    platform: str | None = None,
    max_batch: int,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    instances: int,
    kind: str,
    max_queue_delay_us: int,
    parameters: dict[str, str] | None = None,
) -> str:
    """One ``config.pbtxt`` (Triton's protobuf text format). ``inputs`` and ``outputs`` are ``_tensor`` lines;
    none for TensorRT, whose inputs and outputs Triton reads from the plan."""
    lines = [f"name: {json.dumps(name)}"]
    lines += [f"backend: {json.dumps(backend)}"] if backend else []
    lines += [f"platform: {json.dumps(platform)}"] if platform else []
    lines.append(f"max_batch_size: {max_batch}")
    if inputs:
        lines += ["input [", ",\n".join(inputs), "]"]
    if outputs:
        lines += ["output [", ",\n".join(outputs), "]"]
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}")
    return "\n".join(lines) + "\n"


def _shim(role: str) -> str:
    """The ``model.py`` Triton's Python backend loads: vared2's model class for ``role``."""
    return (
        f'"""The {role} of a vared2 model repository (written by `vared2 triton`; the code is vared2.serve)."""\n\n'
        f"from vared2.serve.triton_models import {role.capitalize()}Model as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` where the filesystem allows (no copy of a large weights file; a later
    rebuild of the engine directory writes new files, so the link keeps the bytes it was made with), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _ort_io(directory: Path, manifest: Manifest, threads: int) -> tuple[list[str], list[str]]:
    """The gate's outputs and a bucket's input as config lines, read from the sessions (so their type and shape
    are the engines' own, fp16 included)."""
    from vared2.runtime.backends import ort_engine_loader

    load = ort_engine_loader(directory, manifest, threads=threads)
    gate = load(manifest.gate.file).session
    bucket = load(manifest.buckets[0].file).session

    def line(meta: Any) -> str:
        if meta.type not in _ORT_TYPES:
            raise InputError(f"{directory}: engine tensor {meta.name!r} has type {meta.type}; vared2 cannot serve it")
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in meta.shape[1:]]
        return _tensor(meta.name, _ORT_TYPES[meta.type], dims)

    gate_outputs = [line(o) for o in gate.get_outputs() if o.name in ("features", "bucket_logits")]
    features = [line(i) for i in bucket.get_inputs()]
    logits = [line(o) for o in bucket.get_outputs() if o.name == "logits"]
    return gate_outputs, features + logits


def _write(work: Path, engine_dir: Path, manifest: Manifest, options: RepositoryOptions) -> None:
    spec = manifest.model
    batch = options.max_batch or manifest.max_batch
    delay = options.max_queue_delay_us
    engines = work / ROUTER / ENGINES
    clip = _tensor("clip", "TYPE_UINT8", [spec.frames, spec.size, spec.size, 3])
    tensorrt = manifest.backend == "tensorrt"

    _place(engine_dir / MANIFEST_NAME, engines / MANIFEST_NAME)
    if tensorrt:
        for name, entry in [(GATE, manifest.gate.file), *((bucket_model(b.id), b.file) for b in manifest.buckets)]:
            _place(engine_dir / entry, work / name / "1" / "model.plan")
            config = model_config(
                name,
                platform="tensorrt_plan",
                max_batch=batch,
                instances=options.instances,
                kind="KIND_GPU",
                max_queue_delay_us=0,
            )
            (work / name / "config.pbtxt").write_text(config)
    else:
        for _, rel in manifest.named_files():
            _place(engine_dir / rel, engines / rel)
        gate_outputs, bucket_io = _ort_io(engines, manifest, options.threads)
        common = {"engine_dir": f"../{ROUTER}/{ENGINES}", "threads": str(options.threads)}
        models = [(GATE, [clip], gate_outputs, "gate")]
        models += [(bucket_model(b.id), bucket_io[:1], bucket_io[1:], str(b.id)) for b in manifest.buckets]
        for name, inputs, outputs, engine in models:
            config = model_config(
                name,
                backend="python",
                max_batch=batch,
                inputs=inputs,
                outputs=outputs,
                instances=options.instances,
                kind="KIND_CPU",
                max_queue_delay_us=0,  # the router's batch arrives whole; waiting here only adds latency
                parameters={**common, "engine": engine},
            )
            (work / name / "1").mkdir(parents=True, exist_ok=True)
            (work / name / "config.pbtxt").write_text(config)
            (work / name / "1" / "model.py").write_text(_shim("engine"))

    outputs = [
        _tensor("label_index", "TYPE_INT32", [1], scalar=True),
        _tensor("label", "TYPE_STRING", [1], scalar=True),
        _tensor("score", "TYPE_FP64", [1], scalar=True),
        _tensor("bucket", "TYPE_INT32", [1], scalar=True),
        _tensor("bucket_name", "TYPE_STRING", [1], scalar=True),
        _tensor("gflops", "TYPE_FP64", [1], scalar=True),
        _tensor("probabilities", "TYPE_FP64", [spec.num_classes]),
    ]
    router = model_config(
        ROUTER,
        backend="python",
        max_batch=batch,
        inputs=[clip],
        outputs=outputs,
        instances=options.router_instances or 2 * options.instances,
        kind="KIND_CPU",
        max_queue_delay_us=delay,
        parameters={"engine_dir": ENGINES},
    )
    (work / ROUTER / "1").mkdir(parents=True, exist_ok=True)
    (work / ROUTER / "config.pbtxt").write_text(router)
    (work / ROUTER / "1" / "model.py").write_text(_shim("router"))
    record = {
        "format": "vared2-triton-repository",
        "version": 1,
        "engines": manifest.name,
        "backend": manifest.backend,
        "backend_version": manifest.backend_version,
        "source": str(engine_dir),
        "options": asdict(options),
        "models": [ROUTER, GATE, *(bucket_model(b.id) for b in manifest.buckets)],
    }
    (work / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def write_repository(engine_dir: Path | str, out: Path | str, options: RepositoryOptions | None = None) -> Path:
    """Write the model repository for ``engine_dir`` to ``out``, replacing a previous one atomically; returns it.

    ``engine_dir`` is checked (manifest, every sha256) and the options against it before anything is written;
    ``out`` follows ``vared2 export``'s and ``build``'s rule: absent, empty or a repository written here before
    (it has ``vared2-repository.json``), and neither the engine directory nor the current directory.
    """
    options = options or RepositoryOptions()
    source = Path(engine_dir)
    manifest = Manifest.load(source, verify=True)
    options.check(manifest)
    final = check_output_dir(
        out, marker=MARKER, kind="a vared2 model repository", source=source, source_kind="engine directory"
    )
    with atomic_directory(final, label="writing") as work:  # readers see the old repository or the new one
        _write(work, source.resolve(), manifest, options)
    return final
