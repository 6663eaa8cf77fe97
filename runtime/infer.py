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
from typing import Literal, TextIO

from vared2.formats.errors import InputError, InputIsADirectoryError, InputNotFoundError

from .api import Runtime
from .result import Result
from .video import DEFAULT_TIMEOUT, check_timeout, is_url

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


def _check_video(video: str | os.PathLike[str]) -> None:
    if is_url(os.fspath(video)):
        return
    if Path(video).is_dir():
        raise InputIsADirectoryError(f"{os.fspath(video)}: a directory, not a video file")
    if not Path(video).is_file():
        raise InputNotFoundError(f"{os.fspath(video)}: no such video file")


def infer(
    engine_dir: str | os.PathLike[str],
    videos: Sequence[str | os.PathLike[str]],
    stride: int = 8,
    as_json: bool = False,
    out: TextIO | None = None,
    *,
    threads: int | None = None,
    shared_thread_pool: bool = False,
    bucket: int | str | None = None,
    max_gflops: float | None = None,
    topk: int = 5,
    providers: Sequence[str] | None = None,
    on_error: Literal["stop", "skip"] = "stop",
    timeout: float | None = DEFAULT_TIMEOUT,
    err: TextIO | None = None,
) -> int:
    """Print one line per window of each video — a table, or JSON lines (``Result.to_dict``) — and return the
    number of windows. The arguments and every video path are checked before the engines load, and the table's
    header waits for the first window, so a bad argument or an unreadable first video prints nothing but the
    error. ``on_error="stop"``: a missing, unreadable or truncated video raises (before its first line when it
    can). ``"skip"``: its error is one line on ``err`` (stderr) and the next video goes on; an ``InputError``
    naming the failed videos is raised at the end. ``bucket``, ``max_gflops``, ``topk``, ``providers`` and
    ``timeout`` are :meth:`Runtime.classify`'s, :meth:`Runtime.open`'s and :meth:`Runtime.stream`'s."""
    out = out if out is not None else sys.stdout  # looked up per call: callers may redirect sys.stdout
    err = err if err is not None else sys.stderr
    if not videos:
        raise InputError("no videos given")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError(f"--stride: expected a positive number of frames, got {stride!r}")
    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error: expected stop or skip, got {on_error!r}")
    check_timeout(timeout)
    failed: list[str] = []

    def failure(video: str | os.PathLike[str], error: InputError) -> None:
        if on_error == "stop":
            raise error
        failed.append(os.fspath(video))
        err.write(f"vared2: skipped: {error}\n")
        err.flush()

    playable = []
    for video in videos:
        try:
            _check_video(video)
            playable.append(video)
        except InputError as error:
            failure(video, error)
    count = 0
    with Runtime.open(
        engine_dir, threads=threads, shared_thread_pool=shared_thread_pool, providers=providers
    ) as runtime:
        runtime._allowed(max_gflops, bucket)  # a bad --bucket or --max-gflops fails before any video is read
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

        for video in playable:
            try:
                stream = runtime.stream(
                    video, stride=stride, bucket=bucket, max_gflops=max_gflops, topk=topk, timeout=timeout
                )
                for result in stream:
                    count += 1
                    if as_json:
                        out.write(json.dumps(result.to_dict()) + "\n")
                    else:
                        out.write((line(COLUMNS) if count == 1 else "") + line(_row(result)))
                    out.flush()
            except InputError as error:
                failure(video, error)
    if failed:
        in_order = [os.fspath(v) for v in videos if os.fspath(v) in failed]
        raise InputError(f"{len(failed)} of {len(videos)} videos failed: {', '.join(in_order)}")
    return count
