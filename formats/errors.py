"""The root of vared2's errors, so callers and the command line tell them apart by type, not by built-in class.

``InputError`` is bad input or a bad environment (the user must change something: exit code 2); it is also a
``ValueError`` for callers that catch that. ``CheckFailed`` is a check that ran and failed (parity, agreement,
verification: exit code 1). Anything else that escapes is a bug (exit code 3).
"""

from __future__ import annotations


class Vared2Error(Exception):
    """Every error vared2 raises on purpose."""


class InputError(Vared2Error, ValueError):
    """Bad input, bad usage or a bad environment: names the file, tensor or field and what was expected."""


class CheckFailed(Vared2Error):
    """A check ran and its result was refused (parity, int8 agreement, verification)."""
