"""A synthetic video benchmark whose classes need appearance for some decisions and motion for others.

A clip shows one shape (disc, square, triangle, ring) on a textured gradient background with sensor noise.
The class is ``shape × motion``: every shape is static, moves left or moves right. One frame tells the shape; only
time tells static from moving and one direction from the other. Every moving clip is *slow* or *fast* (the motion
level, recorded in the metadata); static clips are temporally redundant, which is the redundancy an adaptive model
exploits.

Every shape takes the same motion patterns on purpose: when each shape had its own (discs slid, squares rose and
fell, triangles turned, rings grew), a moving clip's pattern told its shape, so only static clips had to be
recognised from appearance — and networks with fewer channels failed exactly on the static clips (see
docs/data.md, "Version 2").

Everything is deterministic from the seed (for a given numpy): clip ``i`` of seed ``s`` depends only on ``(s, i)``,
so a smaller set is a prefix of a larger one. See docs/data.md.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vared2.formats.errors import InputError, InputExistsError
from vared2.formats.progress import progress as show_progress
from vared2.formats.video import MAX_FRAMES, MAX_SIZE, StrPath, default_codec, write_video

#: Shape and motion pattern of each class. Names sort in label order, so a ``<class>/`` folder tree of the
#: videos gives the same labels as the CSV files.
CLASS_SPECS: dict[str, tuple[str, str]] = {
    f"{shape}_{name}": (shape, pattern)
    for shape in ("disc", "ring", "square", "triangle")
    for name, pattern in (("moving_left", "left"), ("moving_right", "right"), ("static", "static"))
}
CLASSES: tuple[str, ...] = tuple(sorted(CLASS_SPECS))
assert list(CLASSES) == list(CLASS_SPECS), "CLASS_SPECS must be listed in sorted order"

#: Bumped whenever the same seed would give different clips; recorded in ``dataset.json`` and checkpoints.
GENERATOR_VERSION = 2

#: Motion levels, in the order of their ids (the ``motion`` id a dataset returns).
MOTION_LEVELS: tuple[str, ...] = ("static", "slow", "fast")

# Speed ranges per motion level, in units of the frame size per frame, drawn uniformly per clip.
SPEEDS: dict[str, tuple[float, float]] = {"slow": (0.015, 0.025), "fast": (0.040, 0.055)}
_SIGN = {"left": -1.0, "right": 1.0}

# Shape sizes relative to an equal-area disc of radius r: square half-side and triangle inradius.
_SQUARE_HALF = math.sqrt(math.pi) / 2
_TRIANGLE_INRADIUS = math.sqrt(math.pi / (3 * math.sqrt(3)))


@dataclass(frozen=True)
class SyntheticSpec:
    """What a generated clip looks like. ``noise`` is the range of the per-clip sensor-noise std (0–255 scale)."""

    frames: int = 16
    size: int = 64
    fps: int = 16
    noise: tuple[float, float] = (2.0, 6.0)
    radius: tuple[float, float] = (0.14, 0.20)  # object size (equal-area disc radius), fraction of the frame

    def __post_init__(self) -> None:
        if not 2 <= self.frames <= MAX_FRAMES:
            raise InputError(
                f"SyntheticSpec.frames must be from 2 (motion needs time) to {MAX_FRAMES}, got {self.frames}"
            )
        if not 16 <= self.size <= MAX_SIZE or self.size % 2:
            raise InputError(f"SyntheticSpec.size must be even, from 16 (yuv420p video) to {MAX_SIZE}, got {self.size}")
        if self.fps < 1:
            raise InputError(f"SyntheticSpec.fps must be positive, got {self.fps}")
        if not 0 <= self.noise[0] <= self.noise[1]:
            raise InputError(f"SyntheticSpec.noise must be a range 0 <= low <= high, got {self.noise}")
        if not 0 < self.radius[0] <= self.radius[1] <= 0.2:
            raise InputError(f"SyntheticSpec.radius must be a range within (0, 0.2], got {self.radius}")


class Clip(NamedTuple):
    """One generated clip: RGB uint8 ``[T, H, W, 3]``, its label and its metadata."""

    frames: np.ndarray
    label: int
    meta: dict[str, Any]


def _hsv(rng: np.random.Generator, value: tuple[float, float], saturation: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb) * 255.0


def _background(rng: np.random.Generator, size: int, dark: bool) -> np.ndarray:
    """A static ``[H, W, 3]`` float background: a two-colour gradient plus a low-contrast texture."""
    value = (0.08, 0.38) if dark else (0.62, 0.92)
    c0, c1 = _hsv(rng, value, (0.0, 0.6)), _hsv(rng, value, (0.0, 0.6))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    phi = rng.uniform(0, 2 * math.pi)
    g = (xs - 0.5) * math.cos(phi) + (ys - 0.5) * math.sin(phi)
    g = (g - g.min()) / (g.max() - g.min())
    background = c0 + (c1 - c0) * g[..., None]
    kind = rng.integers(3)
    amplitude = rng.uniform(4.0, 12.0)
    if kind == 0:  # stripes
        cycles, theta = rng.uniform(2.0, 6.0), rng.uniform(0, math.pi)
        texture = np.sin(2 * math.pi * cycles * (xs * math.cos(theta) + ys * math.sin(theta)) + rng.uniform(0, 6.3))
    elif kind == 1:  # smooth blobs: bilinear upsampling of a coarse random grid
        coarse = rng.uniform(-1, 1, (5, 5))
        t = np.linspace(0, 4, size)
        i0 = np.minimum(t.astype(int), 3)
        f = t - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        texture = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    else:  # plain gradient
        texture = np.zeros((size, size))
    return background + amplitude * texture[..., None]


def _trajectory(
    rng: np.random.Generator, spec: SyntheticSpec, motion: str, level: str, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-frame centre ``[T, 2]`` (x, y), angle ``[T]`` (radians, clockwise on screen) and radius ``[T]``."""
    size, steps = spec.size, np.arange(spec.frames, dtype=np.float64)
    speed = 0.0 if motion == "static" else rng.uniform(*SPEEDS[level])
    angle0 = rng.uniform(0, 2 * math.pi)
    margin = radius * 1.2 + 1.0
    centre = rng.uniform(margin, size - margin, 2)
    centres = np.tile(centre, (spec.frames, 1))
    if motion != "static":  # the world wraps around: the object leaves one side, enters the other
        centres[:, 0] = (rng.uniform(0, size) + _SIGN[motion] * speed * size * steps) % size
    return centres, np.full(spec.frames, angle0), np.full(spec.frames, radius), speed


