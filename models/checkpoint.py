"""Checkpoint directories (DESIGN.md §2, §9): ``model.safetensors`` (weights) + ``model.json`` (config + sha256).

Only ``safetensors`` is ever read — no pickle — and every file is written to a temporary name and renamed, so a
crash never leaves a half-written checkpoint behind. Any problem on load is a ValueError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vared2.formats.errors import InputError, InputNotFoundError, InputTypeError

from .config import ModelConfig
from .video_resnet import VaRed2VideoResNet

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT = "vared2-checkpoint"
VERSION = 1


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` then rename the temp file over ``path`` (same directory, so the rename is atomic)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp (and safetensors' writer) make 0600 files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save(model: VaRed2VideoResNet, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the directory."""
    if not isinstance(model, VaRed2VideoResNet):
        raise InputTypeError(f"save expects a VaRed2VideoResNet, got {type(model).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    weights = out / WEIGHTS
    _atomic_write(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    document = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_json(),
        "weights": {"file": WEIGHTS, "sha256": sha256_of(weights)},
    }
    text = json.dumps(document, indent=2) + "\n"
    _atomic_write(out / CONFIG, lambda p: p.write_text(text))
    return out


def read_config(directory: str | os.PathLike[str]) -> tuple[ModelConfig, str]:
    """The checkpoint's config and the expected sha256 of its weights (``model.json`` only)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such checkpoint config")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, a 5000-digit number, deep nesting
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f'{path}: not a vared2 checkpoint (expected "format": "{FORMAT}")')
    if document.get("version") != VERSION:
        raise InputError(f"{path}: unsupported checkpoint version {document.get('version')!r} (expected {VERSION})")
    weights = document.get("weights")
    if (
        not isinstance(weights, dict)
        or weights.get("file") != WEIGHTS
        or not isinstance(weights.get("sha256"), str)
        or len(weights["sha256"]) != 64
    ):
        raise InputError(f'{path}: field "weights" must be {{"file": "{WEIGHTS}", "sha256": <64 hex>}}')
    try:
        config = ModelConfig.from_json(document.get("config"))
    except (TypeError, ValueError) as error:
        raise InputError(f'{path}: field "config": {error}') from None
    return config, weights["sha256"]


def load(directory: str | os.PathLike[str]) -> VaRed2VideoResNet:
    """Rebuild the model of a checkpoint directory, in eval mode, after checking the weights file completely."""
    config, expected_sha = read_config(directory)
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise InputNotFoundError(f"{path}: weights file missing")
    actual_sha = sha256_of(path)
    if actual_sha != expected_sha:
        raise InputError(
            f"{path}: sha256 {actual_sha} does not match {expected_sha} recorded in {CONFIG} "
            "(the file is truncated, corrupted or was replaced)"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None

    model = VaRed2VideoResNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise InputError(
            f"{path}: tensors do not match a {config.backbone} with this config: "
            f"missing {_short(missing)}, unexpected {_short(extra)}"
        )
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise InputError(
                f"{path}: tensor {name!r} is {got.dtype} {list(got.shape)}, expected {want.dtype} {list(want.shape)}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise InputError(f"{path}: tensor {name!r} contains NaN or infinity")
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def _short(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}]" if names else "[]"
