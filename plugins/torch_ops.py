"""The two ops as ``torch.library`` custom ops, and their TorchScript-exporter symbolics (DESIGN.md §3, §4).

``torch.ops.vared2.temporal_reconstruct`` and ``torch.ops.vared2.channel_reconstruct`` run the reference
(``plugins/reference.py``), with fake (meta) kernels for shapes and an autograd formula, so a model may call
them in training and in export alike. ``register_onnx_symbolics()`` teaches ``torch.onnx.export(...,
dynamo=False)`` to emit ``vared2::TemporalReconstruct`` / ``vared2::ChannelReconstruct`` nodes with their
attribute plus ``plugin_namespace``/``plugin_version``; the exporter then calls
``onnx_functions.attach_functions`` to append the bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import CHANNEL_RECONSTRUCT, DOMAIN, TEMPORAL_RECONSTRUCT, VERSION, reference

TEMPORAL_OP = f"{DOMAIN}::temporal_reconstruct"
CHANNEL_OP = f"{DOMAIN}::channel_reconstruct"


@torch.library.custom_op(TEMPORAL_OP, mutates_args=())
def temporal_reconstruct(x: Tensor, scale: Tensor, shift: Tensor, factor: int) -> Tensor:
    """ϕt (see ``reference.temporal_reconstruct``)."""
    return reference.temporal_reconstruct(x, scale, shift, factor)


@temporal_reconstruct.register_fake
def _temporal_reconstruct_fake(x: Tensor, scale: Tensor, shift: Tensor, factor: int) -> Tensor:
    if x.dim() != 5:
        raise ValueError(f"temporal_reconstruct: x must be 5-D [N, C, Tc, H, W], got shape {list(x.shape)}")
    n, c, tc, h, w = x.shape
    return x.new_empty((n, c, tc * factor, h, w))


@torch.library.custom_op(CHANNEL_OP, mutates_args=())
def channel_reconstruct(x: Tensor, weight: Tensor, bias: Tensor, out_channels: int) -> Tensor:
    """ϕs (see ``reference.channel_reconstruct``)."""
    return reference.channel_reconstruct(x, weight, bias, out_channels)


@channel_reconstruct.register_fake
def _channel_reconstruct_fake(x: Tensor, weight: Tensor, bias: Tensor, out_channels: int) -> Tensor:
    if x.dim() != 5:
        raise ValueError(f"channel_reconstruct: x must be 5-D [N, C_c, T, H, W], got shape {list(x.shape)}")
    n, _, t, h, w = x.shape
    return x.new_empty((n, out_channels, t, h, w))


def _backward_through(function: Callable[..., Tensor]) -> Callable[[Any, Tensor], tuple[Tensor | None, ...]]:
    """Gradients of the three tensor inputs by differentiating the reference itself (the ops are cheap)."""

    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inputs = [t.detach().requires_grad_(needs) for t, needs in zip(ctx.saved_tensors, ctx.needs, strict=True)]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            out = function(*inputs, ctx.attribute)
        grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        return (*(next(grads) if t.requires_grad else None for t in inputs), None)

    return backward


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    *tensors, attribute = inputs
    ctx.save_for_backward(*tensors)
    ctx.needs = [bool(t.requires_grad) for t in tensors]
    ctx.attribute = attribute


torch.library.register_autograd(
    TEMPORAL_OP, _backward_through(reference.temporal_reconstruct), setup_context=_setup_context
)
torch.library.register_autograd(
    CHANNEL_OP, _backward_through(reference.channel_reconstruct), setup_context=_setup_context
)

_registered_opsets: set[int] = set()


def _output_like(g: Any, node: Any, x: Any, axis: int, size: int | None) -> Any:
    """Give the custom node's output the input's type with one axis resized (other axes as known)."""
    from torch.onnx import symbolic_helper

    sizes = symbolic_helper._get_tensor_sizes(x)
    if sizes is not None:
        sizes = list(sizes)
        sizes[axis] = size if size is not None and sizes[axis] is not None else None
        node.setType(x.type().with_sizes(sizes))
    return node


def register_onnx_symbolics(opset: int = 17) -> None:
    """Register the TorchScript-exporter symbolics for both ops (idempotent per opset)."""
    if opset in _registered_opsets:
        return
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    plugin = {"plugin_namespace_s": DOMAIN, "plugin_version_s": str(VERSION)}

    @symbolic_helper.parse_args("v", "v", "v", "i")
    def temporal_symbolic(g: Any, x: Any, scale: Any, shift: Any, factor: int) -> Any:
        node = g.op(f"{DOMAIN}::{TEMPORAL_RECONSTRUCT}", x, scale, shift, factor_i=factor, **plugin)
        sizes = symbolic_helper._get_tensor_sizes(x)
        tc = sizes[2] if sizes is not None and len(sizes) == 5 else None
        return _output_like(g, node, x, 2, tc * factor if tc is not None else None)

    @symbolic_helper.parse_args("v", "v", "v", "i")
    def channel_symbolic(g: Any, x: Any, weight: Any, bias: Any, out_channels: int) -> Any:
        node = g.op(f"{DOMAIN}::{CHANNEL_RECONSTRUCT}", x, weight, bias, out_channels_i=out_channels, **plugin)
        return _output_like(g, node, x, 1, out_channels)

    register_custom_op_symbolic(TEMPORAL_OP, temporal_symbolic, opset)
    register_custom_op_symbolic(CHANNEL_OP, channel_symbolic, opset)
    _registered_opsets.add(opset)
