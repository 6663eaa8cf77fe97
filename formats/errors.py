"""The root of vared2's errors, so callers and the command line tell them apart by type, not by built-in class.

``InputError`` is bad input or a bad environment (the user must change something: exit code 2); it is also a
``ValueError`` for callers that catch that. ``CheckFailed`` is a check that ran and failed (parity, agreement,
verification: exit code 1). Anything else that escapes is a bug (exit code 3). The other classes here keep the
built-in class a caller could catch today (``TypeError``, ``FileNotFoundError``, ``ImportError``) beside it.
"""

from __future__ import annotations


class Vared2Error(Exception):
    """Every error vared2 raises on purpose."""


class InputError(Vared2Error, ValueError):
    """Bad input, bad usage or a bad environment: names the file, tensor or field and what was expected."""


class CheckFailed(Vared2Error):
    """A check ran and its result was refused (parity, int8 agreement, verification)."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type (also a ``TypeError``, the API's contract for it)."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or directory the user named does not exist (also a ``FileNotFoundError``)."""


class InputExistsError(InputError, FileExistsError):
    """An output the user named exists and may not be replaced (also a ``FileExistsError``)."""


class OutputError(InputError):
    """An output path that cannot be written: a directory where a file goes, an unwritable or read-only place,
    a format the writer does not know. Raised before any work starts."""


class MissingExtraError(InputError, ImportError):
    """A verb's optional dependencies are not installed; the message names the extra and the pip command."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra ({module} is not installed): pip install 'vared2[{extra}]'")
        self.extra = extra
        self.module = module


class InputNotADirectoryError(InputError, NotADirectoryError):
    """A file where the user named a directory (also a ``NotADirectoryError``)."""


class InputIsADirectoryError(InputError, IsADirectoryError):
    """A directory where the user named a file (also an ``IsADirectoryError``)."""
