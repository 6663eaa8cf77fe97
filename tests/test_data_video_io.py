"""Video I/O helpers: real MP4 files through PyAV, uniform sampling, the resize contract, errors naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest

from vared2.formats.video import (
    INTERPOLATION,
    VideoNotFoundError,
    VideoReadError,
    decode_frames,
    default_codec,
    read_clip,
    read_video,
    resize_short_side_and_center_crop,
    sample_indices,
    write_video,
)
from vared2.models.synthetic import SyntheticSpec, generate_clip


def _clip(frames: int = 16, size: int = 64) -> np.ndarray:
    video, _, _ = generate_clip(np.random.default_rng(0), SyntheticSpec(frames=frames, size=size, noise=(0, 0)), 1)
    return video


STREAM_CODEC = {"libx264": "h264", "mpeg4": "mpeg4"}  # encoder → the stream's codec name


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_write_then_read_round_trip(tmp_path: Path, codec: str) -> None:
    if codec == "libx264" and default_codec() != "libx264":
        pytest.skip("this PyAV build has no libx264 encoder")
    video = _clip()
    path = tmp_path / "clip.mp4"
    write_video(path, video, codec=codec)
    decoded = read_video(path)
    assert decoded.shape == video.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(np.float64) - video).mean() < 3.0  # near-lossless
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == STREAM_CODEC[codec]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_writing_is_deterministic(tmp_path: Path, codec: str) -> None:
    """The same frames give the same file, whatever was encoded before (x264's mbtree broke this)."""
    if codec == "libx264" and default_codec() != "libx264":
        pytest.skip("this PyAV build has no libx264 encoder")
    videos = [generate_clip(np.random.default_rng(i), SyntheticSpec(frames=16, size=64))[0] for i in range(3)]
    first = []
    for i, video in enumerate(videos):
        write_video(tmp_path / f"{i}.mp4", video, codec=codec)
        first.append((tmp_path / f"{i}.mp4").read_bytes())
    with av.open(str(tmp_path / "0.mp4")) as container:
        assert container.streams.video[0].codec_context.name == STREAM_CODEC[codec]
    for i in (2, 0, 1, 0):
        write_video(tmp_path / "again.mp4", videos[i], codec=codec)
        assert (tmp_path / "again.mp4").read_bytes() == first[i]


def test_write_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 33, 32, 3), np.uint8))


def test_sample_indices_are_uniform_and_deterministic() -> None:
    assert sample_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(300, 4) == [37, 112, 187, 262]
    for n, t in [(17, 8), (9, 3), (100, 16)]:
        idx = sample_indices(n, t)
        assert len(idx) == t and idx == sorted(set(idx)) and idx[0] >= 0 and idx[-1] < n
    with pytest.raises(ValueError, match="5 frames"):
        sample_indices(5, 8)
    with pytest.raises(ValueError, match="at least 1"):
        sample_indices(5, 0)


def test_resize_is_the_documented_pyav_call_then_a_centre_crop() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    out = resize_short_side_and_center_crop(frames, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    # Short side 48 → 32, long side 80 → 53 (rounded down); crop columns 10..42.
    expected = av.VideoFrame.from_ndarray(frames[1], format="rgb24").reformat(
        width=53, height=32, format="rgb24", interpolation=INTERPOLATION
    )
    assert np.array_equal(out[1], expected.to_ndarray()[:, 10:42])
    # short_side > size: resize to 40 first, then crop the centre 32 × 32.
    assert resize_short_side_and_center_crop(frames, 32, short_side=40).shape == (2, 32, 32, 3)
    # A portrait frame crops rows instead of columns.
    assert resize_short_side_and_center_crop(frames.transpose(0, 2, 1, 3).copy(), 24).shape == (2, 24, 24, 3)


def test_resize_of_decoded_frames_matches_read_clip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, _clip())
    decoded = decode_frames(path)
    clip = read_clip(path, frames=8, size=56)
    assert clip.shape == (8, 56, 56, 3)
    assert np.array_equal(clip, resize_short_side_and_center_crop([decoded[i] for i in range(1, 16, 2)], 56))


def test_resize_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        resize_short_side_and_center_crop(np.zeros((1, 8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        resize_short_side_and_center_crop(np.zeros((8, 8, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="short_side"):
        resize_short_side_and_center_crop(np.zeros((1, 8, 8, 3), np.uint8), 8, short_side=4)


def test_unusable_files_raise_errors_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, _clip(frames=6, size=32))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    for path in (garbage, truncated, text):
        with pytest.raises(VideoReadError, match=re.escape(path.name)) as info:
            read_video(path)
        assert info.value.path == path
    with pytest.raises(VideoReadError, match="too short: 6 frames, 8 needed"):
        read_clip(good, frames=8, size=32)
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4") as missing:
        read_video(tmp_path / "missing.mp4")
    assert isinstance(missing.value, VideoNotFoundError) and isinstance(missing.value, ValueError)


def test_audio_only_file_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video(path)