def _alpha(shape: str, size: int, centres: np.ndarray, angles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage ``[T, H, W]`` of the shape, from a signed distance in pixels (periodic image)."""
    grid = np.arange(size, dtype=np.float64) + 0.5
    dx = (grid[None, None, :] - centres[:, 0, None, None] + size / 2) % size - size / 2
    dy = (grid[None, :, None] - centres[:, 1, None, None] + size / 2) % size - size / 2
    r = radii[:, None, None]
    if shape in ("disc", "ring"):
        dist = np.hypot(dx, dy)
        sdf = dist - r if shape == "disc" else np.abs(dist - r) - max(0.75, 0.02 * size)
    else:
        cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        if shape == "square":
            sdf = np.maximum(np.abs(u), np.abs(v)) - _SQUARE_HALF * r
        else:
            edges = [np.cos(a) * u + np.sin(a) * v for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
            sdf = np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - _TRIANGLE_INRADIUS * r
    return np.clip(0.5 - sdf, 0.0, 1.0)


def generate_clip(
    rng: np.random.Generator, spec: SyntheticSpec | None = None, label: int | None = None
) -> tuple[np.ndarray, int, dict[str, Any]]:
    """One clip: RGB uint8 ``[T, H, W, 3]``, its label (drawn from ``rng`` unless given) and its metadata.

    The metadata records the class, shape, motion pattern and level, speed, colour, noise and the per-frame
    centre/angle/radius of the object (what tests check the pixels against).
    """
    spec = spec or SyntheticSpec()
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise InputError(f"label must be in [0, {len(CLASSES)}), got {label}")
    name = CLASSES[label]
    shape, motion = CLASS_SPECS[name]
    level = "static" if motion == "static" else str(rng.choice(["slow", "fast"]))
    dark_background = bool(rng.integers(2))
    background = _background(rng, spec.size, dark_background)
    colour = _hsv(rng, (0.85, 1.0), (0.4, 1.0)) if dark_background else _hsv(rng, (0.05, 0.3), (0.4, 1.0))
    radius = rng.uniform(*spec.radius) * spec.size
    centres, angles, radii, speed = _trajectory(rng, spec, motion, level, radius)
    alpha = _alpha(shape, spec.size, centres, angles, radii)[..., None]
    noise = rng.uniform(*spec.noise)
    video = background[None] * (1 - alpha) + colour * alpha
    if noise > 0:
        video = video + rng.normal(0.0, noise, video.shape)
    frames = np.clip(np.rint(video), 0, 255).astype(np.uint8)
    meta: dict[str, Any] = {
        "class": name,
        "shape": shape,
        "pattern": motion,
        "motion": level,
        "speed": float(speed),
        "colour": [round(float(c), 2) for c in colour],
        "noise": float(noise),
        "center": centres.round(3).tolist(),
        "angle": angles.round(5).tolist(),
        "radius": radii.round(3).tolist(),
    }
    return frames, label, meta


def clip_label(seed: int, index: int) -> int:
    """The label of clip ``index``: each block of ``len(CLASSES)`` clips holds every class once (balanced prefixes)."""
    block, offset = divmod(index, len(CLASSES))
    order = np.random.default_rng([seed, 0, block]).permutation(len(CLASSES))
    return int(order[offset])


def make_clip(seed: int, index: int, spec: SyntheticSpec | None = None) -> Clip:
    """Clip ``index`` of the benchmark with this seed; depends on ``(seed, index)`` only."""
    frames, label, meta = generate_clip(np.random.default_rng([seed, 1, index]), spec, clip_label(seed, index))
    return Clip(frames, label, {"id": index, **meta})


def generate(n: int, seed: int = 0, frames: int = 16, size: int = 64) -> list[Clip]:
    """``n`` clips in memory (for tests and quick experiments)."""
    if n < 0:
        raise InputError(f"n must be non-negative, got {n}")
    spec = SyntheticSpec(frames=frames, size=size)
    return [make_clip(seed, i, spec) for i in range(n)]


def split_ids(labels: list[int], seed: int, val_fraction: float) -> set[int]:
    """The validation clip ids: ``round(val_fraction × len(labels))`` clips, spread evenly over the classes.

    Each class's clips are shuffled by the seed; clips are then taken in order of their rank within their class
    (every class's first, then every class's second, …), so the split is stratified even for tiny sets.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys: list[tuple[float, float, int]] = []
    for label in range(len(CLASSES)):
        ids = [i for i, y in enumerate(labels) if y == label]
        rng = np.random.default_rng([seed, 2, label])
        for rank, k in enumerate(rng.permutation(len(ids))):
            keys.append(((rank + 0.5) / len(ids), float(rng.uniform()), ids[k]))
    return {i for _, _, i in sorted(keys)[: round(val_fraction * len(labels))]}


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    lines = ["path,label,motion", *(",".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")


def write_dataset(
    out_dir: StrPath,
    clips: int = 2000,
    seed: int = 0,
    frames: int = 16,
    size: int = 64,
    val_fraction: float = 0.2,
    *,
    fps: int = 16,
    codec: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the benchmark as MP4 files plus its split, atomically; returns ``out_dir``.

    Layout: ``videos/<class>/<id>.mp4``, ``train.csv`` and ``val.csv`` (``path,label,motion``; paths relative to
    the CSV, label the class name, motion the level), ``labels.json`` (class names in label order) and
    ``dataset.json`` (seed, spec, codec, counts). Everything goes to a temporary sibling directory that is
    renamed to ``out_dir`` when complete, so an interrupted run leaves nothing behind.
    """
    if clips < 1:
        raise InputError(f"clips must be at least 1, got {clips}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputExistsError(f"{out} already exists (--overwrite, or overwrite=True in Python, replaces it)")
    spec = SyntheticSpec(frames=frames, size=size, fps=fps)
    codec = codec or default_codec()
    labels = [clip_label(seed, i) for i in range(clips)]
    val = split_ids(labels, seed, val_fraction)
    if val_fraction > 0 and not val:  # evaluate and bench read val.csv: an empty one fails there, far from the cause
        raise InputError(f"--clips {clips} at --val-fraction {val_fraction} leaves no validation clips; ask for more")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for name in CLASSES:
            (tmp / "videos" / name).mkdir(parents=True)
        rows: dict[str, list[tuple[str, str, str]]] = {"train": [], "val": []}
        counts: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
        for i in show_progress(range(clips), desc=f"synth {out.name}", unit="clip", disable=not progress):
            video, label, meta = make_clip(seed, i, spec)
            relative = f"videos/{CLASSES[label]}/{i:06d}.mp4"
            write_video(tmp / relative, video, fps=fps, codec=codec)
            split = "val" if i in val else "train"
            rows[split].append((relative, CLASSES[label], meta["motion"]))
            counts[split].update([CLASSES[label], f"motion:{meta['motion']}"])
        for split, split_rows in rows.items():
            _write_csv(tmp / f"{split}.csv", split_rows)
        (tmp / "labels.json").write_text(json.dumps(list(CLASSES), indent=2) + "\n")
        summary = {
            "generator": "vared2.models.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "clips": clips,
            "val_fraction": val_fraction,
            "spec": asdict(spec),
            "codec": codec,
            "classes": list(CLASSES),
            "motion_levels": list(MOTION_LEVELS),
            "counts": {
                split: {
                    "clips": len(rows[split]),
                    "classes": {name: counts[split][name] for name in CLASSES},
                    "motion": {level: counts[split][f"motion:{level}"] for level in MOTION_LEVELS},
                }
                for split in ("train", "val")
            },
        }
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():  # overwrite: move the old one aside first, so there is always one complete directory
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
