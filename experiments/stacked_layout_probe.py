"""Probe for a possible engine layout (docs/performance.md, "Frames stacked along the rows for the whole network").

Writes ONNX graphs of the same chain of r(2+1)d units (layer1 of full-width r2plus1d_18: 64 → 144 → 64 channels,
8 × 56 × 56, random weights, no residuals, a ReLU after each half) in two layouts and checks that they compute the
same numbers:

* ``current`` — as the engine builder writes a bucket today: the spatial ``1×3×3`` half as a 3-D ``Conv`` (plain
  layout, ONNX Runtime's im2col path), the temporal ``3×1×1`` half as a 2-D ``Conv`` over the view
  ``[N, C, T, H·W]`` (blocked NCHWc kernels, with a reorder in and out around it); a channel bucket's ϕs as the
  builder specialises it: depthwise 2-D ``3×3`` convolutions over the ``[N, C_c·T, H, W]`` view of the computed
  channels (one per whole copy, a ``Slice`` for the remainder), then a ``Concat``.
* ``stacked`` — every frame followed by one zero row and the frames stacked along the rows,
  ``[N, C, T·(H+1), W]``: the spatial half is a 2-D ``3×3`` convolution (the zero rows are its padding between
  frames), the temporal half a ``3×1`` convolution dilated by ``H+1`` (frame ``t±1``'s row lies ``H+1`` rows away),
  both on the same blocked tensor; ϕs is a depthwise ``3×3`` convolution on the same tensor. A ``Mul`` by a row
  mask zeroes the separator rows a convolution wrote wherever the next ``3×3`` kernel reads them: the computed
  channels before ϕs, and each unit's output.

``--computed M,C`` makes the units a channel bucket's: the spatial half computes ``M`` of the 144 middle channels and
the temporal half ``C`` of the 64 outputs, ϕs makes the rest (c2's layer1 computes 40 and 16). Besides the two chains
it writes each layout's *convolution-only* graph (the bench's ceiling: every convolution of the chain alone, fed its
own input, no reconstruction, activation or mask), so a bucket's efficiency and ceiling can be compared per layout.

Time them with ``bench/scripts/perf_ab.py OUT/chain_current.onnx@all OUT/chain_stacked.onnx@all --threads 2``.

    .venv/bin/python experiments/stacked_layout_probe.py --out /tmp/stacked [--units 4] [--computed 40,16]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import NodeProto, TensorProto, helper, numpy_helper

CHANNELS, MIDDLE, FRAMES, HEIGHT, WIDTH = 64, 144, 8, 56, 56
PERIOD = HEIGHT + 1  # rows per stacked frame: the frame and one zero row

Weights = dict[str, np.ndarray]


def unit_weights(rng: np.random.Generator, middle: int, out: int) -> Weights:
    """One unit's filters: spatial (M_c, C, 1, 3, 3) and temporal (C_c, M, 3, 1, 1) convolutions with biases, and
    ϕs's ``3×3`` filters and biases for the generated middle and output channels."""

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "w1": normal((middle, CHANNELS, 1, 3, 3), 0.05),
        "b1": normal((middle,), 0.1),
        "w2": normal((out, MIDDLE, 3, 1, 1), 0.05),
        "b2": normal((out,), 0.1),
        "dw1": normal((MIDDLE - middle, 1, 3, 3), 0.3),
        "db1": normal((MIDDLE - middle,), 0.1),
        "dw2": normal((CHANNELS - out, 1, 3, 3), 0.3),
        "db2": normal((CHANNELS - out,), 0.1),
    }


