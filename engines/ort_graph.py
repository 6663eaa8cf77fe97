"""The graph helpers every ONNX Runtime build-time pass shares (``vared2.engines.ort_passes``).

The graph API is onnx-ir with onnxscript's rewriter (docs/design.md): ``to_ir`` / ``from_ir`` bracket every
pass, ``ir_constant`` reads a constant input, ``IrNodes`` builds new nodes and ``ir_replace`` puts them in place of
old ones. ``from_ir`` ends every pass the same way (``splice``): the pruning of what nothing reads any more, the
recorded shapes the pass vouches for, ``onnx.checker``. Initializers a pass adds are ``<value>.ort.<part>``: kept
inside the engine file; the functions it adds are in ``SPECIALIZED_DOMAIN``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir
from onnx import FunctionProto, ModelProto, NodeProto, helper, numpy_helper
from onnx_ir.passes.common import ShapeInferencePass

#: Domain of the specialised functions the passes add; ONNX Runtime inlines them at load.
SPECIALIZED_DOMAIN = "vared2.ort"
SPECIALIZED_VERSION = 1
#: Initializers a pass adds are named ``<value>.ort.<part>``: small, per engine, never shared.
SPECIALIZED_SUFFIX = ".ort"
#: The default-domain opset the exporter writes and the passes' functions import.
OPSET = 17


def copy_model(model: ModelProto) -> ModelProto:
    """A deep copy: every pass returns a new model and leaves its input as it was."""
    if not isinstance(model, ModelProto):
        raise TypeError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    result = ModelProto()
    result.CopyFrom(model)
    return result


def int64_constant(name: str, values: list[int]) -> NodeProto:
    """A ``Constant`` node writing the int64 vector ``values`` to ``name`` (shapes, axes, slice bounds)."""
    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name=name)
    return helper.make_node("Constant", [], [name], value=tensor)


def make_function(name: str, inputs: list[str], outputs: list[str], nodes: list[NodeProto], doc: str) -> FunctionProto:
    """A model-local function in ``SPECIALIZED_DOMAIN`` (register it with ``use_specialized_domain``)."""
    return helper.make_function(
        SPECIALIZED_DOMAIN,
        name,
        inputs=inputs,
        outputs=outputs,
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=doc,
    )


def is_specialized_initializer(name: str) -> bool:
    """Whether an initializer was added by a pass (the weights packer keeps those inside the engine file)."""
    return name.rpartition(".")[0].endswith(SPECIALIZED_SUFFIX)


def prune(model: ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (e.g. Identity aliases of replaced parameters), then unused
    initializers."""
    while True:
        used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def splice(model: ModelProto, *, keep_shapes: Iterable[str] | None = None) -> None:
    """The ending every pass shares (``from_ir``): prune what nothing reads any more, keep the recorded shapes of
    ``keep_shapes`` only (all others are forgotten: the next pass infers them again), and check the result."""
    kept = set(keep_shapes or ())
    info = [v for v in model.graph.value_info if v.name in kept]
    prune(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(info)
    onnx.checker.check_model(model)


def to_ir(model: ModelProto) -> ir.Model:
    """An onnx-ir copy of ``model`` (the input is left as it was) with its main graph's shapes inferred the way
    ``onnx.shape_inference`` infers them (on top of the recorded ``value_info``)."""
    result = ir.serde.deserialize_model(copy_model(model))
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)(result)
    return result


def from_ir(model: ir.Model, *, keep_shapes: Iterable[str] | None = None) -> ModelProto:
    """``model`` back as a protobuf, through the ending every pass shares (``splice``): pruned, checked, and no
    recorded shapes but ``keep_shapes`` (the shapes ``to_ir`` inferred change how ONNX Runtime fuses)."""
    result = ir.serde.serialize_model(model)
    splice(result, keep_shapes=keep_shapes)
    return result


