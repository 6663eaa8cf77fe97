"""``./build.sh gpu-check`` says clearly when there is no GPU or no TensorRT, and claims nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import gpu_unavailable_reason


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU with TensorRT is here: the real tier runs")
def test_gpu_check_refuses_clearly_without_a_gpu() -> None:
    run = subprocess.run([sys.executable, "-m", "vared2.gpu_check"], capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "cannot run" in run.stderr and "Nothing was checked" in run.stderr
    assert "passed" not in run.stdout
