"""``Runtime.stream`` and ``runtime.infer`` on real MP4 files written with PyAV: windows, timestamps, the training
preprocessing, and what unreadable, truncated and corrupted files do."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from fractions import Fraction
from io import StringIO
from pathlib import Path

import av
import numpy as np
import pytest
from test_runtime_models import FRAMES, SIZE, build_engine_dir

from vared2.runtime import Result, Runtime, StreamDecodeError, VideoError, VideoOpenError
from vared2.runtime.infer import infer
from vared2.runtime.video import decode, prepare_frame

FPS = 8
NUM_FRAMES = 40
HEIGHT, WIDTH = 48, 64  # short side 48 → resized to the manifest's short_side (10), cropped to 8


def write_mp4(path: Path, num_frames: int = NUM_FRAMES, faststart: bool = False) -> Path:
    """A real MPEG-4 Part 2 video: a moving gradient plus noise (so every frame differs)."""
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("mpeg4", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"flags": "+qscale", "global_quality": str(2 * 118), "g": "8"}  # high quality, GOP of 8
        y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
        for i in range(num_frames):
            base = np.stack([(x * 4 + i * 9) % 256, (y * 5 + i * 3) % 256, (x + y + i * 17) % 256], axis=-1)
            rgb = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    directory = tmp_path_factory.mktemp("engines") / "toy"
    build_engine_dir(directory)
    return Runtime.open(directory, threads=1)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("videos") / "clip.mp4")


def prepared_frames(path: Path) -> np.ndarray:
    """Every frame decoded independently of the runtime's decoder, prepared with the runtime's function."""
    with av.open(str(path)) as container:
        return np.stack([prepare_frame(f, SIZE, 10) for f in container.decode(video=0)])


def test_windows_timestamps_and_results_match_classify(runtime: Runtime, video: Path) -> None:
    results = list(runtime.stream(video, stride=3))
    starts = list(range(0, NUM_FRAMES - FRAMES + 1, 3))
    assert [r.window for r in results] == [(s, s + FRAMES) for s in starts]
    for r, s in zip(results, starts, strict=True):
        assert r.start == pytest.approx(s / FPS) and r.end == pytest.approx((s + FRAMES) / FPS)
        assert r.source == str(video)
    frames = prepared_frames(video)
    expected = runtime.classify(np.stack([frames[s : s + FRAMES] for s in starts]))
    assert isinstance(expected, list)
    for got, want in zip(results, expected, strict=True):
        assert replace(got, source=None, start_frame=None, end_frame=None, start=None, end=None) == want
        np.testing.assert_array_equal(got.probabilities, want.probabilities)


def test_frame_preparation_is_the_training_one(video: Path) -> None:
    video_io = pytest.importorskip("vared2.formats.video")
    training = video_io.resize_short_side_and_center_crop(video_io.decode_frames(video), SIZE, 10)
    np.testing.assert_array_equal(prepared_frames(video), training)
    runtime_frames = np.stack([f.rgb for f in decode(video, SIZE, 10)])
    np.testing.assert_array_equal(runtime_frames, training)


def test_missing_and_non_video_files(runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such video file"):
        runtime.stream(tmp_path / "absent.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 200)
    results: list[Result] = []
    with pytest.raises(VideoOpenError, match=r"notes\.mp4: cannot open it as a video"):
        results.extend(runtime.stream(text))
    assert results == []


def test_truncated_mp4_fails_before_any_result(runtime: Runtime, video: Path, tmp_path: Path) -> None:
    for faststart in (False, True):  # moov atom at the end (unopenable) or at the front (data cut short)
        source = write_mp4(tmp_path / f"full_{faststart}.mp4", faststart=faststart)
        cut = tmp_path / f"cut_{faststart}.mp4"
        data = source.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        results: list[Result] = []
        with pytest.raises(VideoOpenError, match=r"cut_.*\.mp4: (cannot open|truncated: the header promises 40)"):
            results.extend(runtime.stream(cut))
        assert results == []


def test_truncated_mp4_with_stop_yields_the_windows_it_holds(runtime: Runtime, tmp_path: Path) -> None:
    source = write_mp4(tmp_path / "fast.mp4", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(source.read_bytes()[: len(source.read_bytes()) // 2])
    full = list(runtime.stream(source, stride=2))
    partial = list(runtime.stream(cut, stride=2, on_error="stop"))
    assert 0 < len(partial) < len(full)
    assert [r.window for r in partial] == [r.window for r in full[: len(partial)]]
    # FFmpeg decodes the packet cut in half into a damaged last frame; the windows before it are intact.
    assert unsourced(partial[:-1]) == unsourced(full[: len(partial) - 1])


def unsourced(results: list[Result]) -> list[Result]:
    return [replace(r, source=None) for r in results]


def corrupt(source: Path, target: Path) -> Path:
    """Overwrite a run of bytes in the middle of the media data (the index at the end stays intact)."""
    data = bytearray(source.read_bytes())
    start, length = len(data) * 3 // 10, len(data) // 20
    data[start : start + length] = np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def test_decode_error_mid_stream_raise_stop_skip(runtime: Runtime, video: Path, tmp_path: Path) -> None:
    bad = corrupt(video, tmp_path / "corrupt.mp4")
    clean = list(runtime.stream(video, stride=1))

    seen: list[Result] = []
    with pytest.raises(StreamDecodeError, match=r"corrupt\.mp4: decode error at frame \d+ \(\d+\.\d+ s\)") as info:
        seen.extend(runtime.stream(bad, stride=1))
    position = info.value.frame_index
    assert 0 < position < NUM_FRAMES and info.value.seconds == pytest.approx(position / FPS)
    assert [r.window for r in seen] == [(s, s + FRAMES) for s in range(0, position - FRAMES + 1)]
    # FFmpeg conceals some damage silently before it reports an error, so only the windows well before the
    # corrupted bytes are guaranteed intact.
    assert unsourced(seen[:2]) == unsourced(clean[:2])

    stopped = list(runtime.stream(bad, stride=1, on_error="stop"))
    assert stopped == seen

    skipped = list(runtime.stream(bad, stride=1, on_error="skip"))
    assert skipped[: len(seen)] == seen and len(skipped) > len(seen)
    # No window spans the gap: after it, windows restart at the first frame decoded again.
    after = skipped[len(seen) :]
    assert all(r.start_frame is not None and r.start_frame >= position for r in after)
    assert all(r.start is not None and r.start > seen[-1].start for r in after)


def test_a_video_shorter_than_a_window(runtime: Runtime, tmp_path: Path) -> None:
    short = write_mp4(tmp_path / "short.mp4", num_frames=FRAMES - 1)
    with pytest.raises(VideoError, match=r"short\.mp4: too short: no window of 4 consecutive frames"):
        list(runtime.stream(short))


def test_bad_stream_arguments(runtime: Runtime, video: Path) -> None:
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        runtime.stream(video, stride=0)
    with pytest.raises(ValueError, match="on_error must be one of raise, skip, stop"):
        runtime.stream(video, on_error="ignore")  # type: ignore[arg-type]


def test_infer_table_and_json_lines(runtime: Runtime, video: Path, tmp_path: Path) -> None:
    engine_dir = runtime.directory
    table = StringIO()
    assert infer(engine_dir, [video], stride=8, as_json=False, out=table) == 5
    lines = table.getvalue().splitlines()
    assert lines[0].split()[:3] == ["video", "start", "s"] and len(lines) == 6
    assert lines[1].startswith(str(video)) and " 0-4 " in lines[1]
    jsonl = StringIO()
    infer(engine_dir, [video], stride=8, as_json=True, out=jsonl)
    records = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    expected = list(runtime.stream(video, stride=8))
    assert [(r["start_frame"], r["label"], r["bucket"]) for r in records] == [
        (e.start_frame, e.label, e.bucket) for e in expected
    ]
    assert set(records[0]) >= {"label", "score", "topk", "bucket", "bucket_name", "gflops", "timings_ms", "start"}


def test_infer_checks_every_video_before_printing(runtime: Runtime, video: Path, tmp_path: Path) -> None:
    out = StringIO()
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4"):
        infer(runtime.directory, [video, tmp_path / "missing.mp4"], stride=8, as_json=True, out=out)
    assert out.getvalue() == ""
    bad = tmp_path / "bad.mp4"
    shutil.copy(video, bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(VideoOpenError):
        infer(runtime.directory, [bad], stride=8, as_json=True, out=out)
    assert out.getvalue() == ""
    # The table's header waits for the first window; bad arguments and directories fail before the engines load.
    not_a_video = tmp_path / "not_a_video.mp4"
    not_a_video.write_bytes(b"not a video")
    with pytest.raises(VideoOpenError, match=r"not_a_video\.mp4"):
        infer(runtime.directory, [not_a_video], stride=8, as_json=False, out=out)
    with pytest.raises(IsADirectoryError, match="a directory, not a video file"):
        infer(runtime.directory, [tmp_path], stride=8, as_json=False, out=out)
    with pytest.raises(ValueError, match="--stride: expected a positive number of frames, got 0"):
        infer(tmp_path / "no_engines", [video], stride=0, as_json=False, out=out)
    assert out.getvalue() == ""
