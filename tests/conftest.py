"""Shared test setup: GPU tests skip with the reason when there is no GPU or no TensorRT."""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def gpu_unavailable_reason() -> str | None:
    """Why the GPU tier cannot run here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (the GPU tier runs with ./build.sh gpu-check on an NVIDIA host)"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
