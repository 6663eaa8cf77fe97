"""Build-time specialisation of a bucket graph for ONNX Runtime's CPU kernels (docs/performance.md).

The exported ``vared2::TemporalReconstruct`` / ``vared2::ChannelReconstruct`` nodes carry generic model-local
functions: a function body cannot see its caller's shapes or compute attributes, so ϕs runs as one depthwise
3-D ``Conv`` with ``group = out_channels`` over ``Gather(x, k mod C_c)`` (identity filters for the computed
channels), and the shape arithmetic of both bodies runs at every call (the batch axis is dynamic, so ONNX
Runtime cannot fold it). An ONNX Runtime engine file is read only by ONNX Runtime, so the builder rewrites each
custom node into a function of its own, in domain ``vared2.ort``, with every shape and weight fixed:

* ϕs (``ChannelReconstruct``) without ``Gather``: generated channel ``g`` reads computed channel ``g mod C_c``,
  so the ``G`` generated channels are blocks of ``C_c`` channels that each read ``x`` in order (the last block a
  prefix ``x[:, :G mod C_c]``). Each block is a depthwise convolution of ``x`` itself. It runs as a 2-D
  convolution over the free view ``[N, C_c·T, H, W]`` with ``group = C_c·T`` (each filter repeated over ``T``):
  ONNX Runtime's ``all`` level turns such 2-D depthwise convolutions into its NCHWc kernel, 2–3× faster than
  the 3-D im2col path, and every block shares one input reorder.
* The BatchNorm shift of the computed channels (the ``Add`` after ϕs, see ``vared2.export.fold``) is split: the
  computed channels' part becomes an ``Add`` over ``C_c`` channels instead of ``C_out``; the generated channels'
  part (zero) folds into the depthwise biases. A ``ReLU`` right after is pushed into the parts (fused into the
  depthwise convolutions), so nothing runs over all ``C_out`` channels except the one ``Concat``.
* ϕt (``TemporalReconstruct``): the same broadcast ``Mul`` + ``Add``, with its coefficients and output shape as
  constants.
* A per-channel ``Mul`` right before ϕt or ϕs — the exporter restoring a reduced bucket's own BatchNorm scale on
  the full bucket's shared weight (``vared2.export.fold``) — is absorbed: into ϕt's scale rows, or into ϕs's
  filters (per source channel) with the computed channels' ratio, shift and ``ReLU`` run as one depthwise 1×1
  convolution over the view the blocks already reorder.

Every graph, the gate's and the full bucket's included:

* A 3-D ``Conv`` whose kernel and stride are 1 in both spatial axes — the temporal half of every r(2+1)d block,
  the second conv of its stem — becomes ``Reshape → 2-D Conv → Reshape`` over the free view ``[N, C, T, H·W]``.
  Same sums, but on ONNX Runtime's 2-D kernels instead of its 3-D im2col path (r2plus1d_18 at 8×112×112:
  full bucket 232 → 204 ms, every bucket 8–16 % faster; docs/performance.md). The weight is reshaped by a
  ``Reshape`` of the shared initializer (folded at load), so the engines still share one ``weights.bin``. A
  ``ReLU`` right after moves before the reshape back to 5-D, where ONNX Runtime fuses it into the convolution.

Each rewrite is exact up to float summation order (parity is checked by the builder). Specialised functions keep
the partial convolutions at the top level and their own convolutions inside, so graph tools that look at
top-level ``Conv`` nodes (the bench's convolution-only ceiling) still see only the partial convolutions. Nodes
whose parameters are not constants are left as they are (their generic function still runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import FunctionProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from vared2.plugins import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT

#: Domain of the specialised functions (one per rewritten node); ONNX Runtime inlines them at load.
SPECIALIZED_DOMAIN = "vared2.ort"
SPECIALIZED_VERSION = 1
#: Initializers the rewrite adds are named ``<value>.ort.<part>``; they stay inside the engine file (small, per
#: bucket, never shared: ``is_specialized_initializer``).
SPECIALIZED_SUFFIX = ".ort"
OPSET = 17


@dataclass
class _Graph:
    """What the rewrite needs to know about the main graph."""

    shapes: dict[str, list[int | None]]
    constants: Callable[[str], np.ndarray | None]
    consumers: dict[str, list[NodeProto]]
    outputs: set[str]
    producers: dict[str, NodeProto]


@dataclass
class _Rewrite:
    """One specialised node: the call in the main graph, its function, its new initializers, what it absorbed."""

    node: NodeProto
    function: FunctionProto
    initializers: list[TensorProto] = field(default_factory=list)
    absorbed: list[NodeProto] = field(default_factory=list)


@dataclass
class _Rewrite2d:
    """A temporal convolution's 2-D replacement and the node (its ReLU) it absorbed."""

    nodes: list[NodeProto]
    absorbed: list[NodeProto]


