"""Video files with PyAV, and the model's input contract that training and the runtime share (numpy and av only).

A clip is ``frames`` frames sampled uniformly (:func:`sample_indices`), each resized so its short side is
``short_side`` and centre-cropped to ``size × size`` by :func:`prepare_frame`: one PyAV ``reformat`` call on the
*decoded* frame, with swscale's ``BITEXACT | ACCURATE_RND`` flags so the result is the same on every CPU. Training
(``vared2.models``) and the runtime's stream decoder (``vared2.runtime.video``) both prepare frames with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

from .errors import InputError, InputTypeError

#: The largest clip a model, a dataset or the synthetic generator accepts: generous for video models (they take
#: 8–64 frames of 112–320 pixels), and a typo such as ``--size 100000`` is named instead of failing inside numpy
#: or FFmpeg.
MAX_FRAMES = 1024
MAX_SIZE = 2048

#: swscale flags of every resize: bilinear, and bit-exact across CPUs (x86 training host, ARM edge device).
INTERPOLATION: int = int(Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT)

#: File name endings treated as videos when scanning a folder.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")

StrPath = str | os.PathLike[str]


class VideoReadError(InputError):
    """A video that cannot be used: unreadable, not a video, no frames, or too few frames. Carries the path."""

    def __init__(self, path: StrPath, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


class VideoNotFoundError(VideoReadError, FileNotFoundError):
    """The video file does not exist (both a :class:`VideoReadError` and a :class:`FileNotFoundError`)."""


def decode_frames(path: StrPath) -> list[av.VideoFrame]:
    """All frames of the first video stream, as decoded (usually YUV), in presentation order.

    Keeping the decoded frames lets the resize work on the decoder's own pixels, exactly as a runtime that
    decodes with PyAV would. Raises :class:`VideoReadError` naming the file for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(path, "no such file")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VideoReadError(path, "not a video (the file has no video stream)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = list(container.decode(stream))
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as error:
        raise VideoReadError(path, f"unreadable ({type(error).__name__}: {error})") from error
    if not frames:
        raise VideoReadError(path, "the video has no decodable frames")
    return frames


def read_video(path: StrPath) -> np.ndarray:
    """Every frame of a video as RGB uint8 ``[T, H, W, 3]``."""
    return np.stack([frame.to_ndarray(format="rgb24") for frame in decode_frames(path)])


def sample_indices(num_frames: int, frames: int) -> list[int]:
    """``frames`` indices spread uniformly over ``num_frames``: the centre of each of ``frames`` equal segments.

    Deterministic (evaluation and deployment see the same frames). 16 → 8 gives 1, 3, …, 15.
    """
    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    if num_frames < frames:
        raise InputError(f"cannot sample {frames} distinct frames from a video of {num_frames} frames")
    return [int((2 * i + 1) * num_frames // (2 * frames)) for i in range(frames)]


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` after scaling the short side to ``short_side`` (long side rounded down, as torchvision)."""
    if height < 1 or width < 1:
        raise InputError(f"frame size must be positive, got {height}x{width}")
    if height <= width:
        return short_side, max(short_side, width * short_side // height)
    return max(short_side, height * short_side // width), short_side


def prepare_frame(frame: av.VideoFrame, size: int, short_side: int) -> np.ndarray:
    """One decoded frame → the model's RGB uint8 ``[size, size, 3]``: resize the short side, centre crop."""
    height, width = resized_shape(frame.height, frame.width, short_side)
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation=INTERPOLATION).to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return rgb[top : top + size, left : left + size]


def resize_short_side_and_center_crop(
    frames: np.ndarray | Sequence[av.VideoFrame], size: int, short_side: int | None = None
) -> np.ndarray:
    """Resize each frame so its short side is ``short_side`` (default ``size``), then centre-crop ``size × size``.

    ``frames`` is RGB uint8 ``[T, H, W, 3]`` or a sequence of decoded ``av.VideoFrame``; the result is RGB uint8
    ``[T, size, size, 3]``. The crop offset is ``(H - size) // 2`` (and likewise for W).
    """
    short_side = size if short_side is None else short_side
    if size < 1 or short_side < size:
        raise InputError(f"need 1 <= size <= short_side, got size={size}, short_side={short_side}")
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise InputTypeError(f"frames must be uint8, got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"frames must have shape [T, H, W, 3], got {list(frames.shape)}")
        av_frames: Sequence[av.VideoFrame] = [
            av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24") for f in frames
        ]
    else:
        av_frames = frames
    if len(av_frames) == 0:
        raise InputError("no frames to resize")
    return np.stack([prepare_frame(frame, size, short_side) for frame in av_frames])


def read_clip(path: StrPath, frames: int, size: int, short_side: int | None = None) -> np.ndarray:
    """The model input of one video: ``frames`` uniformly sampled frames, resized and cropped, uint8 ``[T,S,S,3]``.

    A video with fewer than ``frames`` frames raises :class:`VideoReadError` (it is not padded by repetition).
    """
    decoded = decode_frames(path)
    if len(decoded) < frames:
        raise VideoReadError(path, f"too short: {len(decoded)} frames, {frames} needed")
    picked = [decoded[i] for i in sample_indices(len(decoded), frames)]
    return resize_short_side_and_center_crop(picked, size, short_side)


def default_codec() -> str:
    """``libx264`` when this PyAV build can encode H.264, else ``mpeg4`` (every FFmpeg build has it)."""
    try:
        av.Codec("libx264", "w")
    except (av.FFmpegError, ValueError):
        return "mpeg4"
    return "libx264"


def write_video(path: StrPath, frames: np.ndarray, fps: int = 16, codec: str | None = None) -> None:
    """Write RGB uint8 ``[T, H, W, 3]`` as an MP4 file, near-lossless: H.264 at CRF 17, or MPEG-4 at qscale 2.

    Single-threaded, without x264's macroblock tree, so the same frames give the same bytes. H and W must be even
    (yuv420p).
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise InputTypeError(f"frames must be a uint8 numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputError(f"frames must have shape [T>0, H, W, 3], got {list(frames.shape)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise InputError(f"{os.fspath(path)}: H.264/MPEG-4 in yuv420p need an even frame size, got {height}x{width}")
    codec = codec or default_codec()
    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        if not isinstance(stream, av.VideoStream):
            raise InputError(f"{codec!r} is not a video codec")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # x264's macroblock-tree rate control gave run-to-run different pixels on these tiny frames (measured:
            # the same clip, encoded after other clips, decoded differently 19 times in 20); without it, never.
            stream.options = {"crf": "17", "preset": "medium", "x264-params": "mbtree=0"}
        else:
            stream.options = {"flags": "+qscale", "global_quality": str(2 * 118)}  # -q:v 2 (FF_QP2LAMBDA = 118)
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode(None))
