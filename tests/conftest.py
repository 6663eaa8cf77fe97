"""Shared test setup: GPU tests skip with the reason when there is no GPU or no TensorRT, CUDA tests (PyTorch on
the GPU, no TensorRT) when there is no CUDA device, and server-tier tests when this environment has no usable
tritonserver; and the toy engine directory several runtime tests share."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest


def gpu_unavailable_reason() -> str | None:
    """Why the GPU tier cannot run here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (the GPU tier runs with ./build.sh gpu-check on an NVIDIA host)"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    return None


def cuda_unavailable_reason() -> str | None:
    """Why PyTorch cannot run on a CUDA device here, or None when it can."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed in this environment"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False): the CUDA paths run on a GPU host"
    return None


def server_unavailable_reason() -> str | None:
    """Why the server tier cannot run in this environment (it has its own: ./build.sh triton-test)."""
    from vared2.serve import TritonNotInstalled, find_tritonserver

    try:
        find_tritonserver()
    except TritonNotInstalled as error:
        return str(error)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"gpu": gpu_unavailable_reason()}
    if any("cuda" in item.keywords for item in items):
        reasons["cuda"] = cuda_unavailable_reason()
    if any("server" in item.keywords for item in items):
        reasons["server"] = server_unavailable_reason()
    for item in items:
        for marker, reason in reasons.items():
            if reason is not None and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy ONNX Runtime engine directory (``test_runtime_models.build_engine_dir``), built once per module."""
    from test_runtime_models import build_engine_dir

    directory = tmp_path_factory.mktemp("engines") / "toy"
    build_engine_dir(directory)
    return directory
