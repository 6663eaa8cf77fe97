"""VideoFolderDataset on real MP4 files written by the generator: CSV and folder layouts, shapes, normalization,
bad videos skipped with a warning naming them; and the in-memory ClipListDataset."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vared2.formats.errors import InputError
from vared2.formats.video import read_clip, write_video
from vared2.models.dataset import (
    KINETICS_MEAN,
    KINETICS_STD,
    ClipListDataset,
    VideoFolderDataset,
    normalize_clip,
)
from vared2.models.synthetic import CLASSES, MOTION_LEVELS, generate, write_dataset

CLIPS = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "synth", clips=CLIPS, seed=7, progress=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_split_gives_normalized_clips_with_labels_and_motion(data_dir: Path) -> None:
    train = VideoFolderDataset(data_dir / "train.csv", frames=8, size=56)
    val = VideoFolderDataset(data_dir / "val.csv", frames=8, size=56)
    assert len(train) + len(val) == CLIPS and train.classes == val.classes == list(CLASSES)
    rows = _rows(data_dir / "train.csv")
    for i in (0, len(train) - 1):
        clip, label, motion = train[i]
        assert clip.shape == (3, 8, 56, 56) and clip.dtype == torch.float32
        assert CLASSES[label] == rows[i]["label"] and MOTION_LEVELS[motion] == rows[i]["motion"]
        # The normalization is (x / 255 - mean) / std of the decoded, sampled, resized clip.
        raw = read_clip(data_dir / rows[i]["path"], 8, 56)
        mean, std = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1), torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
        expected = (torch.from_numpy(raw).permute(3, 0, 1, 2).float() / 255 - mean) / std
        torch.testing.assert_close(clip, expected)
        assert clip[2, 3, 10, 20].item() == pytest.approx((raw[3, 10, 20, 2] / 255 - 0.37645) / 0.216989, abs=1e-5)


def test_decoded_files_match_the_in_memory_clips(data_dir: Path) -> None:
    """The file path and the in-memory path give the same input up to the codec's small error."""
    files = VideoFolderDataset(data_dir / "train.csv", frames=8, size=56)
    memory = ClipListDataset(generate(CLIPS, seed=7), frames=8, size=56)
    ids = [int(Path(row["path"]).stem) for row in _rows(data_dir / "train.csv")]
    for i in range(3):
        a, label_a, motion_a = files[i]
        b, label_b, motion_b = memory[ids[i]]
        assert (label_a, motion_a) == (label_b, motion_b)
        assert (a - b).abs().mean().item() < 0.1  # ≈ 5/255 over std 0.22: the encoder smooths some noise
        assert (a - b).abs().mean().item() < (a - memory[ids[i] - 1 if ids[i] else 1][0]).abs().mean().item()


def test_folder_layout_uses_sorted_class_folders(data_dir: Path) -> None:
    folder = VideoFolderDataset(data_dir / "videos", frames=4, size=32)
    assert folder.classes == list(CLASSES) and len(folder) == CLIPS
    clip, label, motion = folder[5]
    assert clip.shape == (3, 4, 32, 32) and motion == -1  # a plain folder knows no motion level
    assert folder.samples[5].path.parent.name == CLASSES[label]


def test_custom_mean_std_short_side_and_dataloader(data_dir: Path) -> None:
    ds = VideoFolderDataset(data_dir / "val.csv", frames=8, size=48, short_side=64, mean=(0, 0, 0), std=(1, 1, 1))
    clips, labels, motions = next(iter(DataLoader(ds, batch_size=2)))
    assert clips.shape == (2, 3, 8, 48, 48) and labels.dtype == torch.int64 and motions.shape == (2,)
    assert clips.min().item() >= 0.0 and clips.max().item() <= 1.0


def _folder_with_bad_videos(data_dir: Path, root: Path) -> tuple[Path, list[Path]]:
    for name in ("disc_static", "ring_static"):
        shutil.copytree(data_dir / "videos" / name, root / name)
    good = sorted((root / "disc_static").glob("*.mp4"))[0]
    garbage = root / "disc_static" / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated = root / "disc_static" / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    short = root / "ring_static" / "short.mp4"
    write_video(short, np.zeros((4, 64, 64, 3), np.uint8))
    return root, [garbage, truncated, short]


