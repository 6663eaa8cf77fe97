"""The ``vared2`` command line: one verb per pipeline stage (DESIGN.md §9).

Exit codes, by error type (``vared2.stages``): 0 success, 1 a failed check, 2 bad usage, input or environment
(one line on stderr), 3 a bug (with its traceback), 130 interrupted. Each verb imports its stage only when it
runs, so ``vared2 infer`` works on a device that has the runtime extra only; a missing extra is named.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import click

from vared2 import __version__
from vared2.formats.errors import InputError
from vared2.formats.outputs import PLOT_SUFFIXES, check_output_dir, check_output_file
from vared2.models.train_config import BACKBONES, PRECISIONS, TRAIN_MODEL, TrainConfig
from vared2.stages import check_parity, read_clip_set, run_stage


class _RecordingGroup(click.Group):
    """Keeps the arguments it was given, so a checkpoint records the command that made it whether ``vared2`` ran
    from a shell or ``cli.main(args)`` ran in-process (``sys.argv`` is the host program's then)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGS_KEY] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Every verb under ``run_stage``: its imports (a missing extra), its output and Ctrl-C get the exit codes
        of ``vared2.stages``, not Click's (which exits 1 on Ctrl-C and on a closed pipe)."""
        verb = next((a for a in ctx.meta.get(ARGS_KEY, []) if not a.startswith("-")), None)
        return run_stage(lambda: super(_RecordingGroup, self).invoke(ctx), verb=verb)


ARGS_KEY = "vared2.args"


def invoked_command() -> str:
    """The command line of this invocation, quoted as a shell would need it."""
    return shlex.join(["vared2", *click.get_current_context().meta.get(ARGS_KEY, sys.argv[1:])])


@click.group(cls=_RecordingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vared2")
def cli() -> None:
    """Deploy VA-RED2 input-adaptive video models: one engine per policy bucket, a gate that picks one."""


existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
POOL_HELP = "ONNX Runtime: one process-wide thread pool for all engines (faster small buckets; docs/runtime.md)."
LATENCY_HELP = "Price buckets by this device's measured latency (`vared2 bench --latency-table`), not GFLOPs."
out_dir = click.Path(file_okay=False, path_type=Path)
TRAIN = TrainConfig()  # the defaults of `vared2 train`'s recipe options (torch-free: models/train_config.py)
DATA_HELP = (
    "A synthetic benchmark directory (train.csv/val.csv), a folder with train/ and val/ subfolders of "
    "<class>/<video> (Kinetics/UCF101 layout), or one CSV list (then used for both training and validation)."
)
TARGET_RATIO = click.FloatRange(min=0.0, max=1.0, min_open=True)  # (0, 1]: TrainConfig.validate, check_target_ratio
DEVICE_HELP = "Where to run: auto (CUDA when available), cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)."
device_option = click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)


@cli.command()
@click.option("--out", "out", type=out_dir, required=True, help="Directory to write the benchmark into.")
@click.option("--clips", default=2000, show_default=True, help="Number of clips (train + val).")
@click.option("--seed", default=0, show_default=True, help="Everything is deterministic from this seed.")
@click.option("--frames", default=16, show_default=True, help="Frames written per clip.")
@click.option("--size", default=64, show_default=True, help="Frame width and height written.")
@click.option("--val-fraction", default=0.2, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def synth(out: Path, clips: int, seed: int, frames: int, size: int, val_fraction: float, overwrite: bool) -> None:
    """Write the synthetic video benchmark: MP4 files plus a train/val split."""
    check_output_dir(out, "--out")
    from vared2.models.synthetic import write_dataset

    path = run_stage(
        lambda: write_dataset(
            out, clips=clips, seed=seed, frames=frames, size=size, val_fraction=val_fraction, overwrite=overwrite
        )
    )
    click.echo(f"wrote {clips} clips to {path}")


@cli.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True, help=DATA_HELP)
@click.option("--out", "out", type=out_dir, required=True, help="Checkpoint directory to write (and resume from).")
@click.option("--static", is_flag=True, help="Train the full bucket only: the static baseline.")
@click.option("--resume", is_flag=True, help="Continue the run saved in OUT.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run in OUT (its checkpoint files, epoch by epoch); without it or --resume a non-empty OUT "
    "is refused.",
)
@click.option("--backbone", default=TRAIN_MODEL.backbone, show_default=True, type=click.Choice(BACKBONES))
@click.option("--width", default=TRAIN_MODEL.width, show_default=True, help="Channel width multiplier.")
@click.option("--frames", default=TRAIN_MODEL.frames, show_default=True, help="Frames per clip (T).")
@click.option("--size", default=TRAIN_MODEL.size, show_default=True, help="Crop size (H = W).")
@click.option("--epochs", default=TRAIN.epochs, show_default=True)
@click.option(
    "--warmup-epochs",
    type=click.IntRange(min=0),
    default=None,
    help="Epochs on the full bucket before the gate (default: a quarter of --epochs, 3 of 12).",
)
@click.option("--batch-size", default=TRAIN.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=TRAIN.lr, show_default=True)
@click.option(
    "--lr-warmup-epochs",
    type=click.IntRange(min=0),
    default=TRAIN.lr_warmup_epochs,
    show_default=True,
    help="Raise the learning rate linearly from ~0 to --lr over this many epochs (then cosine decay).",
)
@click.option(
    "--target-ratio",
    type=TARGET_RATIO,
    default=TRAIN.target_ratio,
    show_default=True,
    help="Target mean GFLOPs as a fraction of full.",
)
@click.option(
    "--flops-weight",
    type=click.FloatRange(min=0.0),
    default=TRAIN.flops_weight,
    show_default=True,
    help="Weight of the FLOPs term in the loss.",
)
@click.option("--seed", default=TRAIN.seed, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch (default: all cores).")
@click.option(
    "--translate",
    type=click.IntRange(min=0),
    default=TRAIN.translate,
    show_default=True,
    help="Move each training clip by a random offset of up to this many pixels (augmentation).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=TRAIN.precision,
    show_default=True,
    help="bf16: the training forward passes under autocast to bfloat16 (CPU with AVX-512 BF16 / AMX, or CUDA); "
    "fp16: CUDA autocast to float16 with a gradient scaler.",
)
@click.option("--device", default=TRAIN.device, show_default=True, help=DEVICE_HELP)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=TRAIN.workers,
    show_default=True,
    help="DataLoader worker processes decoding clips (0: in the training process).",
)
@click.option(
    "--distill-weight",
    type=click.FloatRange(min=0.0),
    default=TRAIN.distill_weight,
    show_default=True,
    help="Weight of the reduced buckets' distillation terms in the sandwich (docs/training.md, the recipe).",
)
@click.option(
    "--buckets",
    default=None,
    help="The bucket table, comma-separated: bucket names (t1c0/t1c0/t1c0/t0c0) or the backbone's short names "
    "(full,t1,t1c2); the full bucket first. Default: full,c1,c2,t1,t1c1,t1c2.",
)
@click.option(
    "--init-from",
    type=existing_dir,
    default=None,
    help="Start from this checkpoint's weights (e.g. the static baseline; its bucket table may differ) instead of "
    "random ones.",
)
@click.option(
    "--teacher",
    type=existing_dir,
    default=None,
    help="Distil this checkpoint's predictions (e.g. the static baseline's) into every bucket trained.",
)
@click.option(
    "--fit-gate",
    is_flag=True,
    help="After training, fit the gate to each clip's best bucket at --target-ratio (see docs/training.md).",
)
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path), default=None, help=LATENCY_HELP)
def train(
    data: Path,
    out: Path,
    static: bool,
    resume: bool,
    overwrite: bool,
    backbone: str,
    width: float,
    frames: int,
    size: int,
    epochs: int,
    warmup_epochs: int | None,
    batch_size: int,
    lr: float,
    lr_warmup_epochs: int,
    target_ratio: float,
    flops_weight: float,
    seed: int,
    threads: int | None,
    translate: int,
    precision: str,
    device: str,
    workers: int,
    distill_weight: float,
    buckets: str | None,
    init_from: Path | None,
    teacher: Path | None,
    fit_gate: bool,
    latency_table: Path | None,
) -> None:
    """Train a VA-RED2 model (weights and gate jointly), or with --static the full-bucket baseline."""
    check_output_dir(out, "--out")
    from vared2.models.recipe import final_figure, run_training

    def go() -> None:
        config = TrainConfig(
            epochs=epochs,
            warmup_epochs=0 if static else default_warmup(epochs) if warmup_epochs is None else warmup_epochs,
            batch_size=batch_size,
            lr=lr,
            lr_warmup_epochs=lr_warmup_epochs,
            target_ratio=target_ratio,
            flops_weight=flops_weight,
            seed=seed,
            static=static,
            threads=threads,
            translate=translate,
            precision=precision,
            distill_weight=distill_weight,
            device=device,
            workers=workers,
        )
        command = invoked_command()
        history = run_training(
            data,
            out,
            config,
            backbone=backbone,
            width=width,
            frames=frames,
            size=size,
            resume=resume,
            overwrite=overwrite,
            init_from=init_from,
            fit_gate_after=fit_gate,
            teacher=teacher,
            latency_table=latency_table,
            buckets=None if buckets is None else [name.strip() for name in buckets.split(",")],
            command=command,
        )
        if is_main_process():  # under torchrun, rank 0 speaks for the run
            click.echo(describe(history))
            final = final_figure(out)  # the model as saved: after BatchNorm recalibration (and a gate fit)
            if final is not None:
                click.echo(final)
            click.echo(f"checkpoint: {out}")

    from vared2.models.distributed import is_main_process
    from vared2.models.train import describe
    from vared2.models.train_config import default_warmup

    run_stage(go)


