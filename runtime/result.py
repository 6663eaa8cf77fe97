"""What ``Runtime.classify`` and ``Runtime.stream`` return: one :class:`Result` per clip or window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Result:
    """The classification of one clip.

    ``gflops`` is what this clip cost: the gate plus the bucket that ran. ``timings`` are wall-clock milliseconds
    of the engine runs this clip took part in — ``gate``, ``bucket`` and ``total`` (the whole call, including
    input checks and softmax); in a batch, clips share the gate run and the run of their bucket's group.
    Stream results also carry the window: frame indices ``[start_frame, end_frame)`` and timestamps in seconds
    (``end`` is the end of the window's last frame).
    """

    label: str
    score: float
    topk: list[tuple[str, float]]
    bucket: int
    bucket_name: str
    gflops: float
    timings: dict[str, float] = field(compare=False)
    probabilities: np.ndarray = field(compare=False, repr=False)
    source: str | None = None
    start_frame: int | None = None
    end_frame: int | None = None
    start: float | None = None
    end: float | None = None

    @property
    def window(self) -> tuple[int, int] | None:
        """``(start_frame, end_frame)`` for stream results, else None."""
        if self.start_frame is None or self.end_frame is None:
            return None
        return self.start_frame, self.end_frame

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the full probability vector."""
        out: dict[str, Any] = {
            "label": self.label,
            "score": self.score,
            "topk": [[label, score] for label, score in self.topk],
            "bucket": self.bucket,
            "bucket_name": self.bucket_name,
            "gflops": self.gflops,
            "timings_ms": dict(self.timings),
        }
        if self.source is not None:
            out["source"] = self.source
        if self.window is not None:
            out.update(start_frame=self.start_frame, end_frame=self.end_frame, start=self.start, end=self.end)
        return out