def ir_constant(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind ``value`` (an initializer, a ``Constant`` node, or an ``Identity`` of either), else
    ``None``: what ``Graph.constants`` answers for the protobuf passes."""
    while value is not None and value.const_value is None:
        producer = value.producer()
        if producer is None or producer.domain != "" or producer.op_type not in ("Identity", "Constant"):
            return None
        if producer.op_type == "Constant":
            tensor = ir.convenience.get_const_tensor(value)
            return None if tensor is None else tensor.numpy()
        value = producer.inputs[0]
    return None if value is None or value.const_value is None else value.const_value.numpy()


def ir_static_5d(value: ir.Value) -> tuple[int, int, int, int] | None:
    """``(C, T, H, W)`` of a ``[N, C, T, H, W]`` value whose axes other than the batch are static."""
    shape = value.shape
    dims = [d for d in shape[1:] if isinstance(d, int) and d >= 1] if shape is not None and len(shape) == 5 else []
    if len(dims) != 4:
        return None
    c, t, h, w = dims
    return c, t, h, w


def ir_sole_consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    """The only node reading ``value`` (once), if it is a default-domain ``op_type`` and ``value`` is no graph
    output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output() or uses[0].node.op_type != op_type or uses[0].node.domain != "":
        return None
    return uses[0].node


def ir_input_scale(value: ir.Value) -> tuple[ir.Value, np.ndarray, ir.Node] | None:
    """``(x, r, mul)`` when ``value`` is ``Mul(x, r)`` by a per-channel constant ``[1, C, 1, 1, 1]`` read by one
    node only: the exporter restoring a reduced bucket's own BatchNorm scale on the full bucket's shared weight
    (``vared2.export.fold``), which a reconstruction that follows can absorb into its own coefficients."""
    mul = value.producer()
    if mul is None or mul.op_type != "Mul" or mul.domain != "" or len(mul.inputs) != 2:
        return None
    if len(list(value.uses())) != 1 or value.is_graph_output():
        return None
    first, second = mul.inputs
    for source, other in ((first, second), (second, first)):
        scale = ir_constant(other)
        per_channel = scale is not None and scale.ndim == 5 and scale.shape[0] == 1 and scale.shape[2:] == (1, 1, 1)
        if per_channel and source is not None and ir_constant(source) is None:
            assert scale is not None
            return source, scale.reshape(-1).astype(np.float64), mul
    return None


def ir_add_function(model: ir.Model, function: FunctionProto) -> None:
    """Add ``function`` (``make_function``) to ``model`` and import ``SPECIALIZED_DOMAIN`` in it (once)."""
    converted = ir.serde.deserialize_function(function)
    model.functions[converted.identifier()] = converted
    model.opset_imports.setdefault(SPECIALIZED_DOMAIN, SPECIALIZED_VERSION)


def ir_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer ``name`` holding ``array``, registered in ``graph``."""
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


class IrNodes:
    """New default-domain nodes, in order, each writing one new value of a given name (``op``, ``ints``)."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []

    def op(
        self, op_type: str, inputs: list[ir.Value | None], output: str, name: str | None = None, **attrs: object
    ) -> ir.Value:
        """Append ``op_type(inputs)`` with attributes ``attrs`` writing ``output``; its value."""
        return self.multi(op_type, inputs, [output], name, **attrs)[0]

    def multi(
        self, op_type: str, inputs: list[ir.Value | None], outputs: list[str], name: str | None = None, **attrs: object
    ) -> list[ir.Value]:
        """Append ``op_type(inputs)`` with attributes ``attrs`` writing ``outputs``; their values."""
        values = [ir.Value(name=output) for output in outputs]
        attributes = [ir.convenience.convert_attribute(key, attr) for key, attr in attrs.items()]  # type: ignore[arg-type]
        self.nodes.append(ir.Node("", op_type, inputs, attributes, outputs=values, name=name))
        return values

    def ints(self, name: str, values: list[int]) -> ir.Value:
        """Append a ``Constant`` int64 vector ``values`` named ``name`` (``int64_constant``); its value."""
        return self.op("Constant", [], name, value=ir.tensor(np.asarray(values, dtype=np.int64), name=name))


def ir_replace(graph: ir.Graph, old: list[ir.Node], new: list[ir.Node], anchor: ir.Node, result: ir.Value) -> None:
    """Insert ``new`` before ``anchor``, let everything that read ``old[-1]``'s first output read ``result`` (which
    takes its name and, as a graph output, its type and shape), and remove ``old`` (none of whose outputs anything
    else may read)."""
    output = old[-1].outputs[0]
    if output.is_graph_output():  # the graph's declared output keeps its type and shape
        result.type, result.shape = output.type, output.shape
    graph.insert_before(anchor, new)
    output.replace_all_uses_with(result, replace_graph_outputs=True)
    name = output.name
    graph.remove(old, safe=True)
    result.name = name