@cli.command("fit-gate")
@click.argument("checkpoint", type=existing_dir)
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True, help=DATA_HELP)
@click.option("--out", "out", type=out_dir, required=True, help="Checkpoint directory to write (not CHECKPOINT).")
@click.option(
    "--target-ratio",
    type=TARGET_RATIO,
    default=0.65,
    show_default=True,
    help="Target mean cost as a fraction of full.",
)
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path), default=None, help=LATENCY_HELP)
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the checkpoint in OUT; without it a non-empty OUT is refused.")
@device_option
def fit_gate_command(
    checkpoint: Path,
    data: Path,
    out: Path,
    target_ratio: float,
    latency_table: Path | None,
    seed: int,
    overwrite: bool,
    device: str,
) -> None:
    """Refit CHECKPOINT's gate on DATA's training clips at --target-ratio of the full bucket's GFLOPs, or of its
    latency on the device a --latency-table was measured on, and write the result to OUT."""
    check_output_dir(out, "--out")
    from vared2.models.recipe import run_gate_fit

    def go() -> None:
        command = invoked_command()
        result = run_gate_fit(
            checkpoint,
            data,
            out,
            target_ratio,
            latency_table=latency_table,
            seed=seed,
            overwrite=overwrite,
            command=command,
            device=device,
        )
        cost = "latency" if latency_table is not None else "GFLOPs"
        click.echo(
            f"gate fitted at {target_ratio:.3f} of the full bucket's {cost}: the training clips' best buckets cost "
            f"{result.oracle_ratio:.3f}, the gate's picks {result.gate_ratio:.3f} "
            f"(it agrees with {result.gate_agreement:.1%} of them; the full bucket gets {result.full_share:.1%})"
        )
        if result.full_share == 0:
            click.echo(
                "warning: the fitted gate sends no training clip to the full bucket, so only forcing it "
                "(bucket='full') runs it; a higher --target-ratio gives it the clips that need it",
                err=True,
            )
        click.echo(f"checkpoint: {out}")

    run_stage(go)


