"""Video input for ``Runtime.stream``: decode files and network streams with PyAV, prepare frames exactly as the
model was trained (``vared2.formats.video.prepare_frame``, the preprocessing training uses), and cut sliding windows.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from vared2.formats.errors import InputError, InputNotFoundError
from vared2.formats.video import prepare_frame, resized_shape

from .errors import StreamDecodeError, VideoError, VideoOpenError

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip", "stop"]
ON_ERROR = ("raise", "skip", "stop")

#: After this many decode failures in a row, ``on_error="skip"`` gives up on the source and stops.
MAX_CONSECUTIVE_ERRORS = 16

#: Seconds a source may take to open, and to deliver each read, before it counts as stalled (``av.open``'s timeout).
DEFAULT_TIMEOUT = 10.0


def check_timeout(timeout: float | None) -> None:
    """A timeout is None (wait forever) or a positive, finite number of seconds."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
        raise InputError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


@dataclass(frozen=True)
class Frame:
    """A prepared frame. ``index`` counts decoded frames; ``after_gap`` marks the first frame after skipped data."""

    index: int
    time: float
    duration: float
    rgb: np.ndarray
    after_gap: bool = False


@dataclass(frozen=True)
class Window:
    """``frames`` consecutive prepared frames ``[start_frame, end_frame)``, from ``start`` to ``end`` seconds."""

    clip: np.ndarray
    start_frame: int
    end_frame: int
    start: float
    end: float


def is_url(source: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(source)


def _open(source: str, options: Mapping[str, str] | None, timeout: float | None) -> av.container.InputContainer:
    if not is_url(source):
        path = Path(source)
        if not path.exists():
            raise InputNotFoundError(f"{source}: no such video file")
        if not path.is_file():
            raise VideoOpenError(source, "not a regular file")
    try:
        return av.open(source, mode="r", options=dict(options or {}), timeout=timeout)
    except av.ExitError as error:  # PyAV's interrupt callback: the timeout passed
        raise VideoOpenError(source, f"no answer within {timeout} s (the timeout)") from error
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as error:
        raise VideoOpenError(source, f"cannot open it as a video ({type(error).__name__}: {error})") from error


def _check_complete(source: str, options: Mapping[str, str] | None, timeout: float | None) -> None:
    """Demux a local file once without decoding (fast) and compare the packets with the frame count its header
    promises, so a truncated file fails before the first result instead of after the last one it holds."""
    with _open(source, options, timeout) as container:
        if not container.streams.video:
            raise VideoOpenError(source, "not a video (no video stream)")
        stream = container.streams.video[0]
        expected = stream.frames
        try:
            packets = sum(1 for packet in container.demux(stream) if packet.size > 0)
        except (av.FFmpegError, OSError) as error:
            raise VideoOpenError(source, f"unreadable ({type(error).__name__}: {error})") from error
        if expected and packets < expected:
            raise VideoOpenError(source, f"truncated: the header promises {expected} frames, the file holds {packets}")


def decode(
    source: str | os.PathLike[str],
    size: int,
    short_side: int,
    *,
    on_error: OnError = "raise",
    options: Mapping[str, str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Iterator[Frame]:
    """Prepared frames of the first video stream of a file or a network URL, in order.

    ``on_error`` decides what a decode failure mid-stream does: ``"raise"`` a :class:`StreamDecodeError` with the
    position, ``"stop"`` end the frames there, ``"skip"`` drop the bad data and go on (the next frame has
    ``after_gap``). Local files are checked for truncation first when ``on_error="raise"``. A source silent for
    ``timeout`` seconds (None: no limit) is a stall: :class:`VideoOpenError` when opening, and when reading a
    :class:`StreamDecodeError` (``"raise"``) or the end of the frames (``"stop"``, ``"skip"``: retrying a dead
    source would only wait again).
    """
    check_timeout(timeout)
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    source = os.fspath(source)
    if on_error == "raise" and not is_url(source):
        _check_complete(source, options, timeout)
    with _open(source, options, timeout) as container:
        if not container.streams.video:
            raise VideoOpenError(source, "not a video (no video stream)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        index, time, duration, gap, failures = 0, 0.0, (1.0 / rate if rate else 0.0), False, 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                break
            except av.ExitError as error:  # PyAV's interrupt callback: no data within the timeout
                reason = f"stalled: no data within {timeout} s (the timeout)"
                if on_error == "raise":
                    raise StreamDecodeError(source, index, time, reason) from error
                log.warning("%s: stopping at frame %d (%.3f s): %s", source, index, time, reason)
                return
            except (av.FFmpegError, OSError) as error:
                failures += 1
                reason = f"{type(error).__name__}: {error}"
                if on_error == "raise":
                    raise StreamDecodeError(source, index, time, reason) from error
                if on_error == "stop" or failures >= MAX_CONSECUTIVE_ERRORS:
                    log.warning("%s: stopping at frame %d (%.3f s): %s", source, index, time, reason)
                    return
                log.warning("%s: skipping undecodable data at frame %d (%.3f s): %s", source, index, time, reason)
                gap = True
                continue
            failures = 0
            for frame in frames:
                if frame.time is not None:
                    time = float(frame.time)
                elif rate:
                    time = index / rate
                yield Frame(index, time, duration, prepare_frame(frame, size, short_side), after_gap=gap)
                gap = False
                index += 1
                time += duration
        if index == 0:
            raise VideoOpenError(source, "no decodable frames")


def windows(frames: Iterator[Frame], length: int, stride: int) -> Iterator[Window]:
    """Sliding windows of ``length`` frames starting every ``stride`` frames (0, stride, 2·stride, …).

    After a gap (skipped data) the windows start afresh, so no window joins frames across it.
    """
    if length < 1 or stride < 1:
        raise InputError(f"window length and stride must be at least 1, got {length} and {stride}")
    buffer: deque[Frame] = deque(maxlen=length)
    next_start = 0
    for frame in frames:
        if frame.after_gap:
            buffer.clear()
            next_start = frame.index
        buffer.append(frame)
        first = buffer[0]
        if len(buffer) == length and first.index >= next_start:
            yield Window(
                clip=np.stack([f.rgb for f in buffer]),
                start_frame=first.index,
                end_frame=frame.index + 1,
                start=first.time,
                end=frame.time + frame.duration,
            )
            next_start = first.index + stride


__all__ = ["Frame", "OnError", "VideoError", "Window", "decode", "prepare_frame", "resized_shape", "windows"]
