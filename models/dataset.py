"""Video datasets for training and evaluation: a folder or CSV list of video files, and an in-memory clip list.

Both produce what the model takes (DESIGN.md §2): a normalized float clip ``[3, T, H, W]``, with the label and the
motion-level id (``MOTION_LEVELS`` index, ``-1`` when unknown). Frames are sampled and resized by
:mod:`vared2.formats.video`, the same preprocessing the runtime applies.

A video that cannot be used (unreadable, not a video, no frames, too short) never stops an epoch: the first
failure logs a warning naming the file and the reason, the file is remembered as bad, and the item is replaced by
the next usable one (index + 1, + 2, … wrapping around), so batches keep their size. Call :meth:`validate` first
to drop bad files up front instead, e.g. for evaluation, where a replaced item would be counted twice.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vared2.formats.errors import InputError, InputNotFoundError
from vared2.formats.video import (
    VIDEO_EXTENSIONS,
    StrPath,
    VideoReadError,
    read_clip,
    resize_short_side_and_center_crop,
    sample_indices,
)
from vared2.models.synthetic import MOTION_LEVELS

log = logging.getLogger(__name__)

#: Normalization of torchvision's video models (Kinetics-400), the default input spec.
KINETICS_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
KINETICS_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)


def normalize_clip(
    clip: np.ndarray, mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD
) -> torch.Tensor:
    """RGB uint8 ``[T, H, W, 3]`` → float32 ``[3, T, H, W]``, ``(x / 255 - mean) / std`` per channel.

    Done in numpy: on a busy 2-core machine torch's thread pool made this 21 ms a clip instead of 0.3 ms.
    """
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise InputError(f"clip must be uint8 [T, H, W, 3], got {clip.dtype} {list(clip.shape)}")
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1, 1)
    x = np.ascontiguousarray(clip.transpose(3, 0, 1, 2)).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy((x - m) / s)


def _check_input_spec(frames: int, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if frames < 1 or size < 1:
        raise InputError(f"frames and size must be positive, got frames={frames}, size={size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise InputError(f"mean and std need 3 values each, std positive; got mean={mean}, std={std}")


@dataclass(frozen=True)
class VideoSample:
    """One listed video: its path, label index and motion-level id (-1 when unknown)."""

    path: Path
    label: int
    motion: int = -1


def motion_id(level: str) -> int:
    """The id of a motion level name (``""`` → -1, unknown); a ValueError names the valid ones."""
    if level == "":
        return -1
    if level not in MOTION_LEVELS:
        raise InputError(f"unknown motion level {level!r}; expected one of {list(MOTION_LEVELS)} or empty")
    return MOTION_LEVELS.index(level)


def scan_folder(
    root: Path, classes: Sequence[str] | None = None, extensions: Sequence[str] = VIDEO_EXTENSIONS
) -> tuple[list[str], list[VideoSample]]:
    """``root/<class>/<video>`` (Kinetics / UCF101 layout): classes are the sorted sub-folder names.

    Given ``classes`` (e.g. the training set's, for a validation folder that lacks some), labels follow that
    order instead, and a folder that is not one of them is an error.
    """
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{root}: no class folders (expected root/<class>/<video>)")
    names = folders if classes is None else list(classes)
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise InputError(f"{root}: class folders {unknown} are not among the given classes")
    samples = [
        VideoSample(path, names.index(name))
        for name in folders
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in extensions
    ]
    return names, samples


def read_csv_list(path: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[VideoSample]]:
    """A CSV list with a header ``path,label[,motion]``; paths relative to the CSV's folder.

    Labels are class names or integer ids. Class names come from ``classes``, else from ``labels.json`` next to
    the CSV (what :func:`~vared2.models.synthetic.write_dataset` writes), else from the sorted names in the CSV.
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "path" not in fields or "label" not in fields:
            raise InputError(f"{path}: the header must name the columns path,label[,motion]; got {fields}")
        rows = list(reader)
    if classes is None and (path.parent / "labels.json").is_file():
        classes = json.loads((path.parent / "labels.json").read_text())
    raw = [row["label"] for row in rows]
    numeric = all(v.strip().lstrip("-").isdigit() for v in raw)
    if classes is None:
        classes = [str(i) for i in range(max(map(int, raw), default=-1) + 1)] if numeric else sorted(set(raw))
    classes = list(classes)
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for line, row in enumerate(rows, start=2):
        value = row["label"].strip()
        label = index.get(value, int(value) if numeric else -1)
        if not 0 <= label < len(classes):
            raise InputError(f"{path}:{line}: label {value!r} is not one of the {len(classes)} classes")
        try:
            motion = motion_id((row.get("motion") or "").strip())
        except ValueError as error:
            raise InputError(f"{path}:{line}: {error}") from None
        samples.append(VideoSample(path.parent / row["path"], label, motion))
    return classes, samples


class VideoFolderDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Video files as model input: ``(clip float [3, T, H, W], label, motion id)``.

    ``source`` is a folder ``root/<class>/<video>`` or a CSV list (``path,label[,motion]``). Each video gives
    ``frames`` uniformly sampled frames, resized to ``short_side`` (default ``size``) and centre-cropped to
    ``size``, normalized with ``mean``/``std``. ``cache=True`` keeps the decoded uint8 clips in memory (per
    worker process): the synthetic benchmark at 8×56×56 is ~75 KB a clip.
    """

    def __init__(
        self,
        source: StrPath,
        frames: int = 8,
        size: int = 56,
        *,
        short_side: int | None = None,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        classes: Sequence[str] | None = None,
        cache: bool = False,
    ) -> None:
        _check_input_spec(frames, size, mean, std)
        source = Path(source)
        if not source.exists():
            raise InputNotFoundError(f"{source}: no such dataset folder or CSV file")
        if source.is_dir():
            self.classes, self.samples = scan_folder(source, classes)
        else:
            self.classes, self.samples = read_csv_list(source, classes)
        if not self.samples:
            raise InputError(f"{source}: no videos found")
        self.source = source
        self.frames, self.size, self.short_side = frames, size, short_side
        self.mean, self.std = tuple(mean), tuple(std)
        self.bad: dict[Path, str] = {}
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> np.ndarray:
        """The uint8 ``[T, size, size, 3]`` clip of sample ``index``; raises VideoReadError for a bad video."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        clip = read_clip(self.samples[index].path, self.frames, self.size, self.short_side)
        if self._cache is not None:
            self._cache[index] = clip
        return clip

    def _usable(self, index: int) -> tuple[int, np.ndarray] | None:
        sample = self.samples[index]
        if sample.path in self.bad:
            return None
        try:
            return index, self.load(index)
        except (VideoReadError, OSError) as error:
            reason = error.reason if isinstance(error, VideoReadError) else str(error)
            self.bad[sample.path] = reason
            log.warning("skipping video %s: %s", sample.path, reason)
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        for step in range(len(self)):
            found = self._usable((index + step) % len(self))
            if found is not None:
                sample = self.samples[found[0]]
                return normalize_clip(found[1], self.mean, self.std), sample.label, sample.motion
        raise InputError(f"{self.source}: none of the {len(self)} videos is usable (see the warnings)")

    def validate(self) -> dict[Path, str]:
        """Decode every video now and drop the unusable ones from ``samples``; returns ``{path: reason}``."""
        for index in range(len(self)):
            self._usable(index)
        kept = [(i, s) for i, s in enumerate(self.samples) if s.path not in self.bad]
        if self._cache is not None:
            self._cache = {new: self._cache[old] for new, (old, _) in enumerate(kept) if old in self._cache}
        self.samples = [s for _, s in kept]
        return dict(self.bad)


class ClipListDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """In-memory clips (e.g. :func:`~vared2.models.synthetic.generate` output) with the same preprocessing.

    Each item of ``clips`` is ``(frames uint8 [T, H, W, 3], label, meta)``; ``meta["motion"]`` names the level.
    """

    def __init__(
        self,
        clips: Sequence[tuple[np.ndarray, int, dict[str, Any]]],
        frames: int = 8,
        size: int = 56,
        *,
        short_side: int | None = None,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
    ) -> None:
        _check_input_spec(frames, size, mean, std)
        self.clips = clips
        self.frames, self.size, self.short_side = frames, size, short_side
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        video, label, meta = self.clips[index]
        picked = video[sample_indices(len(video), self.frames)]
        clip = resize_short_side_and_center_crop(picked, self.size, self.short_side)
        return normalize_clip(clip, self.mean, self.std), int(label), motion_id(str(meta.get("motion", "")))
