"""The serving API edge applications embed: gate → bucket → engine (DESIGN.md §6).

Never imports torch, directly or through anything it imports.

    from vared2.runtime import Runtime
    rt = Runtime.open("artifacts/engines/demo")
    r = rt.classify(clip)          # uint8 [T, H, W, 3] → Result; [N, T, H, W, 3] → list[Result]
"""

from .api import Runtime
from .errors import (
    BackendError,
    BackendVersionError,
    ChecksumError,
    DeviceMismatchError,
    EngineFileError,
    ManifestError,
    MissingEngineFileError,
    SchemaVersionError,
    StreamDecodeError,
    VideoError,
    VideoOpenError,
)
from .result import Result

__all__ = [
    "BackendError",
    "BackendVersionError",
    "ChecksumError",
    "DeviceMismatchError",
    "EngineFileError",
    "ManifestError",
    "MissingEngineFileError",
    "Result",
    "Runtime",
    "SchemaVersionError",
    "StreamDecodeError",
    "VideoError",
    "VideoOpenError",
]
