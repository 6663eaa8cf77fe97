"""Progress of long steps: a tqdm bar on a terminal, plain lines in a log (no ``\\r`` frames in redirected output).

Every step that can take more than a few seconds (synth, train, build, export, verify, evaluate, fit-gate) reports
through :func:`progress`; :func:`say` prints a line that does not break a bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: In a log, a line at least every this many seconds, and at every tenth of the work.
LOG_INTERVAL_S = 30.0


def _stream() -> TextIO:
    return sys.stderr


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is a terminal, where a redrawn bar is wanted."""
    stream = stream or _stream()
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def say(line: str) -> None:
    """One line on stderr, above any bar on a terminal."""
    if interactive():
        tqdm.write(line, file=_stream())
    else:
        print(line, file=_stream(), flush=True)


class PlainProgress(Generic[T]):
    """tqdm's interface as used here (iterate, update, set_postfix, close), written as whole lines."""

    def __init__(self, iterable: Iterable[T] | None, total: int | None, desc: str, unit: str) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc, self.unit, self.n = desc, unit, 0
        self.postfix = ""
        self._last_time = time.monotonic()
        self._last_n = 0
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        step = max(1, -(-(self.total or 0) // 10))  # a tenth, rounded up
        if self.n - self._last_n >= step or time.monotonic() - self._last_time >= LOG_INTERVAL_S:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self._closed and self.n != self._last_n:
            self._line()
        self._closed = True

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        units = self.unit + ("es" if self.unit.endswith(("ch", "s", "x")) else "s")
        print(f"{self.desc}: {self.n}{of} {units}{extra}", file=_stream(), flush=True)
        self._last_time, self._last_n = time.monotonic(), self.n


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
) -> Any:
    """A progress reporter over ``iterable`` (or updated by hand up to ``total``): a tqdm bar when stderr is a
    terminal, plain lines otherwise, nothing when ``disable``."""
    if disable or interactive():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=_stream())
    return PlainProgress(iterable, total, desc, unit)
