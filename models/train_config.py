"""The knobs of the training recipe (``TrainConfig``), recorded in every checkpoint's provenance.

Torch-free, so the command line takes its option defaults from here (``TrainConfig()`` and ``TRAIN_MODEL``)
without importing torch: each default is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vared2.formats.errors import InputError

from .buckets import BACKBONES

__all__ = ["BACKBONES", "PRECISIONS", "TRAIN_MODEL", "ModelShape", "TrainConfig"]

#: Training precisions: fp32; bfloat16 autocast (CPU or CUDA); float16 autocast with a gradient scaler (CUDA only).
PRECISIONS = ("fp32", "bf16", "fp16")


def default_warmup(epochs: int) -> int:
    """Full-bucket epochs before the gate when none are given: a quarter of the run (3 of 12), so a short run
    (``--epochs 1``) is not refused for a default it did not choose."""
    return max(0, epochs) // 4


@dataclass
class TrainConfig:
    """Every knob of the recipe; recorded in the checkpoint's provenance."""

    epochs: int = 12
    warmup_epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    target_ratio: float = 0.55
    flops_weight: float = 2.0
    tau_start: float = 5.0
    tau_end: float = 0.5
    seed: int = 0
    static: bool = False
    threads: int | None = None
    translate: int = 0  # random translation of each training clip by up to this many pixels (models.augment)
    precision: str = "fp32"  # bf16 / fp16: the forward passes under autocast (weights stay fp32); fp16: CUDA only
    distill_weight: float = 1.0  # weight of each reduced bucket's distillation term in the sandwich
    lr_warmup_epochs: int = 0  # the learning rate rises linearly from ~0 over this many epochs (see learning_rate)
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N (models.distributed.resolve_device)
    workers: int = 0  # DataLoader worker processes decoding clips (0: in the training process)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("train: epochs and batch_size must be at least 1")
        if self.warmup_epochs < 0:
            raise InputError(f"train: warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs > self.epochs:  # say what to change
            raise InputError(
                f"train: warmup_epochs must be within 0..epochs ({self.epochs}), got {self.warmup_epochs}; "
                f"lower it (--warmup-epochs) to at most {self.epochs}"
            )
        if not 0.0 < self.target_ratio <= 1.0:
            raise InputError(f"train: target_ratio must be in (0, 1], got {self.target_ratio}")
        if not 0.0 < self.lr < math.inf:
            raise InputError(f"train: lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.flops_weight < math.inf:
            raise InputError(f"train: flops_weight must be a finite number >= 0, got {self.flops_weight}")
        if self.threads is not None and self.threads < 1:  # None: torch's default, all cores
            raise InputError(f"train: threads must be at least 1 (or None for all cores), got {self.threads}")
        if not self.tau_start >= self.tau_end > 0:
            raise InputError("train: need tau_start >= tau_end > 0")
        if not 0 <= self.lr_warmup_epochs <= self.epochs:
            raise InputError(f"train: lr_warmup_epochs must be within 0..epochs ({self.epochs})")
        if self.translate < 0:
            raise InputError(f"train: translate must be >= 0 pixels, got {self.translate}")
        if not 0.0 <= self.distill_weight < math.inf:
            raise InputError(f"train: distill_weight must be a finite number >= 0, got {self.distill_weight}")
        if self.precision not in PRECISIONS:
            raise InputError(f"train: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and self.device.strip().lower() == "cpu":
            raise InputError("train: precision fp16 needs a CUDA device (on the CPU use bf16)")
        if self.workers < 0:
            raise InputError(f"train: workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class ModelShape:
    """The network ``vared2 train`` builds unless told otherwise: the demo's."""

    backbone: str = "r2plus1d_18"
    width: float = 0.25
    frames: int = 8
    size: int = 56


TRAIN_MODEL = ModelShape()
