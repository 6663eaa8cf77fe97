"""``./build.sh gpu-check`` says clearly when there is no GPU or no TensorRT, and claims nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import gpu_unavailable_reason


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU with TensorRT is here: the real tier runs")
def test_gpu_check_refuses_clearly_without_a_gpu() -> None:
    run = subprocess.run([sys.executable, "-m", "vared2.gpu_check"], capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "cannot run" in run.stderr and "Nothing was checked" in run.stderr
    assert "passed" not in run.stdout


def test_each_missing_requirement_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks in order — GPU, TensorRT, pycuda — each with what to do; the machine is described to the check,
    nothing of TensorRT is imported or imitated."""
    import importlib.util
    import shutil

    from vared2 import gpu_check

    present = {"nvidia-smi"}
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name in present else None)
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name in {"tensorrt", "pycuda"}:
            return object() if name in present else None
        return real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert "TensorRT's Python package is not installed" in str(gpu_check.missing_requirement())
    present.add("tensorrt")
    assert "pycuda" in str(gpu_check.missing_requirement()) and "[gpu]" in str(gpu_check.missing_requirement())
    present.add("pycuda")
    assert gpu_check.missing_requirement() is None
    present.discard("nvidia-smi")
    assert "no NVIDIA GPU" in str(gpu_check.missing_requirement())


def test_precision_clips_are_the_demos_and_held_apart() -> None:
    """The int8 calibration clips and the comparison clips: the demo's synthetic kind, different seeds."""
    from vared2 import gpu_check

    calibration, _ = gpu_check.synthetic_clips(4, seed=1, frames=8, size=56)
    held_apart, labels = gpu_check.synthetic_clips(4, seed=2, frames=8, size=56)
    assert calibration.shape == held_apart.shape == (4, 8, 56, 56, 3) and calibration.dtype == np.uint8
    assert not np.array_equal(calibration, held_apart) and labels.shape == (4,) and (labels >= 0).all()