@cli.command()
@click.argument("checkpoint", type=existing_dir)
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True, help=DATA_HELP)
@click.option("--split", default="val", show_default=True, help="Which CSV split of DATA to evaluate.")
@click.option(
    "--bucket",
    default=None,
    help="Force one bucket (id, name or short name: full, c1, t1, t1c2, …) instead of the gate.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the bucket histogram (PNG).")
@click.option(
    "--latency-table",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also report the choices' mean latency on the device this `vared2 bench --latency-table` measured.",
)
@device_option
def evaluate(
    checkpoint: Path,
    data: Path,
    split: str,
    bucket: str | None,
    json_path: Path | None,
    plot: Path | None,
    latency_table: Path | None,
    device: str,
) -> None:
    """Accuracy, mean GFLOPs, the bucket histogram and GFLOPs by motion level of CHECKPOINT on DATA."""
    if json_path is not None:
        check_output_file(json_path, "--json")
    if plot is not None:
        check_output_file(plot, "--plot", suffixes=PLOT_SUFFIXES)
    from vared2.models.recipe import run_evaluation

    def go() -> None:
        key: int | str | None = int(bucket) if bucket is not None and bucket.isdigit() else bucket
        result = run_evaluation(
            checkpoint, data, split=split, bucket=key, plot=plot, latency_table=latency_table, device=device
        )
        click.echo(result.table())
        if json_path:  # like --plot and bench's --json: the folder is made if needed
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(result.to_json() + "\n")

    run_stage(go)