def test_bad_videos_are_skipped_with_a_warning_naming_them(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, bad = _folder_with_bad_videos(data_dir, tmp_path / "videos")
    ds = VideoFolderDataset(root, frames=8, size=32)
    with caplog.at_level(logging.WARNING, logger="vared2.models.dataset"):
        items = [ds[i] for i in range(len(ds))]  # a whole epoch: no exception
    assert len(items) == len(ds) and all(clip.shape == (3, 8, 32, 32) for clip, _, _ in items)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for path in bad:
        assert str(path) in messages
    assert "too short: 4 frames, 8 needed" in messages
    assert set(ds.bad) == set(bad)
    # Each bad file is reported once, not once per epoch.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vared2.models.dataset"):
        _ = [ds[i] for i in range(len(ds))]
    assert not caplog.records


def test_validate_drops_bad_videos_up_front(data_dir: Path, tmp_path: Path) -> None:
    root, bad = _folder_with_bad_videos(data_dir, tmp_path / "videos")
    ds = VideoFolderDataset(root, frames=8, size=32, cache=True)
    total = len(ds)
    problems = ds.validate()
    assert set(problems) == set(bad) and len(ds) == total - len(bad)
    assert all(s.path not in problems for s in ds.samples)


def test_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="none of the 1 videos"):
        VideoFolderDataset(tmp_path, frames=2, size=16)[0]


def test_cache_keeps_decoded_clips(data_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(data_dir, tmp_path / "copy")
    ds = VideoFolderDataset(tmp_path / "copy" / "val.csv", frames=8, size=56, cache=True)
    first = ds[0][0]
    ds.samples[0].path.unlink()  # served from memory now
    torch.testing.assert_close(ds[0][0], first)
    assert not ds.bad


def test_csv_with_integer_labels_and_no_motion_column(data_dir: Path, tmp_path: Path) -> None:
    rows = _rows(data_dir / "train.csv")[:3]
    listing = tmp_path / "list.csv"
    lines = ["path,label"] + [f"{(data_dir / r['path']).resolve()},{CLASSES.index(r['label'])}" for r in rows]
    listing.write_text("\n".join(lines) + "\n")
    ds = VideoFolderDataset(listing, frames=8, size=32)
    assert [s.label for s in ds.samples] == [CLASSES.index(r["label"]) for r in rows]
    assert ds[0][2] == -1


def test_bad_sources_raise_clear_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolderDataset(tmp_path / "nowhere")
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("file,class\nx.mp4,0\n")
    with pytest.raises(ValueError, match="path,label"):
        VideoFolderDataset(bad_header)
    bad_label = tmp_path / "labels.csv"
    bad_label.write_text("path,label\nx.mp4,not_a_class\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: label 'not_a_class'"):
        VideoFolderDataset(bad_label, classes=CLASSES)
    bad_motion = tmp_path / "motion.csv"
    bad_motion.write_text("path,label,motion\nx.mp4,0,medium\n")
    with pytest.raises(ValueError, match=r"motion\.csv:2: unknown motion level 'medium'"):
        VideoFolderDataset(bad_motion)
    with pytest.raises(ValueError, match="not among the given classes"):
        VideoFolderDataset(data_dir / "videos", classes=["disc_static"])
    with pytest.raises(ValueError, match="std"):
        VideoFolderDataset(data_dir / "videos", std=(1, 0, 1))


def test_in_memory_dataset() -> None:
    clips = generate(4, seed=2, frames=16, size=64)
    ds = ClipListDataset(clips, frames=8, size=64)
    clip, label, motion = ds[1]
    assert len(ds) == 4 and clip.shape == (3, 8, 64, 64) and label == clips[1].label
    assert MOTION_LEVELS[motion] == clips[1].meta["motion"]
    # Frames 1, 3, …, 15 of the clip; at the same size the resize is the identity.
    torch.testing.assert_close(clip, normalize_clip(clips[1].frames[1::2]))
