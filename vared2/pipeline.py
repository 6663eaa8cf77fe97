"""The main job of ``./build.sh``: checkpoint → ONNX → parity check → engines → short benchmark.

On a fresh machine it deploys the shipped demo checkpoint on the embedded default (ONNX Runtime, CPU) and
says where everything is and what to run next. Every stage is the same function the ``vared2`` verbs call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from vared2.stages import check_parity, run_stage

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "demo" / "checkpoint"


def step(title: str) -> float:
    click.secho(f"==> {title}", bold=True, err=True)
    return time.perf_counter()


def done(start: float) -> None:
    click.echo(f"    done in {time.perf_counter() - start:.1f} s", err=True)


def write_sample_video(path: Path, frames: int, size: int, clips: int = 6, seed: int = 7) -> Path:
    """A short MP4 of consecutive synthetic clips (static and moving) of the model's input size, to try
    ``vared2 infer`` on."""
    import numpy as np

    from vared2.formats.video import write_video
    from vared2.models.synthetic import generate

    video = np.concatenate([clip.frames for clip in generate(clips, seed=seed, frames=frames, size=size)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    write_video(tmp, video)
    tmp.replace(path)
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEMO_CHECKPOINT,
    show_default=True,
    help="The checkpoint directory to deploy (model.safetensors + model.json).",
)
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--fp16", is_flag=True, help="Build fp16 engines (TensorRT only).")
@click.option("--max-batch", default=8, show_default=True, help="Largest batch the engines serve.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT / "artifacts",
    show_default=True,
    help="Where the ONNX files (OUT/onnx/NAME), the engines (OUT/engines/NAME) and a sample video go.",
)
@click.option("--name", default=None, help="Name of the deployment (default: the checkpoint folder's name).")
@click.option("--skip-bench", is_flag=True, help="Stop after building and verifying the engines.")
def main(
    checkpoint: Path, backend: str, fp16: bool, max_batch: int, out: Path, name: str | None, skip_bench: bool
) -> None:
    """Deploy CHECKPOINT: export, verify parity, build one engine per bucket, benchmark."""
    from vared2.engines.build import build_engines, check_build_options
    from vared2.export.onnx_export import export_checkpoint

    # Everything the build will refuse is refused now, before export and parity run (minutes at full size).
    run_stage(lambda: check_build_options(backend, fp16=fp16, max_batch=max_batch))
    name = name or ("demo" if checkpoint.resolve() == DEMO_CHECKPOINT else checkpoint.resolve().name)
    if Path(name).name != name or name in {"", ".", ".."}:
        raise click.BadParameter(f"{name!r}: expected a plain folder name (no '/', not . or ..)", param_hint="--name")
    onnx_dir, engine_dir = out / "onnx" / name, out / "engines" / name

    start = step(f"export {checkpoint} → {onnx_dir}")
    exported = run_stage(lambda: export_checkpoint(checkpoint, onnx_dir))
    done(start)

    start = step("verify: every graph through ONNX Runtime against PyTorch eager")
    run_stage(lambda: check_parity(onnx_dir, checkpoint))
    done(start)

    start = step(f"build {backend} engines → {engine_dir}")
    run_stage(lambda: build_engines(onnx_dir, engine_dir, backend=backend, fp16=fp16, max_batch=max_batch))
    done(start)

    if not skip_bench:
        start = step("benchmark (short run; `vared2 bench` for a full one)")
        from vared2.bench import run_bench

        run_stage(lambda: run_bench(engine_dir, warmup_ms=200, iterations=10, duration_s=1.0, ceiling=False))
        done(start)

    sample = out / "samples" / "sample.mp4"
    if not sample.exists():
        from vared2.models.checkpoint import read_config

        config, _ = read_config(checkpoint)
        write_sample_video(sample, config.frames, config.size)
    click.secho("\nvared2 is deployed.", bold=True)
    click.echo(f"  checkpoint   {checkpoint.resolve()}")
    click.echo(f"  ONNX         {exported.directory}")
    click.echo(f"  engines      {engine_dir.resolve()}   ({backend})")
    bin_dir = Path(sys.executable).parent  # the environment build.sh made (VARED2_VENV or .venv)
    engines = engine_dir.resolve()
    click.echo("\nNext:")
    click.echo(f"  {bin_dir / 'vared2'} infer {engines} {sample.resolve()}")
    click.echo(f"  {bin_dir / 'vared2'} bench {engines}")
    click.echo(f"  {bin_dir / 'python'} -c 'from vared2.runtime import Runtime; rt = Runtime.open(\"{engines}\")'")


if __name__ == "__main__":
    main(prog_name="./build.sh", args=sys.argv[1:])