@cli.command()
@click.option(
    "--from",
    "source",
    required=True,
    help="The model to convert: torchvision:r2plus1d_18, torchvision:r3d_18 or torchvision:mc3_18.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Its weights: a state dict saved with torch.save (read with weights_only=True; a pickle with code is "
    "refused) or a .safetensors file. Default: torchvision's download cache; nothing is downloaded.",
)
@click.option("--frames", default=16, show_default=True, help="Frames per clip (T) the checkpoint reads.")
@click.option("--size", default=112, show_default=True, help="Crop size (H = W) the checkpoint reads.")
@click.option("--buckets", default=None, help="The bucket table, as for `vared2 train --buckets`.")
@click.option("--out", "out", type=out_dir, required=True, help="Checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace the checkpoint in OUT; without it a non-empty OUT is refused.")
def convert(
    source: str, weights: Path | None, frames: int, size: int, buckets: str | None, out: Path, overwrite: bool
) -> None:
    """Turn torchvision's VideoResNet weights into a vared2 checkpoint whose full bucket is torchvision's model
    (checked to 1e-5); fine-tune it with `vared2 train --init-from OUT`."""
    from vared2.models.recipe import run_conversion

    def go() -> None:
        names = None if buckets is None else [name.strip() for name in buckets.split(",")]
        model, difference = run_conversion(
            source,
            out,
            weights=weights,
            frames=frames,
            size=size,
            buckets=names,
            overwrite=overwrite,
            command=invoked_command(),
        )
        click.echo(
            f"converted {source}: {model.config.num_classes} classes, {len(model.buckets)} buckets; the full bucket "
            f"is torchvision's model to {difference:.2g} (max abs)"
        )
        click.echo(f"checkpoint: {out}")

    run_stage(go)


@cli.command()
@click.argument("checkpoint", type=existing_dir)
@click.option("--out", "out", type=out_dir, required=True, help="Directory for gate.onnx and bucket_*.onnx.")
def export(checkpoint: Path, out: Path) -> None:
    """Export CHECKPOINT to ONNX: a gate model and one model per policy bucket."""
    check_output_dir(out, "--out")
    from vared2.export.onnx_export import export_checkpoint

    result = run_stage(lambda: export_checkpoint(checkpoint, out))
    click.echo(f"exported gate + {len(result.buckets)} buckets to {result.directory}")


