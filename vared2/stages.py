"""How a command runs a pipeline stage: exit codes by error type (DESIGN.md §9, docs/design.md), and the parity
check that ``vared2 verify`` and the main job share.

``InputError`` → a one-line reason and exit code 2, ``CheckFailed`` → 1, a closed pipe or a read-only, full or
forbidden location (OSError by errno) → one line and 2, ``Ctrl-C`` → 130 after the stage's own cleanup, and
anything else — a plain ``ValueError`` or ``TypeError`` included — is a bug: its traceback and 3. A module of its
own so that the main job (``vared2.pipeline``) can use it without importing the command line (DESIGN.md §1).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from vared2.formats.errors import CheckFailed, InputError, MissingExtraError
from vared2.formats.outputs import environment_error

if TYPE_CHECKING:
    from vared2.engines.calibration import ClipSet

T = TypeVar("T")

__all__ = ["INTERNAL_ERROR", "INTERRUPTED", "CheckFailed", "check_parity", "run_stage"]

#: Exit code of an unexpected error (DESIGN.md §9 has 0, 1 and 2; docs/design.md says why 3 was added).
INTERNAL_ERROR = 3
#: Exit code after Ctrl-C (128 + SIGINT, what shells report).
INTERRUPTED = 130

#: The extra that installs an import name (pyproject.toml's optional dependencies), for a ModuleNotFoundError.
EXTRA_OF = {
    "torch": "train",
    "torchvision": "train",
    "safetensors": "train",
    "matplotlib": "plot",
    "onnx": "export",
    "polygraphy": "export",
    "onnxruntime": "runtime",
    "av": "runtime",
}
#: The extra each verb needs (the README's table); a verb not named needs none beyond the base install.
VERB_EXTRAS = {
    "synth": "runtime",  # numpy and PyAV: no training stack
    "train": "train",
    "fit-gate": "train",
    "evaluate": "train",
    "convert": "train",
    "export": "export",
    "verify": "export",
    "build": "export",
    "infer": "runtime",
    "bench": "runtime",
    "triton": "runtime",
}


def _one_line(message: str, code: int) -> NoReturn:
    click.echo(f"vared2: {message}", err=True)
    sys.exit(code)


def _quiet_closed_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's capture)
        pass


def _bug(err: BaseException) -> NoReturn:
    """A bug: the traceback, a one-line summary, exit code 3."""
    traceback.print_exception(type(err), err, err.__traceback__)
    _one_line(f"internal error: {type(err).__name__}: {err}", INTERNAL_ERROR)


def run_stage(action: Callable[[], T], *, verb: str | None = None) -> T:
    """Run one stage and turn what escapes it into a message and an exit code, by type alone (module docstring).
    ``verb`` names the command for a missing extra's message. Click's own exceptions pass through."""
    try:
        return action()
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except KeyboardInterrupt:
        _one_line("interrupted", INTERRUPTED)
    except CheckFailed as err:
        _one_line(f"check failed: {err}", 1)
    except InputError as err:
        _one_line(f"error: {err}", 2)
    except ModuleNotFoundError as err:
        root = (err.name or "").split(".")[0]
        if root not in EXTRA_OF:
            _bug(err)
        if verb is None:  # the verb whose context this runs in, if any
            context = click.get_current_context(silent=True)
            verb = context.info_name if context is not None and context.parent is not None else None
        extra = EXTRA_OF[root] if root == "matplotlib" or verb not in VERB_EXTRAS else VERB_EXTRAS[verb]
        _one_line(f"error: {MissingExtraError(f'vared2 {verb}' if verb else 'this command', extra, root)}", 2)
    except OSError as err:
        if not environment_error(err):
            _bug(err)
        if isinstance(err, BrokenPipeError):
            _quiet_closed_stdout()
            _one_line("error: output closed (broken pipe)", 2)
        where = f"{err.filename}: " if err.filename else ""
        _one_line(f"error: {where}{err.strerror or err}", 2)
    except Exception as err:
        _bug(err)


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
    from vared2.formats.video import read_clip
    from vared2.models.dataset import read_csv_list, scan_folder
    from vared2.models.recipe import split_source

    if limit is not None and limit < 1:
        raise InputError(f"clip count: expected a positive integer, got {limit}")
    model = read_export_spec(onnx_dir)["model"]
    source = split_source(data, split)
    classes = model.get("labels") or None
    _, samples = read_csv_list(source, classes) if source.is_file() else scan_folder(source, classes)
    if not samples:
        raise InputError(f"{source}: no clips")
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
