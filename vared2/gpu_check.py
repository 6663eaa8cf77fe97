"""``./build.sh gpu-check``: the GPU acceptance tier (DESIGN.md §8).

On a host with an NVIDIA GPU and TensorRT: the ``gpu``-marked tests (AOT plugins against the reference,
TensorRT engines with and without the plugins against ONNX Runtime through Polygraphy, the TensorRT
runtime against ONNX Runtime), then the demo model deployed on TensorRT and benchmarked. Elsewhere it says
what is missing and exits 2 — it never reports the GPU path as working when it did not run.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def missing_requirement() -> str | None:
    """Why the GPU tier cannot run on this machine, or None."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    if importlib.util.find_spec("tensorrt") is None:
        return (
            "TensorRT's Python package is not installed in this environment "
            "(pip install tensorrt into .venv, or use the system's TensorRT, e.g. JetPack's)"
        )
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda, which the TensorRT runtime uses, is not installed (.venv/bin/pip install -e '.[gpu]')"
    return None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "artifacts" / "gpu-check")
@click.option("--fp16", is_flag=True, help="Also deploy and benchmark fp16 engines.")
def main(out: Path, fp16: bool) -> None:
    """Run the GPU acceptance tier, or say clearly why it cannot run here."""
    reason = missing_requirement()
    if reason is not None:
        click.echo(f"gpu-check: cannot run: {reason}. Nothing was checked.", err=True)
        sys.exit(2)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-v", str(ROOT / "tests")], check=False)
    if tests.returncode != 0:
        click.echo("gpu-check: the GPU tests failed (see above).", err=True)
        sys.exit(1)
    from vared2.pipeline import main as pipeline

    for precision in ["fp32", "fp16"] if fp16 else ["fp32"]:
        args = ["--backend", "tensorrt", "--out", str(out / precision), "--name", f"demo-{precision}"]
        pipeline.main(args + (["--fp16"] if precision == "fp16" else []), standalone_mode=False)
    click.echo("gpu-check: passed")


if __name__ == "__main__":
    main(prog_name="./build.sh gpu-check")
