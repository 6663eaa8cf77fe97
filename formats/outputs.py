"""Checks on the paths a verb will write, run before any work: a benchmark or an evaluation that runs for minutes
and then cannot save its result has wasted those minutes (issue 27).

Writability is probed by creating (and removing) a file, since ``os.access`` says yes to root on a read-only or
permission-less location.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import OutputError

#: File name endings a plot may have (what matplotlib writes without extra packages).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")

#: OSError numbers that are the environment's fault, not a bug: a one-line reason and exit code 2 on the CLI.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.EPIPE, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}
)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _probe(directory: Path, option: str, target: Path) -> None:
    """Create and remove a file in ``directory``: OutputError naming ``option`` and ``target`` if that fails."""
    if not directory.is_dir():
        raise OutputError(f"{option} {target}: {directory} is not a directory")
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".vared2-probe-")
    except OSError as error:
        raise OutputError(f"{option} {target}: cannot write in {directory} ({error.strerror or error})") from error
    os.close(fd)
    os.unlink(name)


def check_output_file(path: str | os.PathLike[str], option: str, *, suffixes: Sequence[str] | None = None) -> Path:
    """Check that ``path`` can be written as a file (its folders are made later, by the writer): not a directory,
    one of ``suffixes`` if given, and a location where files can be created. Returns it as a ``Path``."""
    target = Path(path)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {target}: expected a file ending in {', '.join(suffixes)}")
    if target.is_dir():
        raise OutputError(f"{option} {target}: a directory, not a file")
    if target.exists():
        try:
            with open(target, "ab"):
                pass
        except OSError as error:
            raise OutputError(f"{option} {target}: cannot write it ({error.strerror or error})") from error
    _probe(_nearest_existing(target.parent), option, target)
    return target


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Check that ``path`` is, or can be made as, a directory in which files can be created. Whether an existing
    one may be replaced is the writer's decision (``--overwrite``, ``--resume``)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{option} {target}: exists and is not a directory")
    _probe(_nearest_existing(target), option, target)
    return target


def environment_error(error: BaseException) -> bool:
    """Whether ``error`` is an OSError the environment caused (closed pipe, read-only or full disk, no
    permission), which the CLI reports in one line rather than as a bug."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS
