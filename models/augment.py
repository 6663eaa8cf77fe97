"""Training-time augmentation: random translation of whole clips.

A clip is moved by one ``(dy, dx)`` for all its frames, so its motion (the difference between frames) is the same
and only where things are changes — what a camera framing the scene a little differently would give. The pixels
moved in are 0, the dataset's mean colour after normalisation. Labels never change, so this suits any data whose
classes do not depend on absolute position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_translate(
    clips: Tensor, max_pixels: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
) -> Tensor:
    """``[N, C, T, H, W]`` clips, each moved by its own ``dy, dx``, uniform in ``[-max_pixels, max_pixels]``.

    ``shard = (rank, world size)``: the offsets are drawn for the global batch of ``N × world`` clips and this
    rank takes rows ``rank::world`` (its clips' places in it), so N ranks move each clip as one process does."""
    if max_pixels < 0:
        raise ValueError(f"translate: max_pixels must be >= 0, got {max_pixels}")
    if clips.dim() != 5:
        raise ValueError(f"translate: expected [N, C, T, H, W] clips, got {list(clips.shape)}")
    if max_pixels == 0:
        return clips
    height, width = clips.shape[-2:]
    padded = F.pad(clips, (max_pixels, max_pixels, max_pixels, max_pixels))
    # Offsets into the padded clip: max_pixels is no move, 0 moves the content down/right by max_pixels.
    rank, world = shard
    drawn = torch.randint(0, 2 * max_pixels + 1, (len(clips) * world, 2), generator=generator)
    offsets = drawn[rank::world].tolist()
    return torch.stack([padded[i, :, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets)])
