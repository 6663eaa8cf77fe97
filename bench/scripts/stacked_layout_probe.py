"""Probe for a possible engine layout (docs/performance.md, "Frames stacked along the rows for the whole network").

Writes two ONNX graphs of the same chain of r(2+1)d units (layer1 of full-width r2plus1d_18: 64 → 144 → 64
channels, 8 × 56 × 56, random weights, no residuals) and checks that they compute the same numbers:

* ``chain_current.onnx`` — as the engine builder writes a full bucket today: the spatial ``1×3×3`` half as a 3-D
  ``Conv`` (plain layout, ONNX Runtime's im2col path), the temporal ``3×1×1`` half as a 2-D ``Conv`` over the view
  ``[N, C, T, H·W]`` (blocked NCHWc kernels, with a reorder in and out around it).
* ``chain_stacked.onnx`` — every frame followed by one zero row and the frames stacked along the rows,
  ``[N, C, T·(H+1), W]``: the spatial half is a 2-D ``3×3`` convolution (the zero rows are its padding between
  frames), the temporal half a ``3×1`` convolution dilated by ``H+1`` (frame ``t±1``'s row lies ``H+1`` rows away),
  both on the same blocked tensor; a ``Mul`` by a row mask zeroes the separator rows the spatial convolution wrote,
  before the next unit reads them.

Time them with ``bench/scripts/perf_ab.py OUT/chain_current.onnx@all OUT/chain_stacked.onnx@all --threads 2``.

    .venv/bin/python bench/scripts/stacked_layout_probe.py --out /tmp/stacked [--units 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CHANNELS, MIDDLE, FRAMES, HEIGHT, WIDTH = 64, 144, 8, 56, 56
PERIOD = HEIGHT + 1  # rows per stacked frame: the frame and one zero row


def unit_weights(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Spatial (M, C, 1, 3, 3) and temporal (C, M, 3, 1, 1) filters with biases."""
    return (
        (rng.standard_normal((MIDDLE, CHANNELS, 1, 3, 3)) * 0.05).astype(np.float32),
        (rng.standard_normal(MIDDLE) * 0.1).astype(np.float32),
        (rng.standard_normal((CHANNELS, MIDDLE, 3, 1, 1)) * 0.05).astype(np.float32),
        (rng.standard_normal(CHANNELS) * 0.1).astype(np.float32),
    )


def chain(weights: list[tuple[np.ndarray, ...]], stacked: bool) -> onnx.ModelProto:
    """The chain of units in the current layout or in the stacked one (see the module docstring)."""
    mask = np.ones((1, 1, FRAMES * PERIOD, 1), np.float32)
    mask[:, :, HEIGHT::PERIOD] = 0
    initializers = [
        numpy_helper.from_array(np.array([1, MIDDLE, FRAMES, HEIGHT * WIDTH], np.int64), "view_4d"),
        numpy_helper.from_array(np.array([1, CHANNELS, FRAMES, HEIGHT, WIDTH], np.int64), "view_5d"),
        numpy_helper.from_array(mask, "separator_mask"),
    ]
    nodes = []
    x = "x"
    for u, (w1, b1, w2, b2) in enumerate(weights):
        spatial = w1.reshape(MIDDLE, CHANNELS, 3, 3) if stacked else w1
        initializers += [
            numpy_helper.from_array(spatial, f"w1_{u}"),
            numpy_helper.from_array(b1, f"b1_{u}"),
            numpy_helper.from_array(w2.reshape(CHANNELS, MIDDLE, 3, 1), f"w2_{u}"),
            numpy_helper.from_array(b2, f"b2_{u}"),
        ]
        out = "y" if u == len(weights) - 1 else f"y{u}"
        if stacked:
            nodes += [
                helper.make_node("Conv", [x, f"w1_{u}", f"b1_{u}"], [f"s{u}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", [f"s{u}"], [f"sr{u}"]),
                helper.make_node(
                    "Conv",
                    [f"sr{u}", f"w2_{u}", f"b2_{u}"],
                    [f"t{u}"],
                    kernel_shape=[3, 1],
                    dilations=[PERIOD, 1],
                    pads=[PERIOD, 0, PERIOD, 0],
                ),
                helper.make_node("Relu", [f"t{u}"], [f"tr{u}"]),
                helper.make_node("Mul", [f"tr{u}", "separator_mask"], [out]),
            ]
        else:
            nodes += [
                helper.make_node(
                    "Conv", [x, f"w1_{u}", f"b1_{u}"], [f"s{u}"], kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1]
                ),
                helper.make_node("Relu", [f"s{u}"], [f"sr{u}"]),
                helper.make_node("Reshape", [f"sr{u}", "view_4d"], [f"s4_{u}"]),
                helper.make_node(
                    "Conv", [f"s4_{u}", f"w2_{u}", f"b2_{u}"], [f"t{u}"], kernel_shape=[3, 1], pads=[1, 0, 1, 0]
                ),
                helper.make_node("Relu", [f"t{u}"], [f"tr{u}"]),
                helper.make_node("Reshape", [f"tr{u}", "view_5d"], [out]),
            ]
        x = out
    shape = [1, CHANNELS, FRAMES * PERIOD, WIDTH] if stacked else [1, CHANNELS, FRAMES, HEIGHT, WIDTH]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "stacked" if stacked else "current",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[t for t in initializers if t.name in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def stack_frames(x: np.ndarray) -> np.ndarray:
    """``[1, C, T, H, W]`` → ``[1, C, T·(H+1), W]`` with a zero row after every frame."""
    padded = np.zeros((*x.shape[:3], PERIOD, x.shape[4]), x.dtype)
    padded[:, :, :, :HEIGHT] = x
    return padded.reshape(1, x.shape[1], -1, x.shape[4])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--units", type=int, default=4, help="r(2+1)d units in the chain (layer1 has 4)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = [unit_weights(rng) for _ in range(args.units)]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stacked in (False, True):
        paths[stacked] = args.out / f"chain_{'stacked' if stacked else 'current'}.onnx"
        onnx.save(chain(weights, stacked), str(paths[stacked]))
    x = np.maximum(rng.standard_normal((1, CHANNELS, FRAMES, HEIGHT, WIDTH), dtype=np.float32), 0)
    current = ort.InferenceSession(str(paths[False]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    stacked = ort.InferenceSession(str(paths[True]), providers=["CPUExecutionProvider"])
    rows = stacked.run(None, {"x": stack_frames(x)})[0].reshape(1, CHANNELS, FRAMES, PERIOD, WIDTH)
    print(f"wrote {paths[False]} and {paths[True]}")
    print(f"max |current − stacked| over the frames' rows: {np.abs(current - rows[:, :, :, :HEIGHT]).max():.3e}")
    print(f"max |separator rows| after the mask: {np.abs(rows[:, :, :, HEIGHT]).max():.3e}")


if __name__ == "__main__":
    main()
