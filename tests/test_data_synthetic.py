"""The synthetic benchmark: deterministic, balanced, labels consistent with what the pixels show, written atomically."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vared2.formats.video import read_video
from vared2.models import synthetic
from vared2.models.synthetic import CLASS_SPECS, CLASSES, MOTION_LEVELS, SyntheticSpec, generate, generate_clip

NOISELESS = SyntheticSpec(noise=(0.0, 0.0))


def test_generation_is_deterministic_from_the_seed() -> None:
    a, b, c = generate(6, seed=3), generate(6, seed=3), generate(6, seed=4)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.frames, y.frames) and x.label == y.label and x.meta == y.meta
    assert not any(np.array_equal(x.frames, z.frames) for x, z in zip(a, c, strict=True))
    # Clip i depends on (seed, i) only: a smaller set is a prefix of a larger one.
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(generate(3, seed=3), a, strict=False))


def test_shapes_dtypes_and_balanced_labels() -> None:
    clips = generate(2 * len(CLASSES), seed=0, frames=12, size=48)
    assert all(c.frames.shape == (12, 48, 48, 3) and c.frames.dtype == np.uint8 for c in clips)
    assert Counter(c.label for c in clips) == dict.fromkeys(range(len(CLASSES)), 2)
    assert [c.meta["id"] for c in clips] == list(range(len(clips)))
    assert 8 <= len(CLASSES) <= 12 and list(CLASSES) == sorted(CLASSES)


def test_motion_levels_follow_the_class() -> None:
    clips = generate(12 * len(CLASSES), seed=1)
    levels = Counter(c.meta["motion"] for c in clips)
    assert set(levels) == set(MOTION_LEVELS) and min(levels.values()) >= len(clips) // 5
    for clip in clips:
        static = CLASS_SPECS[clip.meta["class"]][1] == "static"
        assert (clip.meta["motion"] == "static") == static
        assert (clip.meta["speed"] == 0.0) == static
    assert synthetic.SPEEDS["slow"][1] < synthetic.SPEEDS["fast"][0]  # every fast clip is faster than every slow one


def test_every_shape_takes_every_motion_pattern() -> None:
    """The motion pattern must not tell the shape, or a network can skip recognising moving shapes."""
    shapes = {shape for shape, _ in CLASS_SPECS.values()}
    patterns = {pattern for _, pattern in CLASS_SPECS.values()}
    assert set(CLASS_SPECS.values()) == {(s, p) for s in shapes for p in patterns}


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_label_matches_the_motion_in_the_metadata(label: int) -> None:
    frames, got, meta = generate_clip(np.random.default_rng(label), NOISELESS, label=label)
    shape, pattern = CLASS_SPECS[CLASSES[label]]
    assert got == label and meta["shape"] == shape and meta["pattern"] == pattern
    centre, angle, radius = np.array(meta["center"]), np.array(meta["angle"]), np.array(meta["radius"])
    size = NOISELESS.size
    step = (np.diff(centre, axis=0) + size / 2) % size - size / 2  # the world wraps around
    assert np.ptp(angle) == 0 and np.ptp(radius) == 0 and np.ptp(step[:, 1]) == 0  # only x changes
    if pattern == "static":
        assert np.ptp(centre, axis=0).max() == 0
        assert all(np.array_equal(frames[0], f) for f in frames)  # without noise, every frame is the same
    else:
        assert np.all(np.sign(step[:, 0]) == {"left": -1, "right": 1}[pattern])
        assert not np.array_equal(frames[0], frames[-1])


def _object_mask(frames: np.ndarray, colour: list[float]) -> np.ndarray:
    """Pixels at least half-covered by the object: nearer its colour than halfway from the background's."""
    pixels = frames.astype(np.float64)
    background = np.median(pixels.reshape(-1, 3), axis=0)  # the object covers a few percent of the frame
    distance = np.linalg.norm(pixels - np.array(colour), axis=-1)
    return distance < 0.5 * np.linalg.norm(background - np.array(colour))


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_pixels_show_the_object_the_metadata_describes(label: int) -> None:
    """The object's pixels sit where the metadata says, with the area of the class's shape."""
    frames, _, meta = generate_clip(np.random.default_rng(100 + label), NOISELESS, label=label)
    size = NOISELESS.size
    mask = _object_mask(frames, meta["colour"])
    for t in range(len(frames)):
        ys, xs = np.nonzero(mask[t])
        assert len(xs) > 10, f"frame {t}: object not visible"
        for axis, coords in ((0, xs), (1, ys)):  # circular mean: objects may straddle the wrapped edge
            phase = np.angle(np.exp(2j * math.pi * (coords + 0.5) / size).mean())
            found = (phase % (2 * math.pi)) * size / (2 * math.pi)
            error = (found - meta["center"][t][axis] + size / 2) % size - size / 2
            assert abs(error) < 1.0, f"frame {t}: object centre off by {error:.2f} px"
        r = meta["radius"][t]
        area = {
            "disc": math.pi * r**2,
            "square": math.pi * r**2,  # squares and triangles have the area of the disc: size is no cue
            "triangle": math.pi * r**2,
            "ring": 2 * math.pi * r * 2 * max(0.75, 0.02 * size),
        }[meta["shape"]]
        assert len(xs) == pytest.approx(area, rel=0.2)


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="size"):
        SyntheticSpec(size=63)
    with pytest.raises(ValueError, match="frames"):
        SyntheticSpec(frames=1)
    with pytest.raises(ValueError, match=r"size must be even, from 16 \(yuv420p video\) to 2048, got 100000"):
        SyntheticSpec(size=100_000)  # a typo is named, not an out-of-memory traceback from numpy
    with pytest.raises(ValueError, match=r"frames must be from 2 .* to 1024, got 5000"):
        SyntheticSpec(frames=5000)
    with pytest.raises(ValueError, match="label"):
        generate_clip(np.random.default_rng(0), label=len(CLASSES))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_write_dataset_layout(tmp_path: Path) -> None:
    out = synthetic.write_dataset(tmp_path / "synth", clips=30, seed=5, frames=8, size=32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no temporary directory left
    assert json.loads((out / "labels.json").read_text()) == list(CLASSES)
    info = json.loads((out / "dataset.json").read_text())
    assert info["seed"] == 5 and info["clips"] == 30 and info["spec"]["frames"] == 8
    train, val = _csv_rows(out / "train.csv"), _csv_rows(out / "val.csv")
    assert len(train) + len(val) == 30 and len(val) == info["counts"]["val"]["clips"] == 6
    assert sum(info["counts"]["train"]["motion"].values()) == len(train)
    expected = generate(30, seed=5, frames=8, size=32)
    for row in train + val:
        clip = expected[int(Path(row["path"]).stem)]
        assert row["label"] == CLASSES[clip.label] == Path(row["path"]).parent.name
        assert row["motion"] == clip.meta["motion"]
    videos = sorted((out / "videos").rglob("*.mp4"))
    assert len(videos) == 30
    decoded = read_video(videos[0])
    original = expected[int(videos[0].stem)].frames
    assert decoded.shape == original.shape
    # The codec smooths part of the sensor noise (std up to 6) and halves the chroma resolution, nothing more.
    assert np.abs(decoded.astype(np.float64) - original).mean() < 8.0


def test_validation_split_is_stratified_and_exact() -> None:
    labels = [synthetic.clip_label(0, i) for i in range(10 * len(CLASSES))]
    val = synthetic.split_ids(labels, seed=0, val_fraction=0.2)
    assert len(val) == 2 * len(CLASSES)
    assert Counter(labels[i] for i in val) == dict.fromkeys(range(len(CLASSES)), 2)
    assert val == synthetic.split_ids(labels, seed=0, val_fraction=0.2) != synthetic.split_ids(labels, 1, 0.2)
    assert synthetic.split_ids(labels, seed=0, val_fraction=0.0) == set()


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = synthetic.write_video
    written: list[Path] = []

    def failing_write(path: Path, frames: np.ndarray, fps: int = 16, codec: str | None = None) -> None:
        if len(written) == 5:
            raise KeyboardInterrupt  # e.g. Ctrl-C halfway through
        real_write(path, frames, fps=fps, codec=codec)
        written.append(path)

    monkeypatch.setattr(synthetic, "write_video", failing_write)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_dataset(tmp_path / "synth", clips=12, frames=4, size=32, progress=False)
    assert len(written) == 5 and not written[0].exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    synthetic.write_dataset(out, clips=3, seed=1, frames=4, size=32, progress=False)
    with pytest.raises(FileExistsError, match="synth"):
        synthetic.write_dataset(out, clips=3, frames=4, size=32, progress=False)
    with pytest.raises(ValueError, match=r"--clips 1 at --val-fraction 0\.2 leaves no validation clips"):
        synthetic.write_dataset(tmp_path / "one", clips=1, frames=4, size=32, progress=False)
    synthetic.write_dataset(out, clips=4, seed=2, frames=4, size=32, progress=False, overwrite=True)
    assert json.loads((out / "dataset.json").read_text())["clips"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]