@cli.command()
@click.argument("onnx_dir", type=existing_dir)
@click.option("--checkpoint", type=existing_dir, required=True, help="The checkpoint the ONNX files came from.")
def verify(onnx_dir: Path, checkpoint: Path) -> None:
    """Check every exported graph against PyTorch eager through ONNX Runtime (max abs <= 1e-4)."""
    run_stage(lambda: check_parity(onnx_dir, checkpoint))


@cli.command()
@click.argument("onnx_dir", type=existing_dir)
@click.option("--out", "out", type=out_dir, required=True, help="Engine directory to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--fp16", is_flag=True, help="The same as --precision fp16 (TensorRT).")
@click.option("--max-batch", default=8, show_default=True, help="Largest batch (TensorRT's profile maximum).")
@click.option("--opt-batch", default=1, show_default=True, help="The batch TensorRT optimizes for.")
@click.option("--threads", type=int, default=None, help="Default CPU threads per session (ONNX Runtime).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="TensorRT timing cache file.")
@click.option("--no-plugins", is_flag=True, help="TensorRT: parse the ONNX local functions instead of the plugins.")
@click.option("--force", is_flag=True, help="Rebuild even when the engine directory is up to date.")
@click.option(
    "--skip-pass",
    "skip_pass",
    multiple=True,
    metavar="NAME",
    help="Build without this ONNX Runtime graph pass (repeatable; to measure its gain).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="fp16: TensorRT only. int8: quantized bucket engines calibrated on --calib (the gate stays fp32); "
    "ONNX Runtime also checks their agreement with fp32 on validation clips.",
)
@click.option(
    "--calib",
    type=existing_dir,
    default=None,
    help="int8: a data directory (train/val split): calibrate on training clips, check agreement on validation.",
)
@click.option("--calib-clips", type=int, default=32, show_default=True, help="int8: training clips to calibrate on.")
@click.option("--val-clips", type=int, default=None, help="int8: validation clips to check on (default: all).")
@click.option(
    "--min-agreement",
    type=float,
    default=0.985,
    show_default=True,
    help="int8: the least fraction of validation clips whose top-1 must equal fp32's (lower only for random models).",
)
def build(
    onnx_dir: Path,
    out: Path,
    backend: str,
    fp16: bool,
    max_batch: int,
    opt_batch: int,
    threads: int | None,
    timing_cache: Path | None,
    no_plugins: bool,
    force: bool,
    skip_pass: tuple[str, ...],
    precision: str,
    calib: Path | None,
    calib_clips: int,
    val_clips: int | None,
    min_agreement: float,
) -> None:
    """Build one engine per bucket (and one for the gate) from the ONNX files in ONNX_DIR."""
    check_output_dir(out, "--out")
    if timing_cache is not None:
        check_output_file(timing_cache, "--timing-cache")
    from vared2.engines.build import build_engines, check_build_options

    calibration = validation = None
    if precision == "int8" or calib is not None:
        run_stage(
            lambda: check_build_options(
                backend, fp16=fp16, precision=precision, calibration=calib, min_agreement=min_agreement
            )
        )
        assert calib is not None
        calibration = run_stage(lambda: read_clip_set(calib, "train", onnx_dir, calib_clips))
        if backend == "onnxruntime":  # TensorRT's agreement is checked by gpu-check, on the GPU
            validation = run_stage(lambda: read_clip_set(calib, "val", onnx_dir, val_clips))
    path = run_stage(
        lambda: build_engines(
            onnx_dir,
            out,
            backend=backend,
            fp16=fp16,
            max_batch=max_batch,
            opt_batch=opt_batch,
            threads=threads,
            timing_cache=timing_cache,
            use_plugins=not no_plugins,
            force=force,
            skip_passes=skip_pass,
            precision=precision,
            calibration=calibration,
            validation=validation,
            min_agreement=min_agreement,
        )
    )
    click.echo(f"engines: {path}")


@cli.command()
@click.argument("engine_dir", type=existing_dir)
@click.argument("videos", nargs=-1, required=True)
@click.option("--stride", default=8, show_default=True, help="Frames between the starts of two windows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per window instead of a table.")
@click.option("--bucket", default=None, help="Force one bucket (id, name or short name: full, c1, t1, …).")
@click.option("--max-gflops", type=float, default=None, help="Only buckets whose gate + bucket GFLOPs fit this budget.")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Labels kept per window (JSON).")
@click.option(
    "--providers",
    default=None,
    help="ONNX Runtime execution providers, comma-separated (e.g. CUDAExecutionProvider); CPU is the fallback.",
)
@click.option(
    "--on-error",
    type=click.Choice(["stop", "skip"]),
    default="stop",
    show_default=True,
    help="A video that cannot be read: stop there, or report it, go on, and exit 2 at the end.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a stream may take to open or to deliver data before it counts as stalled.",
)
@click.option("--threads", type=int, default=None, help="CPU threads per engine (ONNX Runtime).")
@click.option("--shared-thread-pool", is_flag=True, help=POOL_HELP)
def infer(
    engine_dir: Path,
    videos: tuple[str, ...],
    stride: int,
    as_json: bool,
    bucket: str | None,
    max_gflops: float | None,
    topk: int,
    providers: str | None,
    on_error: Literal["stop", "skip"],
    timeout: float,
    threads: int | None,
    shared_thread_pool: bool,
) -> None:
    """Classify sliding windows of VIDEOS (files or stream URLs) with the engines in ENGINE_DIR."""
    from vared2.runtime.infer import infer as run_infer

    run_stage(
        lambda: run_infer(
            engine_dir,
            list(videos),
            stride=stride,
            as_json=as_json,
            threads=threads,
            shared_thread_pool=shared_thread_pool,
            bucket=int(bucket) if bucket is not None and bucket.isdigit() else bucket,
            max_gflops=max_gflops,
            topk=topk,
            providers=None if providers is None else [p.strip() for p in providers.split(",") if p.strip()],
            on_error=on_error,
            timeout=timeout,
        )
    )


@cli.command()
@click.argument("engine_dir", type=existing_dir)
@click.option("--warmup", "warmup_ms", default=200.0, show_default=True, help="Warm-up time per engine (ms).")
@click.option("--iterations", default=10, show_default=True, help="Run at least this many inferences.")
@click.option("--duration", "duration_s", default=3.0, show_default=True, help="Run for at least this long (s).")
@click.option("--percentile", "percentiles", default="90,95,99", show_default=True, help="Percentiles to report.")
@click.option("--batch", default=1, show_default=True, help="Clips per inference.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write every number.")
@click.option(
    "--latency-table",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Per-bucket latency for latency-aware gate training.",
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Latency vs GFLOPs plot (PNG).")
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Videos for the dynamic workload (a directory with val.csv, or a CSV).",
)
@click.option("--clips", type=int, default=None, help="Use only the first N videos of --data.")
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Instead of --data: serve the bucket mix of the dynamic workload in this bench --json file.",
)
@click.option("--threads", type=int, default=None, help="CPU threads per engine (ONNX Runtime).")
@click.option("--no-ceiling", is_flag=True, help="Skip timing each bucket's convolutions and the gate's stem alone.")
@click.option("--shared-thread-pool", is_flag=True, help=POOL_HELP)
@click.option(
    "--against",
    type=existing_dir,
    default=None,
    help="A second engine directory of the same model (fp32 for int8, say): both timed in interleaved rounds, "
    "with a speedup column.",
)
@click.option("--rounds", default=5, show_default=True, help="--against: interleaved rounds.")
def bench(
    engine_dir: Path,
    warmup_ms: float,
    iterations: int,
    duration_s: float,
    percentiles: str,
    batch: int,
    json_path: Path | None,
    latency_table: Path | None,
    plot: Path | None,
    data: Path | None,
    clips: int | None,
    replay: Path | None,
    threads: int | None,
    no_ceiling: bool,
    shared_thread_pool: bool,
    against: Path | None,
    rounds: int,
) -> None:
    """trtexec-style latency per bucket and for the gate, efficiency vs FLOPs, and a dynamic workload."""
    from vared2.bench import run_bench

    if against is not None:
        from vared2.bench.against import run_against

        others = {"--data": data, "--latency-table": latency_table, "--plot": plot, "--clips": clips}
        given = [name for name, value in others.items() if value is not None]
        given += ["--batch"] if batch != 1 else []
        given += ["--shared-thread-pool"] if shared_thread_pool else []
        if given:
            run_stage(lambda: _refuse(f"{', '.join(given)}: not with --against (it times batch 1, --replay mixes)"))
        run_stage(
            lambda: run_against(
                engine_dir,
                against,
                rounds=rounds,
                iterations=iterations,
                warmup_ms=warmup_ms,
                threads=threads,
                replay=replay,
                json_path=json_path,
            )
        )
        return

    run_stage(
        lambda: run_bench(
            engine_dir,
            warmup_ms=warmup_ms,
            iterations=iterations,
            duration_s=duration_s,
            percentiles=percentiles,
            batch=batch,
            json_path=json_path,
            latency_table=latency_table,
            plot=plot,
            data=data,
            clips=clips,
            replay=replay,
            threads=threads,
            ceiling=not no_ceiling,
            shared_thread_pool=shared_thread_pool,
        )
    )


