"""``vared2 infer ENGINE_DIR VIDEO… [--stride N] [--json]``: classify the sliding windows of videos.

The CLI (``vared2.cli``) parses the arguments and calls :func:`infer`; errors propagate as exceptions (the CLI
turns bad input into exit code 2 with a one-line reason).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .api import Runtime
from .result import Result
from .video import is_url

COLUMNS = ("video", "start s", "end s", "frames", "label", "score", "bucket", "GFLOPs", "ms")


def _row(result: Result) -> tuple[str, ...]:
    return (
        result.source or "",
        f"{result.start:.2f}" if result.start is not None else "",
        f"{result.end:.2f}" if result.end is not None else "",
        f"{result.start_frame}-{result.end_frame}" if result.window is not None else "",
        result.label,
        f"{result.score:.3f}",
        f"{result.bucket} ({result.bucket_name})",
        f"{result.gflops:.3f}",
        f"{result.timings['total']:.1f}",
    )


def infer(
    engine_dir: str | os.PathLike[str],
    videos: Sequence[str | os.PathLike[str]],
    stride: int = 8,
    as_json: bool = False,
    out: TextIO | None = None,
    *,
    threads: int | None = None,
    shared_thread_pool: bool = False,
) -> int:
    """Print one line per window of each video — a table, or JSON lines (``Result.to_dict``) — and return the
    number of windows. The arguments and every video path are checked before the engines load, and the table's
    header waits for the first window, so a bad argument or an unreadable first video prints nothing but the
    error; a later unreadable or truncated file raises before its first line."""
    out = out if out is not None else sys.stdout  # looked up per call: callers may redirect sys.stdout
    if not videos:
        raise ValueError("no videos given")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"--stride: expected a positive number of frames, got {stride!r}")
    for video in videos:
        if is_url(os.fspath(video)):
            continue
        if Path(video).is_dir():
            raise IsADirectoryError(f"{os.fspath(video)}: a directory, not a video file")
        if not Path(video).is_file():
            raise FileNotFoundError(f"{os.fspath(video)}: no such video file")
    count = 0
    with Runtime.open(engine_dir, threads=threads, shared_thread_pool=shared_thread_pool) as runtime:
        # Rows are printed as windows arrive, so the columns get fixed widths: the longest video name, the
        # longest label and bucket name the manifest can produce.
        manifest = runtime.manifest
        widths = [
            max(len(COLUMNS[0]), *(len(os.fspath(v)) for v in videos)),
            7,
            7,
            9,
            max(len(COLUMNS[4]), *(len(label) for label in manifest.model.labels)),
            5,
            max(len(f"{b.id} ({b.name})") for b in manifest.buckets),
            6,
            6,
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"

        for video in videos:
            for result in runtime.stream(video, stride=stride):
                count += 1
                if as_json:
                    out.write(json.dumps(result.to_dict()) + "\n")
                else:
                    out.write((line(COLUMNS) if count == 1 else "") + line(_row(result)))
                out.flush()
    return count