def _analyse(model: ModelProto) -> _Graph:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    initializers = {t.name: t for t in model.graph.initializer}
    aliases: dict[str, str] = {}
    constant_nodes: dict[str, TensorProto] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.domain == "" and node.input[0] in initializers:
            aliases[node.output[0]] = node.input[0]
        if node.op_type == "Constant" and node.domain == "":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constant_nodes[node.output[0]] = value

    def constant(name: str) -> np.ndarray | None:
        name = aliases.get(name, name)
        tensor = initializers.get(name) or constant_nodes.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    consumers: dict[str, list[NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {name: node for node in model.graph.node for name in node.output}
    return _Graph(shapes, constant, consumers, {o.name for o in model.graph.output}, producers)


def _input_scale(graph: _Graph, name: str) -> tuple[str, np.ndarray, NodeProto] | None:
    """``(x, r, mul)`` when ``name`` is ``Mul(x, r)`` by a per-channel constant ``[1, C, 1, 1, 1]`` read by one node
    only: the exporter's restoring of a reduced bucket's own BatchNorm scale on the full bucket's shared weight
    (``vared2.export.fold``), which a reconstruction that follows can absorb into its own coefficients."""
    mul = graph.producers.get(name)
    if mul is None or mul.op_type != "Mul" or mul.domain != "" or len(mul.input) != 2:
        return None
    if len(graph.consumers.get(name, [])) != 1 or name in graph.outputs:
        return None
    first, second = mul.input
    for source, other in ((first, second), (second, first)):
        value = graph.constants(other)
        per_channel = value is not None and value.ndim == 5 and value.shape[0] == 1 and value.shape[2:] == (1, 1, 1)
        if per_channel and graph.constants(source) is None:
            assert value is not None
            return source, value.reshape(-1).astype(np.float64), mul
    return None


def _sole_consumer(graph: _Graph, name: str, op_type: str) -> NodeProto | None:
    """The only node reading ``name``, if it is a default-domain ``op_type`` and ``name`` is no graph output."""
    users = graph.consumers.get(name, [])
    if len(users) != 1 or name in graph.outputs or users[0].op_type != op_type or users[0].domain != "":
        return None
    return users[0]


def _int64(name: str, values: list[int]) -> NodeProto:
    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name=name)
    return helper.make_node("Constant", [], [name], value=tensor)


def _function(name: str, inputs: list[str], outputs: list[str], nodes: list[NodeProto], doc: str) -> FunctionProto:
    return helper.make_function(
        SPECIALIZED_DOMAIN,
        name,
        inputs=inputs,
        outputs=outputs,
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=doc,
    )


def _static_5d(graph: _Graph, name: str) -> tuple[int, int, int, int] | None:
    """``(C, T, H, W)`` of a ``[N, C, T, H, W]`` value whose axes other than the batch are static."""
    shape = graph.shapes.get(name)
    if shape is None or len(shape) != 5 or any(d is None or d < 1 for d in shape[1:]):
        return None
    c, t, h, w = (int(d) for d in shape[1:])  # type: ignore[arg-type]
    return c, t, h, w


def _temporal(node: NodeProto, index: int, graph: _Graph) -> _Rewrite | None:
    dims = _static_5d(graph, node.input[0])
    scale, shift = graph.constants(node.input[1]), graph.constants(node.input[2])
    if dims is None or scale is None or shift is None:
        return None
    source, absorbed = node.input[0], []
    restored = _input_scale(graph, node.input[0])
    if restored is not None:  # ϕt of r·x is ϕt of x with every scale row times r
        source, ratio, mul = restored
        scale, absorbed = scale * ratio[None, :], [mul]
    c, tc, h, w = dims
    factor = scale.shape[0]
    prefix = f"{node.output[0]}{SPECIALIZED_SUFFIX}"
    a = numpy_helper.from_array(scale.T.reshape(c, 1, factor, 1, 1).astype(np.float32), f"{prefix}.scale")
    b = numpy_helper.from_array(shift.T.reshape(c, 1, factor, 1, 1).astype(np.float32), f"{prefix}.shift")
    body = [
        _int64("axis", [3]),
        helper.make_node("Unsqueeze", ["x", "axis"], ["x6"]),  # [N, C, Tc, 1, H, W]
        helper.make_node("Mul", ["x6", "a"], ["ax"]),  # against [C, 1, R, 1, 1]: [N, C, Tc, R, H, W]
        helper.make_node("Add", ["ax", "b"], ["y6"]),
        _int64("shape", [-1, c, factor * tc, h, w]),
        helper.make_node("Reshape", ["y6", "shape"], ["y"]),
    ]
    # Shape inference may not see through the generic function; what follows (ϕs) needs this shape.
    graph.shapes[node.output[0]] = [None, c, factor * tc, h, w]
    name = f"{TEMPORAL_RECONSTRUCT}_{index}"
    function = _function(
        name, ["x", "a", "b"], ["y"], body, f"TemporalReconstruct factor {factor}, x [N,{c},{tc},{h},{w}]"
    )
    call = helper.make_node(name, [source, a.name, b.name], [node.output[0]], domain=SPECIALIZED_DOMAIN)
    call.name = node.name or name
    return _Rewrite(call, function, [a, b], absorbed)


def _channel(node: NodeProto, index: int, graph: _Graph) -> _Rewrite | None:
    dims = _static_5d(graph, node.input[0])
    weight, bias = graph.constants(node.input[1]), graph.constants(node.input[2])
    if dims is None or weight is None or bias is None:
        return None
    cc, t, h, w = dims
    generated = weight.shape[0]
    out_channels = cc + generated
    prefix = f"{node.output[0]}{SPECIALIZED_SUFFIX}"

    # The exporter's BatchNorm shift (an Add of a per-channel constant) and a ReLU right after it, if present.
    absorbed: list[NodeProto] = []
    shift = np.zeros(out_channels)
    output = node.output[0]
    relu = False
    add = _sole_consumer(graph, output, "Add")
    if add is not None:
        other = add.input[1] if add.input[0] == output else add.input[0]
        value = graph.constants(other)
        if (
            value is not None
            and value.size == out_channels
            and value.shape in {(1, out_channels, 1, 1, 1), (out_channels, 1, 1, 1)}
        ):
            shift = value.reshape(-1).astype(np.float64)
            absorbed.append(add)
            output = add.output[0]
            activation = _sole_consumer(graph, output, "Relu")
            if activation is not None:
                absorbed.append(activation)
                output = activation.output[0]
                relu = True

    restored = _input_scale(graph, node.input[0])
    ratio = np.ones(cc)
    if restored is not None:  # ϕs of r·x: each generated filter times its source's r; the computed channels below
        source_name, ratio, mul = restored
        absorbed.append(mul)
    inputs = ["x"]
    args = [node.input[0] if restored is None else source_name]
    initializers: list[TensorProto] = []

    def depthwise_to_5d(made: str, n: int, output: str) -> str:
        """A depthwise result over the ``[N, n·T, H, W]`` view, ReLU'd if the ReLU was absorbed, back to 5-D."""
        if relu:
            body.append(helper.make_node("Relu", [made], [f"{made}r"]))
            made = f"{made}r"
        shape = f"{output}.view5"
        body.extend([_int64(shape, [-1, n, t, h, w]), helper.make_node("Reshape", [made, shape], [output])])
        return output

    def parameter(name: str, array: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array.astype(np.float32)), f"{prefix}.{name}")
        initializers.append(tensor)
        inputs.append(name)
        args.append(tensor.name)
        return name

    body = [_int64("view4", [-1, cc * t, h, w]), helper.make_node("Reshape", ["x", "view4"], ["x4"])]
    parts = []
    dw_bias = bias.astype(np.float64) + shift[cc:]
    for block, start in enumerate(range(0, generated, cc)):
        n = min(cc, generated - start)
        source = "x4"
        if n < cc:  # the last block reads the first n computed channels: T·n planes of the view
            body += [
                _int64(f"start{block}", [0]),
                _int64(f"end{block}", [n * t]),
                _int64(f"axes{block}", [1]),
                helper.make_node("Slice", ["x4", f"start{block}", f"end{block}", f"axes{block}"], [f"src{block}"]),
            ]
            source = f"src{block}"
        filters = weight[start : start + n].reshape(n, 1, 3, 3) * ratio[:n].reshape(n, 1, 1, 1)
        filters = np.repeat(filters, t, axis=0)  # plane (c, t) → filter c
        f_name = parameter(f"w{block}", filters)
        b_name = parameter(f"b{block}", np.repeat(dw_bias[start : start + n], t))
        body.append(
            helper.make_node(
                "Conv", [source, f_name, b_name], [f"d{block}"], group=n * t, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            )
        )
        parts.append(depthwise_to_5d(f"d{block}", n, f"g{block}"))

    kept = "x"
    if restored is not None:
        # r·x + shift (and the ReLU) as one depthwise 1×1 convolution over the view the copies already reorder:
        # as many passes as the Add and ReLU it replaces, and the Mul before ϕs is gone.
        w_name = parameter("ratio", np.repeat(ratio, t).reshape(cc * t, 1, 1, 1))
        s_name = parameter("shift", np.repeat(shift[:cc], t))
        body.append(helper.make_node("Conv", ["x4", w_name, s_name], ["dk"], group=cc * t, kernel_shape=[1, 1]))
        kept = depthwise_to_5d("dk", cc, "xk")
    else:
        if np.any(shift[:cc] != 0):
            t_name = parameter("shift", shift[:cc].reshape(1, cc, 1, 1, 1))
            body.append(helper.make_node("Add", ["x", t_name], ["xs"]))
            kept = "xs"
        if relu:
            body.append(helper.make_node("Relu", [kept], ["xr"]))
            kept = "xr"
    body.append(helper.make_node("Concat", [kept, *parts], ["y"], axis=1))

    name = f"{CHANNEL_RECONSTRUCT}_{index}"
    doc = (
        f"ChannelReconstruct x [N,{cc},{t},{h},{w}] -> {out_channels} channels"
        + (", + BatchNorm shift" if absorbed else "")
        + (", ReLU" if relu else "")
    )
    function = _function(name, inputs, ["y"], body, doc)
    call = helper.make_node(name, args, [output], domain=SPECIALIZED_DOMAIN)
    call.name = node.name or name
    return _Rewrite(call, function, initializers, absorbed)


