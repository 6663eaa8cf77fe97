"""Where training runs: the device (``--device auto|cpu|cuda|cuda:N``) and, under ``torchrun``, the process group.

``torchrun --nproc_per_node=N -m vared2 train …`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; ``setup`` then joins
the group (NCCL on CUDA, gloo on the CPU) and each process takes ``cuda:LOCAL_RANK``. Without them it is one
process, as before. See docs/training.md, "Several GPUs or processes".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from vared2.formats.errors import InputError

DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Placement:
    """This process's device and its place in the run (rank 0 of 1 when not distributed)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes the checkpoint, the training state and the logs, and shows progress."""
        return self.rank == 0

    def describe(self) -> dict[str, object]:
        """What a checkpoint's provenance records about where it was trained."""
        return {"world_size": self.world_size, "backend": self.backend, "device_type": self.device.type}


def resolve_device(spec: str) -> torch.device:
    """``auto`` → CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as given, checked now."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r}: expected {DEVICES_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {spec!r}: expected {DEVICES_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA is not available here (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device_spec: str = "auto") -> Placement:
    """This process's placement; under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group first."""
    device = resolve_device(device_spec)
    if not launched_by_torchrun() and not dist.is_initialized():
        return Placement(device)
    if device.type == "cuda":
        if device.index is not None:
            raise InputError(
                f"--device {device_spec}: under torchrun each process takes cuda:LOCAL_RANK; pass --device cuda"
            )
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Placement(device, dist.get_rank(), dist.get_world_size(), dist.get_backend())


def teardown(placement: Placement) -> None:
    """Leave the process group once every rank is done with it."""
    if placement.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(placement: Placement, values: list[float]) -> list[float]:
    """``values`` summed over every rank (as they are on one process)."""
    if not placement.distributed:
        return values
    backend_device = placement.device if placement.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flags: Tensor) -> Tensor:
    """Element-wise OR of a boolean vector over every rank (unchanged in one process)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return flags
    counts = flags.to(torch.int64)
    if dist.get_backend() != "nccl":
        counts = counts.cpu()
    dist.all_reduce(counts)
    return counts.to(flags.device) > 0
