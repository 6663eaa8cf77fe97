"""Time the ONNX function bodies on ONNX Runtime's CPU kernels against alternative formulations.

    .venv/bin/python experiments/time_onnx_functions.py [--threads 2] [--repeat 50]

The alternatives are plain graphs that know the static channel counts (a function body does not), so they
show what the chosen bodies cost next to the formulations the function cannot express. The numbers in
docs/plugins.md come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, NodeProto, helper, numpy_helper

from vared2.plugins.onnx_functions import OPSET, single_op_model


def _const(name: str, values: list[int]) -> NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, np.int64), name))


def _model(
    nodes: list[NodeProto], inputs: dict[str, list[int | str]], initializers: dict[str, np.ndarray]
) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        "alternative",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def gather_source_conv3d(cc: int, out: int, fold_time: bool, shape: list[int | str]) -> ModelProto:
    """Sources by Gather over channels, then a depthwise Conv (3-D, or 2-D over folded N·T), static G."""
    g = out - cc
    _, _, t, h, w = shape
    nodes = [
        helper.make_node("Gather", ["x", "idx"], ["src"], axis=1),
    ]
    if fold_time:
        nodes += [
            helper.make_node("Transpose", ["src"], ["src_t"], perm=[0, 2, 1, 3, 4]),
            _const("s4", [-1, g, h, w]),  # type: ignore[list-item]
            helper.make_node("Reshape", ["src_t", "s4"], ["src4"]),
            _const("w4s", [g, 1, 3, 3]),
            helper.make_node("Reshape", ["weight", "w4s"], ["w4"]),
            helper.make_node("Conv", ["src4", "w4", "bias"], ["made4"], group=g, pads=[1, 1, 1, 1]),
            _const("s5", [-1, t, g, h, w]),  # type: ignore[list-item]
            helper.make_node("Reshape", ["made4", "s5"], ["made5"]),
            helper.make_node("Transpose", ["made5"], ["made"], perm=[0, 2, 1, 3, 4]),
        ]
    else:
        nodes.append(helper.make_node("Conv", ["src", "weight", "bias"], ["made"], group=g, pads=[0, 1, 1, 0, 1, 1]))
    nodes.append(helper.make_node("Concat", ["x", "made"], ["y"], axis=1))
    idx = np.array([k % cc for k in range(g)], np.int64)
    return _model(nodes, {"x": shape, "weight": [g, 1, 1, 3, 3], "bias": [g]}, {"idx": idx})


def source_only(cc: int, out: int, shape: list[int | str], how: str) -> ModelProto:
    """Just the source selection x[:, g mod C_c], by Gather or by Tile + Slice (static repeats)."""
    g = out - cc
    if how == "gather":
        idx = np.array([k % cc for k in range(g)], np.int64)
        return _model([helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)], {"x": shape}, {"idx": idx})
    reps = -(-g // cc)
    nodes = [
        _const("reps", [1, reps, 1, 1, 1]),
        helper.make_node("Tile", ["x", "reps"], ["tiled"]),
        _const("st", [0]),
        _const("en", [g]),
        _const("ax", [1]),
        helper.make_node("Slice", ["tiled", "st", "en", "ax"], ["y"]),
    ]
    return _model(nodes, {"x": shape}, {})


def temporal_variant(c: int, tc: int, r: int, how: str) -> ModelProto:
    """Alternatives to the 6-D broadcast: a flat 5-D view ``[N, C, Tc, 1, H·W]``, or Tile along R first."""
    nodes = [
        _const("flat", [0, 0, 0, 1, -1]),
        helper.make_node("Reshape", ["x", "flat"], ["x5"]),
        _const("coef", [0, 1, -1, 1]),
        helper.make_node("Transpose", ["scale"], ["st"], perm=[1, 0]),
        helper.make_node("Reshape", ["st", "coef"], ["a"]),
        helper.make_node("Transpose", ["shift"], ["bt"], perm=[1, 0]),
        helper.make_node("Reshape", ["bt", "coef"], ["b"]),
    ]
    source = "x5"
    if how == "tile":
        nodes += [_const("reps", [1, 1, 1, r, 1]), helper.make_node("Tile", ["x5", "reps"], ["xt"])]
        source = "xt"
    nodes += [
        helper.make_node("Mul", [source, "a"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y5"]),
        _const("head", [0, 0, -1]),
        helper.make_node("Shape", ["x"], ["hw"], start=3),
        helper.make_node("Concat", ["head", "hw"], ["shape"], axis=0),
        helper.make_node("Reshape", ["y5", "shape"], ["y"]),
    ]
    return _model(nodes, {"x": ["N", c, tc, "H", "W"], "scale": [r, c], "shift": [r, c]}, {})


def time_sessions(
    models: dict[str, ModelProto], feeds: dict[str, np.ndarray], threads: int, repeat: int
) -> dict[str, float]:
    """Median wall time of one run per model, in milliseconds; runs interleave so drift hits all alike."""
    sessions = {}
    for label, model in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle sessions must not spin on the cores while another one is being timed.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        sessions[label] = (session, {k: v for k, v in feeds.items() if k in wanted})
    times: dict[str, list[float]] = {label: [] for label in models}
    for step in range(repeat + 5):
        for label, (session, own) in sessions.items():
            start = time.perf_counter()
            session.run(None, own)
            if step >= 5:
                times[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(t) for label, t in times.items()}


def nine_taps(cc: int, out: int, shape: list[int | str]) -> ModelProto:
    """Gather sources, then the depthwise filter as nine shifted Slice taps (no Conv group needed), + Concat."""
    g = out - cc
    nodes = [
        helper.make_node("Gather", ["x", "idx"], ["src"], axis=1),
        _const("pads", [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]),
        helper.make_node("Pad", ["src", "pads"], ["padded"]),
        _const("taps_shape", [g, 9, 1, 1]),
        helper.make_node("Reshape", ["weight", "taps_shape"], ["taps"]),
        _const("axes", [3, 4]),
        _const("one", [1]),
        _const("bias_shape", [g, 1, 1, 1]),
        helper.make_node("Reshape", ["bias", "bias_shape"], ["sum"]),
    ]
    big = np.iinfo(np.int64).max
    for k in range(9):
        i, j = divmod(k, 3)
        nodes += [
            _const(f"s{k}", [i, j]),
            _const(f"e{k}", [i - 2 if i < 2 else big, j - 2 if j < 2 else big]),
            helper.make_node("Slice", ["padded", f"s{k}", f"e{k}", "axes"], [f"win{k}"]),
            _const(f"t{k}", [k]),
            _const(f"u{k}", [k + 1]),
            helper.make_node("Slice", ["taps", f"t{k}", f"u{k}", "one"], [f"w{k}"]),
            helper.make_node("Mul", [f"win{k}", f"w{k}"], [f"m{k}"]),
            helper.make_node("Add", ["sum" if k == 0 else f"a{k - 1}", f"m{k}"], [f"a{k}"]),
        ]
    nodes.append(helper.make_node("Concat", ["x", "a8"], ["y"], axis=1))
    idx = np.array([k % cc for k in range(g)], np.int64)
    return _model(nodes, {"x": shape, "weight": [g, 1, 1, 3, 3], "bias": [g]}, {"idx": idx})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, median of {args.repeat} runs (ms)")

    # r3d_18 at 16x112x112: stage 1 (64 channels, 56x56) and stage 3 (256 channels, 14x14), half computed.
    for n, cc, out, t, h, w in [(1, 32, 64, 16, 56, 56), (4, 32, 64, 16, 56, 56), (4, 128, 256, 4, 14, 14)]:
        g = out - cc
        shape: list[int | str] = ["N", cc, t, h, w]
        feeds = {
            "x": rng.standard_normal((n, cc, t, h, w)).astype(np.float32),
            "weight": rng.standard_normal((g, 1, 1, 3, 3)).astype(np.float32),
            "bias": rng.standard_normal(g).astype(np.float32),
        }
        static: list[int | str] = [n, cc, t, h, w]
        rows = {
            "function: Gather + identity-padded Conv (group=out)": single_op_model(
                "ChannelReconstruct", [shape, [g, 1, 1, 3, 3], [g]], out_channels=out
            ),
            "Gather + nine Slice taps + Concat": nine_taps(cc, out, shape),
            "Gather + depthwise Conv 3-D (static G)": gather_source_conv3d(cc, out, False, static),
            "Gather + depthwise Conv 2-D over N·T (static G)": gather_source_conv3d(cc, out, True, static),
            "sources: Gather": source_only(cc, out, shape, "gather"),
            "sources: Tile + Slice": source_only(cc, out, shape, "tile"),
        }
        print(f"\nChannelReconstruct x=[{n},{cc},{t},{h},{w}] -> {out} channels")
        for label, ms in time_sessions(rows, feeds, args.threads, args.repeat).items():
            print(f"  {label:52s} {ms:8.3f}")

    for n, c, tc, r, h, w in [(1, 64, 8, 2, 56, 56), (4, 64, 8, 2, 56, 56), (4, 256, 2, 2, 14, 14)]:
        feeds = {
            "x": rng.standard_normal((n, c, tc, h, w)).astype(np.float32),
            "scale": rng.standard_normal((r, c)).astype(np.float32),
            "shift": rng.standard_normal((r, c)).astype(np.float32),
        }
        model = single_op_model("TemporalReconstruct", [["N", c, tc, h, w], [r, c], [r, c]], factor=r)
        # The floor: one Concat writing the same number of output bytes.
        copy = _model([helper.make_node("Concat", ["x"] * r, ["y"], axis=2)], {"x": ["N", c, tc, h, w]}, {})
        print(f"\nTemporalReconstruct x=[{n},{c},{tc},{h},{w}], R={r}")
        rows = {
            "function: 6-D broadcast Mul + Add": model,
            "5-D flat view, broadcast Mul + Add": temporal_variant(c, tc, r, "flat"),
            "Tile along R, then Mul + Add": temporal_variant(c, tc, r, "tile"),
            "floor: Concat of R copies (same output bytes)": copy,
        }
        for label, ms in time_sessions(rows, feeds, args.threads, args.repeat).items():
            print(f"  {label:52s} {ms:8.3f}")


if __name__ == "__main__":
    main()
