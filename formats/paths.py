"""Where a stage may write and read: output directories replaced as a whole and atomically, and files confined
to the directory that names them (no ``..``, no symlink out)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError, InputExistsError, InputNotADirectoryError
from .fields import EngineFileError, MissingEngineFileError, as_relpath


def resolve_inside(root: Path, rel: str, name: str) -> Path:
    """``root/rel`` as an existing regular file whose real path is inside ``root`` (no symlink escapes)."""
    as_relpath(rel, name)
    path = root / rel
    try:
        real = path.resolve()
        real.exists()
    except (OSError, ValueError) as error:  # a name too long for the file system, a NUL byte, a lone surrogate
        raise EngineFileError(path, f"{name}: not a usable file name ({error})") from None
    if not real.is_relative_to(root):
        raise EngineFileError(path, f"{name} resolves to {real}, outside the engine directory {root}")
    if not real.exists():
        raise MissingEngineFileError(path, f"{name}: no such file (the engine directory is incomplete)")
    if not real.is_file():
        raise EngineFileError(path, f"{name}: not a regular file")
    return real


def check_output_dir(
    out_dir: Path | str,
    *,
    marker: str,
    kind: str,
    source: Path | str | None = None,
    source_kind: str = "source directory",
) -> Path:
    """Refuse, before any work, an output directory a stage must not replace; return it resolved.

    ``out_dir`` may be replaced only if it does not exist, is empty, or holds ``marker`` (a previous output of the
    same stage: ``export.json``, ``manifest.json``); otherwise ``FileExistsError`` (``NotADirectoryError`` for a
    file). It must not be ``source`` (the stage's input), contain it or lie inside it, nor be the current working
    directory or an ancestor of it: ``InputError``. Paths are compared with symlinks resolved; every message names
    the directory, ``kind`` what it should be (``"an ONNX export"``).
    """
    out = Path(out_dir).resolve()
    name = os.fspath(out_dir) if Path(out_dir).absolute() == out else f"{os.fspath(out_dir)} (= {out})"
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:  # the working directory was deleted: nothing to protect there
        cwd = None
    if cwd is not None and cwd.is_relative_to(out):
        where = "the current directory" if cwd == out else f"an ancestor of the current directory {cwd}"
        raise InputError(f"{name} is {where}, which would be replaced as a whole; choose another --out")
    if source is not None:
        src = Path(source).resolve()
        if out == src:
            raise InputError(f"{name} is the {source_kind}, which would be replaced; choose another --out")
        if out.is_relative_to(src):
            raise InputError(f"{name} lies inside the {source_kind} {src}; choose another --out")
        if src.is_relative_to(out):
            raise InputError(f"{name} contains the {source_kind} {src}, which would be replaced; choose another --out")
    if out.exists():
        if not out.is_dir():
            raise InputNotADirectoryError(f"{name} exists and is not a directory; choose another --out")
        if not (out / marker).is_file() and any(out.iterdir()):
            raise InputExistsError(f"{name} exists and is not {kind} (no {marker}); choose another --out or empty it")
    return out


@contextmanager
def atomic_directory(final: Path | str, *, label: str = "tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to fill; on success it replaces ``final``, on failure it vanishes.

    An existing ``final`` is renamed away, the new one renamed in, the old one deleted, so readers see the old
    directory or the new one, never a half-written one. The directory follows the umask (``mkdtemp`` makes 0700
    directories; outputs are read by other users' services).
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.{label}-", dir=final.parent))
    mask = os.umask(0)
    os.umask(mask)
    work.chmod(0o777 & ~mask)
    try:
        yield work
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            old.rmdir()
            os.replace(final, old)
            try:
                os.replace(work, final)
            except BaseException:
                os.replace(old, final)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
