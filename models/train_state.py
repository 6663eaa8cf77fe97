"""The resumable training state next to a checkpoint: ``train_state.safetensors`` (optimizer moments) and
``train_state.json`` (epoch, history, config, RNG states, gradient scaler, world size) — no pickle.

Only rank 0 writes it; every rank of a resumed run reads it (their RNG states were equal when it was written).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from vared2.formats.errors import InputError, InputNotFoundError

from .train_config import TrainConfig

TRAIN_STATE = "train_state"


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    val_gflops_ratio: float
    tau: float
    histogram: list[int] = field(default_factory=list)


def _state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, object]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, object] = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.ndim > 0:
                tensors[f"{i}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{key}"] = float(value)
    return tensors, scalars


def save_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[EpochStats],
    config: TrainConfig,
    *,
    world_size: int = 1,
    scaler: dict[str, Any] | None = None,
) -> None:
    """Optimizer moments as safetensors, the rest as JSON — resumable without unpickling anything."""
    tensors, scalars = _state_tensors(optimizer)
    tmp = directory / f"{TRAIN_STATE}.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(directory / f"{TRAIN_STATE}.safetensors")
    meta: dict[str, Any] = {
        "epoch": epoch,
        "scalars": scalars,
        "config": asdict(config),
        "history": [asdict(h) for h in history],
        "torch_rng": torch.get_rng_state().tolist(),
        "world_size": world_size,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        meta["cuda_rng"] = torch.cuda.get_rng_state().tolist()  # the current device's: Gumbel noise on CUDA
    if scaler:
        meta["grad_scaler"] = scaler
    tmp_json = directory / f"{TRAIN_STATE}.json.tmp"
    tmp_json.write_text(json.dumps(meta))
    tmp_json.replace(directory / f"{TRAIN_STATE}.json")


def read_state(directory: Path) -> dict[str, Any]:
    """``train_state.json``, checked for presence."""
    meta_path = directory / f"{TRAIN_STATE}.json"
    if not meta_path.is_file() or not (directory / f"{TRAIN_STATE}.safetensors").is_file():
        raise InputNotFoundError(f"{directory}: no training state to resume from ({meta_path.name} missing)")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    return meta


def check_world_size(directory: Path, world_size: int) -> None:
    """A run resumes with the world size it was saved with: another one changes the global batch (``--batch-size``
    is per rank), so the learning-rate schedule and the order of the clips, and the run would not be the same."""
    saved = int(read_state(directory).get("world_size", 1))
    if saved != world_size:
        raise InputError(
            f"--resume {directory}: that run trained on {saved} process(es), this one has {world_size}; resume it "
            f"with --nproc_per_node × --nnodes = {saved}, or start a new run from its weights with --init-from"
        )


def load_training_state(
    directory: Path, optimizer: torch.optim.Optimizer
) -> tuple[int, list[EpochStats], dict[str, Any] | None]:
    """Restore the optimizer and the RNG states; returns (epochs done, history, gradient scaler state or None)."""
    meta = read_state(directory)
    tensors = load_file(str(directory / f"{TRAIN_STATE}.safetensors"))
    state = optimizer.state_dict()
    params = [p for group in state["param_groups"] for p in group["params"]]
    new_state: dict[int, dict[str, object]] = {}
    for i in params:
        entry: dict[str, object] = {}
        for key, value in tensors.items():
            index, _, name = key.partition(".")
            if int(index) == i:
                entry[name] = value
        for key, value in meta["scalars"].items():
            index, _, name = key.partition(".")
            if int(index) == i:
                entry[name] = torch.tensor(value)
        if entry:
            new_state[i] = entry
    state["state"] = new_state
    optimizer.load_state_dict(state)  # moves the moments to the parameters' device
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    if "cuda_rng" in meta and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(meta["cuda_rng"], dtype=torch.uint8))
    return int(meta["epoch"]), [EpochStats(**h) for h in meta["history"]], meta.get("grad_scaler")
