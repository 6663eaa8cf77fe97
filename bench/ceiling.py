"""The *ceiling* of a bucket: how much of its FLOPs saving the dense convolutions alone turn into time.

From each bucket's ONNX graph, a graph of only its top-level ``Conv`` nodes at their real shapes (no reconstruction,
activation or residual), timed with the engines' session options, all buckets interleaved; then
``ceiling = (conv FLOPs ÷ full conv FLOPs) ÷ (conv latency ÷ full conv latency)``, and a bucket's efficiency ÷ its
ceiling says how close the whole graph comes to what its convolutions allow (docs/benchmarks.md). ONNX Runtime
engine directories only; ``onnx`` is imported lazily, so the rest of ``vared2.bench`` runs without it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vared2.formats.errors import InputError
from vared2.formats.manifest import Manifest
from vared2.runtime.backends import OrtEngine

from .timing import DEFAULT_TIMING, TimingSettings, Trace, measure_interleaved

#: Seed of the random inputs and weights of the convolution-only graphs (timing does not depend on the values;
#: normal values avoid denormals).
SEED = 0


@dataclass(frozen=True)
class ConvLayer:
    """One ``Conv`` node of a bucket graph at its real shape (batch axis set)."""

    name: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    has_bias: bool
    attributes: tuple[Any, ...]  # onnx.AttributeProto

    @property
    def macs(self) -> int:
        """Multiply-adds: every output element is a dot product over ``C_in / group × kernel`` inputs."""
        return int(np.prod(self.output_shape, dtype=np.int64) * np.prod(self.weight_shape[1:], dtype=np.int64))


@dataclass
class ConvOnly:
    """The convolution-only timing of one bucket."""

    bucket: int
    layers: int
    gflops: float  # multiply-adds of the convolutions, in G (the model's FLOPs convention)
    trace: Trace
    flops_fraction: float = 1.0
    latency_fraction: float = 1.0

    @property
    def ceiling(self) -> float:
        return self.flops_fraction / self.latency_fraction

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "conv_layers": self.layers,
            "conv_gflops": self.gflops,
            "conv_flops_fraction": self.flops_fraction,
            "conv_median_ms": self.trace.latency.median,
            "conv_latency_fraction": self.latency_fraction,
            "ceiling": self.ceiling,
            "trace": self.trace.to_dict(samples),
        }


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") or not d.HasField("dim_value") else d.dim_value
            for d in value_info.type.tensor_type.shape.dim]  # fmt: skip


def conv_layers(path: Path | str, batch: int = 1) -> list[ConvLayer]:
    """The top-level ``Conv`` nodes of an ONNX graph with shapes from ONNX shape inference (model-local functions
    included); the symbolic batch axis becomes ``batch``. Convolutions inside functions (reconstruction) are not
    top-level and are left out on purpose."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:  # a concrete batch, so shapes stay concrete through reshapes that fold it
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | str]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[info.name] = _dims(info)
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    def concrete(name: str, node: str, what: str) -> tuple[int, ...]:
        dims = shapes.get(name)
        if dims is None:
            raise InputError(f"{path}: Conv {node!r}: shape inference gave no shape for its {what} {name!r}")
        out = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(dims)]
        if not all(isinstance(d, int) and d > 0 for d in out):
            raise InputError(f"{path}: Conv {node!r}: {what} {name!r} has a non-static shape {dims}")
        return tuple(int(d) for d in out)

    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"Conv_{index}"
        layers.append(
            ConvLayer(
                name=name,
                input_shape=concrete(node.input[0], name, "input"),
                weight_shape=concrete(node.input[1], name, "weight"),
                output_shape=concrete(node.output[0], name, "output"),
                has_bias=len(node.input) > 2 and bool(node.input[2]),
                attributes=tuple(node.attribute),
            )
        )
    if not layers:
        raise InputError(f"{path}: no top-level Conv nodes; cannot measure a convolution ceiling")
    return layers


def conv_only_model(layers: Sequence[ConvLayer], seed: int = SEED) -> Any:
    """An ONNX model running ``layers`` side by side: input ``x<i>``, random weights, output ``y<i>``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inputs, outputs, inits = [], [], [], []
    for i, layer in enumerate(layers):
        fan_in = int(np.prod(layer.weight_shape[1:]))
        weight = (rng.standard_normal(layer.weight_shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        names = [f"x{i}", f"w{i}"]
        if layer.has_bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(layer.weight_shape[0], dtype=np.float32), f"b{i}"))
            names.append(f"b{i}")
        node = helper.make_node("Conv", names, [f"y{i}"], name=layer.name)
        node.attribute.extend(layer.attributes)
        nodes.append(node)
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(layer.input_shape)))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, list(layer.output_shape)))
    graph = helper.make_graph(nodes, "conv_only", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vared2-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def engine_like(manifest: Manifest, path: Path, *, threads: int | None, shared_thread_pool: bool) -> OrtEngine:
    """An ONNX Runtime session on ``path`` opened as the engines' are: their optimisation level and session
    config, the bench's threads and pool."""
    return OrtEngine(
        path,
        threads=threads,
        graph_optimization=manifest.build_options.get("optimization", "all"),
        session_config=manifest.build_options.get("ort_session_config", {}),
        shared_thread_pool=shared_thread_pool,
    )


def measure_ceilings(
    engine_dir: Path | str,
    manifest: Manifest,
    *,
    batch: int = 1,
    threads: int | None = None,
    shared_thread_pool: bool = False,
    timing: TimingSettings = DEFAULT_TIMING,
    progress: Callable[[str], None] | None = None,
) -> list[ConvOnly]:
    """Time the convolution-only graph of every bucket (ONNX Runtime, the engines' session options) and fill in
    each one's FLOPs and latency fractions relative to bucket 0."""
    if manifest.backend != "onnxruntime":
        raise InputError(
            f"{engine_dir}: the ceiling is measured on ONNX Runtime engine directories (their .onnx graphs); "
            f"this one is {manifest.backend}"
        )
    engine_dir = Path(engine_dir)
    rng = np.random.default_rng(SEED)
    graphs: list[tuple[int, int, float, OrtEngine, dict[str, np.ndarray]]] = []
    with tempfile.TemporaryDirectory(prefix="vared2-ceiling-") as tmp:
        for entry in manifest.buckets:
            if progress is not None:
                progress(f"conv-only graph of bucket {entry.id} ({entry.name})")
            layers = conv_layers(engine_dir / entry.file, batch)
            path = Path(tmp) / f"conv_only_{entry.id}.onnx"
            path.write_bytes(conv_only_model(layers).SerializeToString())
            engine = engine_like(manifest, path, threads=threads, shared_thread_pool=shared_thread_pool)
            feeds = {
                f"x{i}": rng.standard_normal(layer.input_shape, dtype=np.float32) for i, layer in enumerate(layers)
            }
            gflops = sum(layer.macs for layer in layers) / batch / 1e9
            graphs.append((entry.id, len(layers), gflops, engine, feeds))
        if progress is not None:
            progress(f"timing the {len(graphs)} conv-only graphs interleaved")
        traces = measure_interleaved(
            [partial(engine.run, feeds) for *_, engine, feeds in graphs], batch=batch, **timing.kwargs()
        )
        results = [
            ConvOnly(bucket, layers, gflops, trace)
            for (bucket, layers, gflops, _, _), trace in zip(graphs, traces, strict=True)
        ]
        del graphs
    full = results[0]
    for r in results:
        r.flops_fraction = r.gflops / full.gflops
        r.latency_fraction = r.trace.latency.median / full.trace.latency.median
    return results