class Graph:
    """Nodes and initializers of one probe graph, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.count = 0

    def const(self, array: np.ndarray) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attributes: Any) -> str:
        self.count += 1
        out = f"v{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attributes))
        return out

    def first_channels(self, x: str, count: int) -> str:
        """``x[:, :count]`` (ϕs's remainder copy reads only the first computed channels)."""
        starts_ends_axes = [self.const(np.array([v], np.int64)) for v in (0, count, 1)]
        return self.op("Slice", [x, *starts_ends_axes])

    def model(self, inputs: list[tuple[str, list[int]]], outputs: list[tuple[str, list[int]]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "probe",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        return model


def copies(computed: int, total: int) -> list[tuple[int, int]]:
    """ϕs's generated channels as (first generated index, how many) per copy of the computed channels: generated
    channel ``g`` reads computed channel ``g mod computed``."""
    return [(start, min(computed, total - computed - start)) for start in range(0, total - computed, computed)]


def phi_s_current(g: Graph, p: str, computed: int, total: int, dw: np.ndarray, db: np.ndarray) -> str:
    """ϕs as the builder specialises it: depthwise 2-D convolutions over the ``[1, C_c·T, H, W]`` view, a ``Concat``."""
    parts = [g.op("Relu", [p])]
    view = g.op("Reshape", [p, g.const(np.array([1, computed * FRAMES, HEIGHT, WIDTH], np.int64))])
    for start, n in copies(computed, total):
        src = view
        if n < computed:
            src = g.first_channels(view, n * FRAMES)
        w = np.repeat(dw[start : start + n], FRAMES, axis=0)  # channel c·T + t uses channel c's filter
        b = np.repeat(db[start : start + n], FRAMES)
        d = g.op("Conv", [src, g.const(w), g.const(b)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=n * FRAMES)
        d = g.op("Relu", [d])
        parts.append(g.op("Reshape", [d, g.const(np.array([1, n, FRAMES, HEIGHT, WIDTH], np.int64))]))
    return g.op("Concat", parts, axis=1)


def phi_s_stacked(g: Graph, p: str, computed: int, total: int, dw: np.ndarray, db: np.ndarray, mask: str) -> str:
    """ϕs on the stacked tensor: the computed channels masked (ϕs's kernel reads the separator rows), then a
    depthwise ``3×3`` convolution per copy and a ``Concat``."""
    clean = g.op("Mul", [p, mask])
    parts = [g.op("Relu", [clean])]
    for start, n in copies(computed, total):
        src = clean
        if n < computed:
            src = g.first_channels(clean, n)
        d = g.op(
            "Conv",
            [src, g.const(dw[start : start + n]), g.const(db[start : start + n])],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            group=n,
        )
        parts.append(g.op("Relu", [d]))
    return g.op("Concat", parts, axis=1)


def chain(weights: list[Weights], stacked: bool) -> onnx.ModelProto:
    """The chain of units in the current layout or in the stacked one (see the module docstring)."""
    g = Graph()
    mask_rows = np.ones((1, 1, FRAMES * PERIOD, 1), np.float32)
    mask_rows[:, :, HEIGHT::PERIOD] = 0
    mask = g.const(mask_rows) if stacked else ""
    x = "x"
    for w in weights:
        middle, out = w["w1"].shape[0], w["w2"].shape[0]
        if stacked:
            p = g.op("Conv", [x, g.const(w["w1"][:, :, 0]), g.const(w["b1"])], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            m = g.op("Relu", [p]) if middle == MIDDLE else phi_s_stacked(g, p, middle, MIDDLE, w["dw1"], w["db1"], mask)
            p = g.op(
                "Conv",
                [m, g.const(w["w2"][..., 0]), g.const(w["b2"])],
                kernel_shape=[3, 1],
                dilations=[PERIOD, 1],
                pads=[PERIOD, 0, PERIOD, 0],
            )
            y = g.op("Relu", [p]) if out == CHANNELS else phi_s_stacked(g, p, out, CHANNELS, w["dw2"], w["db2"], mask)
            x = g.op("Mul", [y, mask])
        else:
            p = g.op("Conv", [x, g.const(w["w1"]), g.const(w["b1"])], kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1])
            m = g.op("Relu", [p]) if middle == MIDDLE else phi_s_current(g, p, middle, MIDDLE, w["dw1"], w["db1"])
            m = g.op("Reshape", [m, g.const(np.array([1, MIDDLE, FRAMES, HEIGHT * WIDTH], np.int64))])
            p = g.op("Conv", [m, g.const(w["w2"][..., 0]), g.const(w["b2"])], kernel_shape=[3, 1], pads=[1, 0, 1, 0])
            p = g.op("Reshape", [p, g.const(np.array([1, out, FRAMES, HEIGHT, WIDTH], np.int64))])
            x = g.op("Relu", [p]) if out == CHANNELS else phi_s_current(g, p, out, CHANNELS, w["dw2"], w["db2"])
    g.nodes[-1].output[0] = "y"
    shape = [1, CHANNELS, FRAMES * PERIOD, WIDTH] if stacked else [1, CHANNELS, FRAMES, HEIGHT, WIDTH]
    return g.model([("x", shape)], [("y", shape)])


def conv_only(weights: list[Weights], stacked: bool) -> onnx.ModelProto:
    """Every convolution of ``chain`` alone, fed its own input, every output a graph output (the bench's ceiling)."""
    g = Graph()
    inputs, outputs = [], []
    rows = [FRAMES * PERIOD, WIDTH] if stacked else [FRAMES, HEIGHT, WIDTH]
    for u, w in enumerate(weights):
        middle, out = w["w1"].shape[0], w["w2"].shape[0]
        inputs += [
            (f"x1_{u}", [1, CHANNELS, *rows]),
            (f"x2_{u}", [1, MIDDLE, FRAMES * (PERIOD if stacked else 1), WIDTH if stacked else HEIGHT * WIDTH]),
        ]
        if stacked:
            a = g.op(
                "Conv", [f"x1_{u}", g.const(w["w1"][:, :, 0]), g.const(w["b1"])], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            )
            b = g.op(
                "Conv",
                [f"x2_{u}", g.const(w["w2"][..., 0]), g.const(w["b2"])],
                kernel_shape=[3, 1],
                dilations=[PERIOD, 1],
                pads=[PERIOD, 0, PERIOD, 0],
            )
            outputs += [(a, [1, middle, *rows]), (b, [1, out, *rows])]
        else:
            a = g.op(
                "Conv", [f"x1_{u}", g.const(w["w1"]), g.const(w["b1"])], kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1]
            )
            b = g.op(
                "Conv", [f"x2_{u}", g.const(w["w2"][..., 0]), g.const(w["b2"])], kernel_shape=[3, 1], pads=[1, 0, 1, 0]
            )
            outputs += [(a, [1, middle, *rows]), (b, [1, out, FRAMES, HEIGHT * WIDTH])]
    return g.model(inputs, outputs)


def stack_frames(x: np.ndarray) -> np.ndarray:
    """``[1, C, T, H, W]`` → ``[1, C, T·(H+1), W]`` with a zero row after every frame."""
    padded = np.zeros((*x.shape[:3], PERIOD, x.shape[4]), x.dtype)
    padded[:, :, :, :HEIGHT] = x
    return padded.reshape(1, x.shape[1], -1, x.shape[4])


def macs(weights: list[Weights]) -> int:
    """Multiply-adds of the chain per clip: both convolutions of every unit and ϕs's ``3×3`` filters."""
    per_pixel = sum(
        w["w1"].shape[0] * CHANNELS * 9 + w["w2"].shape[0] * MIDDLE * 3 + 9 * (len(w["db1"]) + len(w["db2"]))
        for w in weights
    )
    return per_pixel * FRAMES * HEIGHT * WIDTH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--units", type=int, default=4, help="r(2+1)d units in the chain (layer1 has 4)")
    parser.add_argument(
        "--computed",
        default=f"{MIDDLE},{CHANNELS}",
        help="computed middle and output channels of every unit (default: all, the full bucket)",
    )
    args = parser.parse_args()
    middle, out = (int(v) for v in args.computed.split(","))
    if not (0 < middle <= MIDDLE and 0 < out <= CHANNELS):
        parser.error(f"--computed: expected M,C with 1 ≤ M ≤ {MIDDLE} and 1 ≤ C ≤ {CHANNELS}, got {args.computed}")
    rng = np.random.default_rng(0)
    weights = [unit_weights(rng, middle, out) for _ in range(args.units)]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stacked in (False, True):
        layout = "stacked" if stacked else "current"
        paths[stacked] = args.out / f"chain_{layout}.onnx"
        onnx.save(chain(weights, stacked), str(paths[stacked]))
        onnx.save(conv_only(weights, stacked), str(args.out / f"convs_{layout}.onnx"))
    x = np.maximum(rng.standard_normal((1, CHANNELS, FRAMES, HEIGHT, WIDTH), dtype=np.float32), 0)
    current = ort.InferenceSession(str(paths[False]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    stacked = ort.InferenceSession(str(paths[True]), providers=["CPUExecutionProvider"])
    rows = stacked.run(None, {"x": stack_frames(x)})[0].reshape(1, CHANNELS, FRAMES, PERIOD, WIDTH)
    print(
        f"wrote {args.out}/chain_{{current,stacked}}.onnx and convs_{{current,stacked}}.onnx ({args.computed}, "
        f"{macs(weights) / 1e9:.3f} GMACs in the chain)"
    )
    print(
        f"max |current − stacked| over the frames' rows: {np.abs(current - rows[:, :, :, :HEIGHT]).max():.3e}"
        f" (outputs up to {np.abs(current).max():.2f})"
    )
    print(f"max |separator rows| after the mask: {np.abs(rows[:, :, :, HEIGHT]).max():.3e}")


if __name__ == "__main__":
    main()