@cli.command()
@click.argument("engine_dir", type=existing_dir)
@click.option("--out", "out", type=out_dir, required=True, help="Model repository directory to write.")
@click.option("--instances", default=1, show_default=True, help="Instances of each engine model.")
@click.option("--router-instances", type=int, default=None, help="Instances of the router [default: 2 x instances].")
@click.option("--max-batch", type=int, default=None, help="Largest batch a model takes [default: the engines'].")
@click.option("--max-queue-delay-us", default=0, show_default=True, help="How long the router may wait for a batch.")
@click.option("--threads", default=1, show_default=True, help="CPU threads per engine instance (ONNX Runtime).")
def triton(
    engine_dir: Path,
    out: Path,
    instances: int,
    router_instances: int | None,
    max_batch: int | None,
    max_queue_delay_us: int,
    threads: int,
) -> None:
    """Write a Triton Inference Server model repository for ENGINE_DIR (docs/serving.md)."""
    from vared2.serve import RepositoryOptions, write_repository

    options = RepositoryOptions(instances, router_instances, max_batch, threads, max_queue_delay_us)
    path = run_stage(lambda: write_repository(engine_dir, out, options))
    click.echo(f"model repository: {path} (tritonserver --model-repository {path}; the model is 'vared2')")


@cli.command()
@click.argument("engine_dir", type=existing_dir)
@click.option("--port", default=8000, show_default=True, help="HTTP port; gRPC on PORT+1, metrics on PORT+2.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every one).")
@click.option("--instances", default=1, show_default=True, help="Instances of each engine model.")
@click.option("--threads", default=1, show_default=True, help="CPU threads per engine instance (ONNX Runtime).")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), help="Write the server's log here.")
def serve(engine_dir: Path, port: int, address: str, instances: int, threads: int, log: Path | None) -> None:
    """Serve ENGINE_DIR with tritonserver over HTTP and gRPC until Ctrl-C (the server tier's environment)."""
    from vared2.serve import RepositoryOptions
    from vared2.serve.run import serve as run_serve

    options = RepositoryOptions(instances=instances, threads=threads)
    run_stage(lambda: run_serve(engine_dir, port=port, address=address, options=options, log=log, echo=click.echo))


def _refuse(reason: str) -> None:
    raise InputError(reason)


def main() -> None:
    cli(prog_name="vared2")


if __name__ == "__main__":
    main()
