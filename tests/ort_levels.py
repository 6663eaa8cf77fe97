"""Running an in-memory ONNX model in ONNX Runtime at each optimisation level the engines may use: the rewrite tests
check their graphs at both, since level ``all`` swaps in the NCHWc kernels the rewrites are written for."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from vared2.formats.sessions import LEVELS as ALL_LEVELS

LEVELS = {level: ALL_LEVELS[level] for level in ("extended", "all")}


def run_at_level(
    model: onnx.ModelProto, feed: dict[str, np.ndarray], level: str, outputs: list[str] | None = None
) -> list[np.ndarray]:
    """``outputs`` (default: all) of one run of ``model`` on the CPU at optimisation ``level``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feed)
