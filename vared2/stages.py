"""How a command runs a pipeline stage: the errors users cause become a one-line reason and exit code 2, failed
checks exit code 1 (DESIGN.md §9); and the parity check that ``vared2 verify`` and the main job share.

A module of its own so that the main job (``vared2.pipeline``) can use them without importing the command line
(DESIGN.md §1: nothing imports the CLI).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from vared2.engines.calibration import ClipSet

T = TypeVar("T")

#: Exit code of an unexpected error (DESIGN.md §9 has 0, 1 and 2; docs/design.md says why 3 was added).
INTERNAL_ERROR = 3


class CheckFailed(Exception):
    """A verification ran and its result is negative (exit code 1)."""

    failed_check = True


#: What users cause: bad values, types, files and directories, a missing optional package.
USER_ERRORS = (
    ValueError,
    TypeError,
    ImportError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)


def run_stage(action: Callable[[], T]) -> T:
    """Run one stage, turning the errors users cause into a one-line reason and exit code 2, failed checks into
    exit code 1, and anything else into its traceback and exit code 3. Stages mark "a check ran and failed"
    errors (an engine's parity, say) with a class attribute ``failed_check = True``, and other errors the user
    has to fix (engines this host cannot serve, say) with ``bad_input = True``, so the CLI need not import them."""
    try:
        return action()
    except USER_ERRORS as err:
        # KeyError's str() adds quotes; a bucket-name error is both a KeyError and a ValueError.
        reason = err.args[0] if isinstance(err, KeyError) and err.args else err
        click.echo(f"vared2: error: {reason}", err=True)
        sys.exit(2)
    except Exception as err:
        if getattr(err, "bad_input", False):
            click.echo(f"vared2: error: {err}", err=True)
            sys.exit(2)
        if not getattr(err, "failed_check", False):
            # A bug or an environment failure, neither a failed check nor bad input: keep the traceback for the
            # report, but exit with a code of its own so scripts that read 1 as "parity failed" are not misled.
            traceback.print_exc()
            click.echo(f"vared2: internal error: {type(err).__name__}: {err}", err=True)
            sys.exit(INTERNAL_ERROR)
        click.echo(f"vared2: check failed: {err}", err=True)
        sys.exit(1)


def check_parity(onnx_dir: Path, checkpoint: Path) -> None:
    """Print the parity report of ``onnx_dir`` against ``checkpoint``; a mismatch raises ``CheckFailed``."""
    from vared2.export.verify import verify_checkpoint

    report = verify_checkpoint(onnx_dir, checkpoint)
    click.echo(report.table())
    if not report.passed:
        raise CheckFailed(f"{onnx_dir} does not match {checkpoint}")


def read_clip_set(data: Path, split: str, onnx_dir: Path, limit: int | None = None) -> ClipSet:
    """Up to ``limit`` clips of ``data``'s ``split`` (evenly spaced through the list), decoded and cropped as
    ``onnx_dir``'s export.json says, with labels in the model's class order: calibration and validation clips
    for ``vared2 build --precision int8``. Decoding lives here: the engines layer takes the clips as data."""
    import numpy as np

    from vared2.engines.calibration import ClipSet
    from vared2.formats.export_spec import read_export_spec
    from vared2.models.dataset import read_csv_list, scan_folder
    from vared2.models.recipe import split_source
    from vared2.models.video_io import read_clip

    if limit is not None and limit < 1:
        raise ValueError(f"clip count: expected a positive integer, got {limit}")
    model = read_export_spec(onnx_dir)["model"]
    source = split_source(data, split)
    classes = model.get("labels") or None
    _, samples = read_csv_list(source, classes) if source.is_file() else scan_folder(source, classes)
    if not samples:
        raise ValueError(f"{source}: no clips")
    if limit is not None and limit < len(samples):
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit).round()]
    size = int(model["size"])
    clips = [read_clip(s.path, int(model["frames"]), size, model.get("short_side")) for s in samples]
    return ClipSet(
        clips=clips,
        labels=[s.label for s in samples],
        source=str(source),
        names=[os.path.relpath(s.path, source.parent) for s in samples],
    )
