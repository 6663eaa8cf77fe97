"""Random translation of training clips (models.augment): exact moves, all frames alike, zeros moved in."""

from __future__ import annotations

import pytest
import torch

from vared2.models.augment import random_translate


def test_each_clip_moves_by_one_offset_for_all_its_frames() -> None:
    clips = torch.zeros(64, 2, 3, 9, 9)
    clips[:, :, :, 4, 4] = torch.arange(1, 4).view(1, 1, 3)  # one bright pixel per frame, a different value each
    moved = random_translate(clips, 2, torch.Generator().manual_seed(0))
    assert moved.shape == clips.shape
    offsets = set()
    for clip in moved:
        where = clip.nonzero()
        assert len(where) == 2 * 3  # the pixel survives in every channel and frame, nothing else is lit
        assert len({(int(y), int(x)) for y, x in where[:, 2:]}) == 1  # the same move for every frame
        y, x = (int(v) for v in where[0, 2:])
        assert abs(y - 4) <= 2 and abs(x - 4) <= 2
        torch.testing.assert_close(clip[:, :, y, x], clips[0, :, :, 4, 4])  # frames keep their order
        offsets.add((y - 4, x - 4))
    assert len(offsets) > 10  # 25 possible moves, 64 clips: drawn per clip, not one for the batch


def test_content_moved_out_is_dropped_and_zeros_come_in() -> None:
    clips = torch.ones(32, 1, 2, 6, 6)
    moved = random_translate(clips, 3, torch.Generator().manual_seed(1))
    lit = moved.sum(dim=(1, 2, 3, 4)) / 2  # pixels per frame still lit
    # A move by (dy, dx) keeps (6 - |dy|)(6 - |dx|) pixels; at least one clip moved, none lost everything.
    assert (lit < 36).any() and (lit >= 9).all()


def test_same_generator_same_moves_and_zero_is_identity() -> None:
    clips = torch.randn(8, 3, 2, 7, 7)
    first = random_translate(clips, 3, torch.Generator().manual_seed(5))
    second = random_translate(clips, 3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert random_translate(clips, 0, torch.Generator()) is clips


def test_bad_arguments_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match="max_pixels must be >= 0, got -1"):
        random_translate(torch.zeros(1, 3, 2, 4, 4), -1, torch.Generator())
    with pytest.raises(ValueError, match=r"expected \[N, C, T, H, W\] clips, got \[3, 2, 4, 4\]"):
        random_translate(torch.zeros(3, 2, 4, 4), 1, torch.Generator())
