"""The ``vared2`` command line: one verb per pipeline stage (DESIGN.md §9).

Exit codes: 0 success, 1 a failed check (parity, verification), 2 bad usage or bad input — with a
one-line reason on stderr. Each verb imports its stage only when it runs, so ``vared2 infer`` works on
a device that has the runtime extra only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from vared2 import __version__

T = TypeVar("T")


class CheckFailed(Exception):
    """A verification ran and its result is negative (exit code 1)."""


def run_stage(action: Callable[[], T]) -> T:
    """Run one stage, turning the errors users cause into a one-line reason and exit code 2."""
    try:
        return action()
    except CheckFailed as err:
        click.echo(f"vared2: check failed: {err}", err=True)
        sys.exit(1)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError) as err:
        reason = err.args[0] if isinstance(err, KeyError) and err.args else err
        click.echo(f"vared2: error: {reason}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vared2")
def cli() -> None:
    """Deploy VA-RED2 input-adaptive video models: one engine per policy bucket, a gate that picks one."""


existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
out_dir = click.Path(file_okay=False, path_type=Path)


@cli.command()
@click.argument("checkpoint", type=existing_dir)
@click.option("--out", "out", type=out_dir, required=True, help="Directory for gate.onnx and bucket_*.onnx.")
def export(checkpoint: Path, out: Path) -> None:
    """Export CHECKPOINT to ONNX: a gate model and one model per policy bucket."""
    from vared2.export.onnx_export import export_checkpoint

    result = run_stage(lambda: export_checkpoint(checkpoint, out))
    click.echo(f"exported gate + {len(result.buckets)} buckets to {result.directory}")


@cli.command()
@click.argument("onnx_dir", type=existing_dir)
@click.option("--checkpoint", type=existing_dir, required=True, help="The checkpoint the ONNX files came from.")
def verify(onnx_dir: Path, checkpoint: Path) -> None:
    """Check every exported graph against PyTorch eager through ONNX Runtime (max abs <= 1e-4)."""
    from vared2.export.verify import verify_checkpoint

    def check() -> None:
        report = verify_checkpoint(onnx_dir, checkpoint)
        click.echo(report.table())
        if not report.passed:
            raise CheckFailed(f"{onnx_dir} does not match {checkpoint}")

    run_stage(check)


def main() -> None:
    cli(prog_name="vared2")


if __name__ == "__main__":
    main()