def _attribute(node: NodeProto, name: str, default: list[int]) -> list[int]:
    found = next((a for a in node.attribute if a.name == name), None)
    return list(found.ints) if found is not None else default


def _attribute_int(node: NodeProto, name: str, default: int | None = None) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), default)


def _temporal_conv_as_2d(node: NodeProto, index: int, graph: _Graph) -> _Rewrite2d | None:
    """A 3-D ``Conv`` whose kernel and stride are 1 in both spatial axes (the temporal halves of r(2+1)d, its
    stem's second conv) as a 2-D ``Conv`` over the free view ``[N, C, T, H·W]``: the same sums, on ONNX Runtime's
    2-D kernels instead of its 3-D im2col path (docs/performance.md). A ``ReLU`` right after moves before the
    reshape back to 5-D, where ONNX Runtime fuses it into the convolution. ``None`` if the node is anything
    else."""
    if node.op_type != "Conv" or node.domain != "" or len(node.input) < 2:
        return None
    dims = _static_5d(graph, node.input[0])
    weight = graph.constants(node.input[1])
    out_shape = graph.shapes.get(node.output[0])
    if dims is None or weight is None or weight.ndim != 5 or out_shape is None or len(out_shape) != 5:
        return None
    kernel = _attribute(node, "kernel_shape", list(weight.shape[2:]))
    strides = _attribute(node, "strides", [1, 1, 1])
    pads = _attribute(node, "pads", [0] * 6)
    spatial_one = kernel[1:] == [1, 1] and strides[1:] == [1, 1] and pads[1:3] + pads[4:] == [0, 0, 0, 0]
    group = _attribute_int(node, "group", 1)
    plain = _attribute(node, "dilations", [1, 1, 1]) == [1, 1, 1] and group == 1
    if not (spatial_one and plain) or any(a.name == "auto_pad" for a in node.attribute):
        return None
    c, _, h, w = dims
    c_out, t_out = int(weight.shape[0]), out_shape[2]
    if t_out is None:
        return None
    prefix = f"{node.output[0]}{SPECIALIZED_SUFFIX}2d"
    x4, w4, y4 = f"{prefix}.x", f"{prefix}.w", f"{prefix}.y"
    relu = _sole_consumer(graph, node.output[0], "Relu")
    output = relu.output[0] if relu is not None else node.output[0]
    activated = [helper.make_node("Relu", [y4], [f"{prefix}.r"])] if relu is not None else []
    conv = helper.make_node(
        "Conv",
        [x4, w4, *node.input[2:]],
        [y4],
        name=node.name or f"temporal_conv_2d_{index}",
        kernel_shape=[kernel[0], 1],
        strides=[strides[0], 1],
        pads=[pads[0], 0, pads[3], 0],
    )
    nodes = [
        _int64(f"{prefix}.xshape", [0, c, dims[1], h * w]),
        helper.make_node("Reshape", [node.input[0], f"{prefix}.xshape"], [x4]),
        _int64(f"{prefix}.wshape", [c_out, c, kernel[0], 1]),  # folded by ONNX Runtime at load (a constant)
        helper.make_node("Reshape", [node.input[1], f"{prefix}.wshape"], [w4]),
        conv,
        *activated,
        _int64(f"{prefix}.yshape", [0, c_out, int(t_out), h, w]),
        helper.make_node("Reshape", [activated[-1].output[0] if activated else y4, f"{prefix}.yshape"], [output]),
    ]
    return _Rewrite2d(nodes, [relu] if relu is not None else [])


