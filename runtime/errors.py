"""The runtime's errors. Bad input is a ``ValueError`` (or ``TypeError`` for a wrong type), as for any Python API;
the subclasses say what went wrong and carry the position or the expected value, so callers can react.

The manifest's errors (``ManifestError``, ``EngineFileError``, ``ChecksumError``, …) come from
``vared2.formats.manifest`` and are re-exported here.
"""

from __future__ import annotations

import os

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
    "SchemaVersionError",
    "StreamDecodeError",
    "VideoError",
    "VideoOpenError",
]


class BackendError(RuntimeError):
    """The inference backend is missing or cannot serve these engines (e.g. TensorRT not installed)."""

    #: The command line reports it as bad input (a one-line reason, exit code 2): the engines or the host are
    #: what the user has to change, not the code.
    bad_input = True


class BackendVersionError(ManifestError):
    """The installed backend differs from the one that built the engines in a way that matters."""


class DeviceMismatchError(ManifestError):
    """TensorRT engines built for another GPU (compute capability) than the one here."""


class VideoError(ValueError):
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
