"""DynamicConv3d against the §2 formulas written out as plain loops, and its construction/forward errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vared2.models import DynamicConv3d, computed_channels, r2plus1d_18


def loop_partial_conv(x: Tensor, conv: nn.Conv3d, padding: tuple[int, int, int], factor: int, computed: int) -> Tensor:
    """§2 step 2 by definition: output channel c < C_c at computed frame k is the full conv at frame R*k."""
    kt, kh, kw = conv.kernel_size
    st, sh, sw = conv.stride
    pt, ph, pw = padding
    padded = F.pad(x, (pw, pw, ph, ph, pt, pt))
    n, _, t, h, w = x.shape
    t_out = (t + 2 * pt - kt) // st + 1
    h_out = (h + 2 * ph - kh) // sh + 1
    w_out = (w + 2 * pw - kw) // sw + 1
    out = torch.zeros(n, computed, t_out // factor, h_out, w_out, dtype=torch.float64)
    weight = conv.weight.double()
    for c in range(computed):
        for k in range(t_out // factor):
            t0 = st * factor * k
            for i in range(h_out):
                for j in range(w_out):
                    window = padded[:, :, t0 : t0 + kt, sh * i : sh * i + kh, sw * j : sw * j + kw].double()
                    value = (window * weight[c]).sum(dim=(1, 2, 3, 4))
                    out[:, c, k, i, j] = value + (conv.bias[c].double() if conv.bias is not None else 0.0)
    return out


def loop_temporal(p: Tensor, scale: Tensor, shift: Tensor, factor: int) -> Tensor:
    """§2 step 3: Y[:, c, R*k + j] = a[j, c] * P[:, c, k] + b[j, c]."""
    n, c, tc, h, w = p.shape
    y = torch.zeros(n, c, tc * factor, h, w, dtype=torch.float64)
    for ch in range(c):
        for k in range(tc):
            for j in range(factor):
                y[:, ch, factor * k + j] = scale[j, ch].double() * p[:, ch, k] + shift[j, ch].double()
    return y


def loop_channel(y: Tensor, weight: Tensor, bias: Tensor, out_channels: int) -> Tensor:
    """§2 step 4: generated channel g is a depthwise (1, 3, 3) conv (padding 1) of channel g mod C_c."""
    n, cc, t, h, w = y.shape
    padded = F.pad(y, (1, 1, 1, 1))
    made = torch.zeros(n, out_channels - cc, t, h, w, dtype=torch.float64)
    for g in range(out_channels - cc):
        source = g % cc
        for i in range(h):
            for j in range(w):
                window = padded[:, source, :, i : i + 3, j : j + 3]
                made[:, g, :, i, j] = (window * weight[g, 0, 0].double()).sum(dim=(2, 3)) + bias[g].double()
    return torch.cat([y, made], dim=1)


def randomize_cheap_ops(layer: DynamicConv3d) -> None:
    with torch.no_grad():
        for params in (layer.temporal_scale, layer.temporal_shift, layer.channel_weight, layer.channel_bias):
            for p in params.values():
                p.normal_()


@pytest.mark.parametrize(
    ("c_out", "pc", "expected"),
    [(64, 0, 64), (64, 1, 32), (64, 2, 16), (921, 1, 464), (144, 2, 40), (230, 1, 120), (12, 1, 8), (8, 2, 8)],
)
def test_computed_channels(c_out: int, pc: int, expected: int) -> None:
    assert computed_channels(c_out, pc) == expected


def test_full_policy_is_the_wrapped_conv_bit_for_bit() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 20, (3, 3, 3), stride=(2, 1, 2), padding=(1, 1, 1), bias=True)
    layer = DynamicConv3d(conv, t_levels=(1,), c_levels=(1, 2), frames_out=4, name="demo")
    x = torch.randn(2, 6, 8, 9, 10)
    assert torch.equal(layer(x), conv(x))
    assert torch.equal(layer.forward_policy(x, (0, 0)), conv(x))
    # Same state-dict names as the wrapped conv, plus plain per-level cheap-op keys.
    keys = set(layer.state_dict())
    assert {"weight", "bias"} <= keys
    assert keys - {"weight", "bias"} == {
        "temporal_scale.1",
        "temporal_shift.1",
        "channel_weight.1",
        "channel_bias.1",
        "channel_weight.2",
        "channel_bias.2",
    }
    assert layer.temporal_scale["1"].shape == (1, 20)  # rows 1..R-1 only
    assert layer.channel_weight["2"].shape == (20 - 8, 1, 1, 3, 3)


@pytest.mark.parametrize(
    ("c_out", "kernel", "stride", "padding", "policy"),
    [
        (23, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1)),  # non-power-of-two channels, both ops
        (23, (3, 3, 3), (2, 2, 2), (1, 1, 1), (2, 0)),  # R=4 with temporal stride: ϕt only
        (30, (1, 3, 3), (1, 2, 2), (0, 1, 1), (0, 2)),  # spatial half of a (2+1)D conv: ϕs only
        (13, (3, 1, 1), (2, 1, 1), (1, 0, 0), (1, 1)),  # temporal half with stride
    ],
)
def test_cheap_ops_match_the_formulas(
    c_out: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    policy: tuple[int, int],
) -> None:
    torch.manual_seed(1)
    t_in = 16
    conv = nn.Conv3d(5, c_out, kernel, stride=stride, padding=padding, bias=True)
    frames_out = (t_in + 2 * padding[0] - kernel[0]) // stride[0] + 1
    pt, pc = policy
    layer = DynamicConv3d(conv, t_levels=(pt,), c_levels=(pc,), frames_out=frames_out, name="x")
    randomize_cheap_ops(layer)
    x = torch.randn(2, 5, t_in, 5, 6)
    factor, computed = 2**pt, computed_channels(c_out, pc)
    expected = loop_partial_conv(x, conv, padding, factor, computed)
    if factor > 1:
        scale, shift = layer.temporal_params(pt, pc)
        assert scale.shape == shift.shape == (factor, computed)
        assert torch.equal(scale[0], torch.ones(computed)) and torch.equal(shift[0], torch.zeros(computed))
        expected = loop_temporal(expected, scale.detach(), shift.detach(), factor)
    if computed < c_out:
        weight, bias = layer.channel_params(pc)
        expected = loop_channel(expected, weight.detach(), bias.detach(), c_out)
    layer.policy = policy
    got = layer(x)
    assert got.shape == expected.shape == (2, c_out, frames_out, *conv(x).shape[3:])
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_initial_cheap_ops_copy_computed_frames_and_channels() -> None:
    torch.manual_seed(2)
    conv = nn.Conv3d(4, 20, (3, 3, 3), padding=1, bias=False)
    layer = DynamicConv3d(conv, t_levels=(1,), c_levels=(1,), frames_out=6, name="x")
    x = torch.randn(1, 4, 6, 5, 5)
    y = layer.forward_policy(x, (1, 1))
    computed = computed_channels(20, 1)
    full = conv(x)
    torch.testing.assert_close(y[:, :computed, 0::2], full[:, :computed, 0::2])
    torch.testing.assert_close(y[:, :computed, 1::2], y[:, :computed, 0::2])  # rebuilt frame = computed frame
    sources = torch.tensor(layer.source_channels(1))
    torch.testing.assert_close(y[:, computed:], y[:, sources])  # generated channel = its source channel
    # The same pair given as one policy tuple (the exporter's form).
    pair, two = layer.temporal_params((1, 1)), layer.temporal_params(1, 1)
    assert torch.equal(pair[0], two[0]) and torch.equal(pair[1], two[1])


def test_cheap_op_parameters_receive_gradients() -> None:
    conv = nn.Conv3d(4, 16, (3, 3, 3), padding=1, bias=False)
    layer = DynamicConv3d(conv, t_levels=(1,), c_levels=(1,), frames_out=4, name="x")
    layer.forward_policy(torch.randn(1, 4, 4, 5, 5), (1, 1)).square().sum().backward()
    for p in (layer.weight, layer.temporal_scale["1"], layer.temporal_shift["1"], layer.channel_weight["1"]):
        assert p.grad is not None and bool(p.grad.abs().sum() > 0)


def test_construction_errors_name_the_layer() -> None:
    conv = nn.Conv3d(4, 16, (3, 3, 3), padding=1, bias=False)
    with pytest.raises(ValueError, match=r"layer3\.0\.conv1\.0.*t1 \(R=2\).*3 output frames"):
        DynamicConv3d(conv, t_levels=(1,), frames_out=3, name="layer3.0.conv1.0")
    with pytest.raises(ValueError, match=r"my\.conv.*channel levels"):
        DynamicConv3d(conv, c_levels=(-1,), frames_out=4, name="my.conv")
    grouped = nn.Conv3d(4, 16, 3, padding=1, groups=2)
    with pytest.raises(ValueError, match=r"grouped\.conv"):
        DynamicConv3d(grouped, frames_out=4, name="grouped.conv")
    # In a model: R=2 where layer4 has a single output frame (8 input frames).
    bad = ["t0c0/t0c0/t0c0/t0c0", "t0c0/t0c0/t0c0/t1c0"]
    with pytest.raises(ValueError, match=r"layer4\.0\.conv1\.0\.3: temporal level t1"):
        r2plus1d_18(frames=8, size=32, width=0.125, num_classes=5, buckets=bad)


def test_forward_errors_name_the_layer_and_its_levels() -> None:
    conv = nn.Conv3d(4, 16, (3, 3, 3), padding=1, bias=False)
    layer = DynamicConv3d(conv, t_levels=(1,), c_levels=(1,), frames_out=4, name="layer2.1.conv2.0")
    x = torch.randn(1, 4, 4, 5, 5)
    with pytest.raises(ValueError, match=r"layer2\.1\.conv2\.0: policy t0c2 .*\[0, 1\].*\[0, 1\]"):
        layer.forward_policy(x, (0, 2))
    layer.policy = (2, 0)
    with pytest.raises(ValueError, match=r"layer2\.1\.conv2\.0: policy t2c0"):
        layer(x)
    with pytest.raises(ValueError, match=r"layer2\.1\.conv2\.0: input with 5 frames"):
        layer.forward_policy(torch.randn(1, 4, 5, 5, 5), (1, 0))


@pytest.mark.parametrize("policy", [(0, 0), (0, 1)])
def test_bf16_autocast_gives_the_temporal_weight_gradient_of_fp32(policy: tuple[int, int]) -> None:
    """A 2-frame input into a ``3×1×1`` conv, as every r2plus1d layer3 temporal conv at 8 frames sees: oneDNN's
    bfloat16 weight gradient of the 3-D form is garbage there (torch 2.14.1); ``conv3d`` runs it as 2-D."""
    torch.manual_seed(0)
    conv = nn.Conv3d(144, 64, (3, 1, 1), padding=(1, 0, 0), bias=False)
    layer = DynamicConv3d(conv, t_levels=(), c_levels=(1,), frames_out=2, name="layer3.temporal")
    x = torch.randn(16, 144, 2, 7, 7).relu().bfloat16().float()  # exactly representable in bf16

    def weight_grad(bf16: bool) -> Tensor:
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer.forward_policy(x, policy)
        y.float().square().sum().backward()
        assert layer.weight.grad is not None
        return layer.weight.grad.clone()

    reference, autocast = weight_grad(False), weight_grad(True)
    assert torch.isfinite(autocast).all()
    torch.testing.assert_close(autocast, reference, rtol=0.05, atol=0.02 * float(reference.abs().max()))
    assert torch.equal(layer.forward_policy(x, (0, 0)), conv(x))  # fp32 keeps the 3-D call