def temporal_convs_as_2d(model: ModelProto) -> int:
    """Rewrite, in place, every top-level ``Conv`` that ``_temporal_conv_as_2d`` accepts; returns how many."""
    graph = _analyse(model)
    rewrites: list[_Rewrite2d | None] = []
    for node in model.graph.node:
        rewrites.append(_temporal_conv_as_2d(node, sum(r is not None for r in rewrites), graph))
    absorbed = {o for r in rewrites if r is not None for a in r.absorbed for o in a.output}
    nodes = [
        new
        for node, rewrite in zip(model.graph.node, rewrites, strict=True)
        if not (rewrite is None and any(o in absorbed for o in node.output))
        for new in (rewrite.nodes if rewrite is not None else [node])
    ]
    count = sum(r is not None for r in rewrites)
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.value_info[:]
        onnx.checker.check_model(model)
    return count


def is_specialized_initializer(name: str) -> bool:
    """Whether an initializer was added by ``specialize`` (the weights packer keeps those inside the engine file)."""
    return name.rpartition(".")[0].endswith(SPECIALIZED_SUFFIX)


def _prune(model: ModelProto) -> None:
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


def _replace_nodes(model: ModelProto, nodes: list[NodeProto], initializers: list[TensorProto]) -> None:
    """Make ``nodes`` (in topological order) the graph's nodes, add ``initializers``, drop what nothing reads any
    more, forget stale inferred shapes, and check the result."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    _prune(model)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)


def specialize(model: ModelProto, *, temporal_2d: bool = True) -> ModelProto:
    """A copy of ``model`` with every ``vared2`` node replaced by a shape- and weight-specialised function and,
    with ``temporal_2d``, every temporal-only convolution run as a 2-D one (see the module docstring). A model
    with neither comes back unchanged (as a copy)."""
    if not isinstance(model, ModelProto):
        raise TypeError(f"specialize: expected an onnx.ModelProto, got {type(model).__name__}")
    result = ModelProto()
    result.CopyFrom(model)
    _specialize_custom_nodes(result)
    if temporal_2d:
        temporal_convs_as_2d(result)
    return result


def _specialize_custom_nodes(result: ModelProto) -> None:
    if not any(node.domain == DOMAIN for node in result.graph.node):
        return
    graph = _analyse(result)
    rewrites: dict[int, _Rewrite] = {}
    for position, node in enumerate(result.graph.node):
        if node.domain != DOMAIN:
            continue
        make = (
            _temporal
            if node.op_type == TEMPORAL_RECONSTRUCT
            else _channel
            if node.op_type == CHANNEL_RECONSTRUCT
            else None
        )
        rewrite = make(node, len(rewrites), graph) if make is not None else None
        if rewrite is not None:
            rewrites[position] = rewrite
    if not rewrites:
        return
    absorbed_outputs = {o for r in rewrites.values() for n in r.absorbed for o in n.output}
    nodes = []
    for position, node in enumerate(result.graph.node):
        if position in rewrites:
            nodes.append(rewrites[position].node)
        elif not any(o in absorbed_outputs for o in node.output):
            nodes.append(node)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(t for r in rewrites.values() for t in r.initializers)
    result.functions.extend(r.function for r in rewrites.values())
    if not any(node.domain == DOMAIN for node in result.graph.node):
        kept_functions = [f for f in result.functions if f.domain != DOMAIN]
        del result.functions[:]
        result.functions.extend(kept_functions)
        kept_opsets = [o for o in result.opset_import if o.domain != DOMAIN]
        del result.opset_import[:]
        result.opset_import.extend(kept_opsets)
    if not any(o.domain == SPECIALIZED_DOMAIN for o in result.opset_import):
        result.opset_import.append(helper.make_opsetid(SPECIALIZED_DOMAIN, SPECIALIZED_VERSION))
    del result.graph.value_info[:]  # stale for the absorbed values; ONNX Runtime infers shapes itself
    _prune(result)
    onnx.checker.check_model(result)
