"""The runtime's errors, all ``vared2.formats.errors.InputError`` (so also ``ValueError``: bad input, as for any
Python API); the subclasses say what went wrong and carry the position or the expected value, so callers can react.

The manifest's errors (``ManifestError``, ``EngineFileError``, ``ChecksumError``, …) come from
``vared2.formats.manifest`` and are re-exported here.
"""

from __future__ import annotations

import os

from vared2.formats.errors import InputError
from vared2.formats.manifest import (
    ChecksumError,
    EngineFileError,
    ManifestError,
    MissingEngineFileError,
    SchemaVersionError,
)

__all__ = [
    "BackendError",
    "BackendVersionError",
    "ChecksumError",
    "DeviceMismatchError",
    "EngineFileError",
    "ManifestError",
    "MissingEngineFileError",
    "RuntimeClosedError",
    "SchemaVersionError",
    "StreamDecodeError",
    "VideoError",
    "VideoOpenError",
]


class BackendError(InputError, RuntimeError):
    """The inference backend is missing or cannot serve these engines (e.g. TensorRT not installed): the engines
    or the host are what the user has to change (exit code 2). Also a ``RuntimeError``, as it always was."""


class RuntimeClosedError(InputError):
    """A call on a ``Runtime`` after ``close()`` (or while it closes): its engines are gone."""


class BackendVersionError(ManifestError, InputError):
    """The installed backend differs from the one that built the engines in a way that matters."""


class DeviceMismatchError(ManifestError, InputError):
    """TensorRT engines built for another GPU (compute capability) than the one here."""


class VideoError(InputError):
    """A video source that cannot be used. Carries the source (path or URL)."""

    def __init__(self, source: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(source)}: {reason}")
        self.source = os.fspath(source)
        self.reason = reason


class VideoOpenError(VideoError):
    """The source could not be opened as a video: not a video, truncated beyond repair, no video stream."""


class StreamDecodeError(VideoError):
    """Decoding failed mid-stream. ``frame_index`` is the number of frames decoded before the error and
    ``seconds`` the timestamp there; results for windows before that position were valid."""

    def __init__(self, source: str | os.PathLike[str], frame_index: int, seconds: float, reason: str) -> None:
        super().__init__(source, f"decode error at frame {frame_index} ({seconds:.3f} s): {reason}")
        self.frame_index = frame_index
        self.seconds = seconds
