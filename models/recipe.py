"""Training and evaluation from directories: what ``vared2 train``, ``fit-gate``, ``evaluate`` and ``convert`` run.

Resolves a data directory into train/val datasets, builds the model from the dataset's classes, and records
how the checkpoint was made (command, seed, data spec) in its ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vared2.formats.errors import InputError, InputExistsError, InputNotADirectoryError, InputNotFoundError
from vared2.formats.latency import bucket_costs, latency_costs, read_latency_table
from vared2.formats.progress import say
from vared2.models.buckets import default_buckets, table_from_names
from vared2.models.calibrate import GateFit, calibrate_batchnorm, fit_gate, stack_dataset
from vared2.models.checkpoint import load, read_config, save, sha256_of
from vared2.models.config import ModelConfig
from vared2.models.dataset import VideoFolderDataset
from vared2.models.distributed import resolve_device, setup
from vared2.models.evaluate import Evaluation, evaluate, plot_histogram
from vared2.models.torchvision_convert import convert_torchvision, default_weights_file
from vared2.models.train import TRAIN_STATE, EpochStats, TrainConfig, evaluate_accuracy, train
from vared2.models.train_config import BACKBONES, TRAIN_MODEL
from vared2.models.video_resnet import VaRed2VideoResNet, build_model, copy_weights

log = logging.getLogger(__name__)
#: Training clips the per-bucket BatchNorm statistics are recomputed on after dynamic training.
CALIBRATION_CLIPS = 512


#: Stride-2 stages after the stem that also halve time (torchvision: mc3's later stages are 2-D in time).
_TEMPORAL_HALVINGS = {"r2plus1d_18": 3, "r3d_18": 3, "mc3_18": 0}


def check_crop(backbone: str, frames: int, size: int) -> None:
    """Refuse a crop too small for the network before anything is written (issue 27). The stem and three
    stride-2 stages leave ceil(size / 16) pixels a side; in training every BatchNorm needs more than one value
    per channel, and a DataLoader's last batch can be a single clip, so the last stage needs 2 values or more."""
    last_frames = math.ceil(frames / 2 ** _TEMPORAL_HALVINGS[backbone])
    if last_frames * math.ceil(size / 16) ** 2 >= 2:
        return
    raise InputError(
        f"--size {size}: too small for {backbone} at {frames} frames (its last stage would hold one value per "
        f"channel, which BatchNorm cannot train on); use --size at least 17"
    )


def split_source(data: Path, split: str) -> Path:
    """The CSV file or class folder of one split of ``data``."""
    data = Path(data)
    if data.is_file():
        return data
    for candidate in (data / f"{split}.csv", data / split):
        if candidate.exists():
            return candidate
    raise InputNotFoundError(
        f"{data}: no '{split}' split; expected {data / f'{split}.csv'} (as `vared2 synth` writes) "
        f"or a folder {data / split}/<class>/<video>"
    )


def describe_data(data: Path) -> dict[str, object]:
    """What the checkpoint records about its data: the path and, for the synthetic set, its spec."""
    info: dict[str, object] = {"path": str(data)}
    spec = Path(data) / "dataset.json"
    if spec.is_file():
        summary = json.loads(spec.read_text())
        recorded = ("generator", "generator_version", "seed", "clips", "spec", "codec")
        info.update({k: summary[k] for k in recorded if k in summary})
        info["dataset_json_sha256"] = hashlib.sha256(spec.read_bytes()).hexdigest()
    return info


def refuse_to_replace(out: Path, *, overwrite: bool, hint: str) -> None:
    """Refuse an ``out`` that exists and holds anything, unless ``overwrite``: one mistyped re-run must not
    replace a finished checkpoint, nor write among unrelated files. A missing or empty directory is fine."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputNotADirectoryError(f"--out {out}: exists and is not a directory")
    if overwrite or not out.exists() or not any(out.iterdir()):
        return
    raise InputExistsError(f"--out {out} already exists and is not empty; {hint}")


def check_target_ratio(target_ratio: float) -> None:
    """The gate fit's target, checked before any work (the oracle would otherwise bisect toward nonsense)."""
    if not 0.0 < target_ratio <= 1.0:
        raise InputError(f"gate fit: target_ratio (--target-ratio) must be in (0, 1], got {target_ratio}")


def load_teacher(path: Path, student: ModelConfig) -> VaRed2VideoResNet:
    """The checkpoint to distil from; it must read the same clips and name the same classes as the student."""
    teacher = load(path)
    reads = (teacher.config.frames, teacher.config.size, teacher.config.mean, teacher.config.std)
    if reads != (student.frames, student.size, student.mean, student.std):
        raise InputError(
            f"--teacher {path}: it reads {teacher.config.frames}x{teacher.config.size} clips normalised with "
            f"mean {teacher.config.mean}, std {teacher.config.std}; this run reads {student.frames}x{student.size} "
            f"with mean {student.mean}, std {student.std}"
        )
    if teacher.config.labels != student.labels:
        raise InputError(
            f"--teacher {path}: its classes {list(teacher.config.labels)} differ from the data's {list(student.labels)}"
        )
    return teacher.eval()


def run_training(
    data: Path,
    out: Path,
    config: TrainConfig,
    *,
    backbone: str = TRAIN_MODEL.backbone,
    width: float = TRAIN_MODEL.width,
    frames: int = TRAIN_MODEL.frames,
    size: int = TRAIN_MODEL.size,
    resume: bool = False,
    overwrite: bool = False,
    init_from: Path | None = None,
    fit_gate_after: bool = False,
    teacher: Path | None = None,
    latency_table: Path | None = None,
    buckets: Sequence[str] | None = None,
    command: str = "",
) -> list[EpochStats]:
    """Train a fresh (or resumed) model on ``data`` and keep it in ``out``; ``buckets`` (names, or short names of
    the backbone's default table) sets the bucket table, ``None`` keeps the default. A non-empty ``out`` is
    refused before any work unless ``resume`` (continue the run saved there) or ``overwrite`` (replace it)."""
    if latency_table is not None and not fit_gate_after:
        raise InputError("--latency-table prices the buckets of the gate fit: add --fit-gate")
    config.validate()  # before the data is decoded, not after
    if resume and overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: pass only one")
    if not resume:
        hint = "pass --resume to continue the run saved there, --overwrite to replace it, or another --out"
        refuse_to_replace(out, overwrite=overwrite, hint=hint)
    elif not (Path(out) / f"{TRAIN_STATE}.json").is_file():  # said now, not after the data is decoded
        raise InputNotFoundError(f"--resume: {out} holds no training run to continue (no {TRAIN_STATE}.json)")
    if backbone not in BACKBONES:
        raise InputError(f"unknown backbone {backbone!r}; expected one of {list(BACKBONES)}")
    check_crop(backbone, frames, size)
    placement = setup(config.device)  # under torchrun: joins the process group (every rank ran the checks above)
    train_set = VideoFolderDataset(split_source(data, "train"), frames=frames, size=size, cache=True)
    val_set = VideoFolderDataset(
        split_source(data, "val"), frames=frames, size=size, classes=train_set.classes, cache=True
    )
    table = None if buckets is None else table_from_names(buckets, default_buckets(backbone, frames))
    config_ = ModelConfig(
        backbone=backbone,
        width=width,
        num_classes=len(train_set.classes),
        frames=frames,
        size=size,
        labels=tuple(train_set.classes),
        buckets=() if table is None else table.names,
    )
    # The initial weights come from torch's global RNG: seed it here, or they ignore --seed (torch seeds its
    # default generator at random in every process; docs/training.md, "Seeding").
    torch.manual_seed(config.seed)
    model = build_model(config_)
    untouched: list[str] = []  # what --init-from left as built
    if init_from is not None and not resume:
        start = load(Path(init_from))
        try:  # the bucket table may differ (a static baseline is the usual start), and the classes
            untouched = copy_weights(start, model)
        except ValueError as error:
            raise InputError(f"--init-from {init_from}: {error}") from None
        if "fc.weight" in untouched:
            log.warning("--init-from %s: other classes than the data's; the classifier starts afresh", init_from)
    if latency_table is not None:  # checked before training, not after it
        latency_costs(latency_table, [bucket.name for bucket in model.buckets])
    teacher_model = None if teacher is None else load_teacher(Path(teacher), model.config)
    provenance: dict[str, object] = {"command": command, "seed": config.seed, "data": describe_data(data)}
    if init_from is not None:
        provenance["init_from"] = {
            "path": str(init_from),
            "provenance": load(Path(init_from)).config.provenance,
            "new_classifier": "fc.weight" in untouched,
        }
    if teacher_model is not None:
        provenance["teacher"] = {"path": str(teacher), "provenance": teacher_model.config.provenance}
    history = train(
        model,
        train_set,
        val_set,
        out,
        config,
        resume=resume,
        provenance=provenance,
        teacher=teacher_model,
        placement=placement,
    )
    if not placement.is_main:  # the other ranks are done; rank 0 calibrates and fits alone, as one process would
        return history
    if not config.static:
        calibration_clips, _ = stack_dataset(train_set, limit=CALIBRATION_CLIPS)
        calibrate_batchnorm(model, calibration_clips)
        final = record_final_validation(model, val_set, config.batch_size, "BatchNorm recalibration")
        model.config.provenance = {
            **model.config.provenance,
            "batchnorm_calibration": {"clips": len(calibration_clips), "split": "train", **final},
        }
        save(model, out)
    if fit_gate_after:
        fit_and_record_gate(model, train_set, config.target_ratio, latency_table, seed=config.seed, command=command)
        record_final_validation(model, val_set, config.batch_size, "the gate fit")
        save(model, out)
    return history


def record_final_validation(
    model: VaRed2VideoResNet, val_set: VideoFolderDataset, batch_size: int, after: str
) -> dict[str, object]:
    """Validate the model as it will be saved — after the steps that change it once the epochs are done — and
    record it as the checkpoint's ``final_validation``, so the run's last figure describes the checkpoint."""
    accuracy, ratio, histogram = evaluate_accuracy(model, DataLoader(val_set, batch_size=batch_size), static=False)
    final: dict[str, object] = {
        "after": after,
        "val_accuracy": accuracy,
        "val_gflops_ratio": ratio,
        "histogram": histogram,
    }
    model.config.provenance = {**model.config.provenance, "final_validation": final}
    say(f"after {after}: {describe_final(final)}")
    return final


def describe_final(final: dict[str, object]) -> str:
    return (
        f"val acc {final['val_accuracy']:.3f}  val GFLOPs {final['val_gflops_ratio']:.2f} of full  "
        f"buckets {final['histogram']}"
    )


def final_figure(checkpoint: Path) -> str | None:
    """The checkpoint's final validation line (``vared2 train`` prints it after the epoch table), if recorded."""
    final = read_config(checkpoint)[0].provenance.get("final_validation")
    if not isinstance(final, dict):
        return None
    return f"checkpoint (after {final['after']}): {describe_final(final)}"


def fit_and_record_gate(
    model: VaRed2VideoResNet,
    train_set: VideoFolderDataset,
    target_ratio: float,
    latency_table: Path | None,
    *,
    seed: int,
    command: str,
) -> GateFit:
    """Fit the gate on every clip of ``train_set`` at ``target_ratio`` of the full bucket's GFLOPs — or, with a
    latency table, of its measured latency — and record the fit in the model's provenance."""
    check_target_ratio(target_ratio)
    names = [bucket.name for bucket in model.buckets]
    costs: list[float] | None = None
    priced_by: dict[str, object] = {"cost": "gflops"}
    if latency_table is not None:
        table = read_latency_table(latency_table)
        costs = bucket_costs(table, names, latency_table)
        priced_by = {"cost": "latency", "latency_table": str(latency_table), "engine": table.get("engine")}
        priced_by |= {"threads": table.get("threads"), "costs": dict(zip(names, costs, strict=True))}
    say(f"fit-gate: decoding the {len(train_set)} training clips")
    clips, labels = stack_dataset(train_set, desc="decoding")
    say(
        f"fit-gate: each clip's loss under each of the {len(names)} buckets, then the gate fitted to the best "
        f"bucket per clip at {target_ratio:.3f} of the full bucket's {priced_by['cost']}"
    )
    result = fit_gate(model, clips, labels, target_ratio, seed=seed, costs=costs)
    model.config.provenance = {
        **model.config.provenance,
        "gate_fit": {"command": command, "target_ratio": target_ratio, **priced_by, **asdict(result)},
    }
    return result


def run_gate_fit(
    checkpoint: Path,
    data: Path,
    out: Path,
    target_ratio: float,
    *,
    latency_table: Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    command: str = "",
    device: str = "auto",
) -> GateFit:
    """Refit a trained checkpoint's gate (on the train split of ``data``) and save the result to ``out``, which
    must not be the checkpoint, nor (unless ``overwrite``) a directory that holds anything."""
    check_target_ratio(target_ratio)
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise InputError(f"--out {out}: the same directory as the checkpoint; write the refitted gate elsewhere")
    refuse_to_replace(out, overwrite=overwrite, hint="pass --overwrite to replace it, or another --out")
    model = load(Path(checkpoint)).to(resolve_device(device))
    config = model.config
    train_set = VideoFolderDataset(
        split_source(data, "train"),
        frames=config.frames,
        size=config.size,
        mean=config.mean,
        std=config.std,
        classes=config.labels or None,
    )
    result = fit_and_record_gate(model, train_set, target_ratio, latency_table, seed=seed, command=command)
    model.config.provenance = {**model.config.provenance, "refit_from": str(checkpoint)}
    save(model, out)
    for suffix in (".json", ".safetensors"):  # a replaced run's training state: `--resume` must not find it
        (Path(out) / f"{TRAIN_STATE}{suffix}").unlink(missing_ok=True)
    return result


def run_evaluation(
    checkpoint: Path,
    data: Path,
    *,
    split: str = "val",
    bucket: int | str | None = None,
    plot: Path | None = None,
    latency_table: Path | None = None,
    device: str = "auto",
) -> Evaluation:
    """Evaluate a checkpoint on one split of ``data``; optionally plot the bucket histogram, and with a latency
    table also report the expected latency of the buckets chosen."""
    model: VaRed2VideoResNet = load(Path(checkpoint)).to(resolve_device(device))
    costs = None if latency_table is None else latency_costs(latency_table, [b.name for b in model.buckets])
    config = model.config
    dataset = VideoFolderDataset(
        split_source(data, split),
        frames=config.frames,
        size=config.size,
        mean=config.mean,
        std=config.std,
        classes=config.labels or None,
    )
    result = evaluate(model, dataset, bucket=bucket)
    if costs is not None:
        result = result.with_latency(costs, str(latency_table))
    if plot is not None:
        plot_histogram([(Path(checkpoint).name, result)], Path(plot))
    return result


def run_conversion(
    source: str,
    out: Path,
    *,
    weights: Path | None = None,
    frames: int = 16,
    size: int = 112,
    buckets: Sequence[str] | None = None,
    overwrite: bool = False,
    command: str = "",
) -> tuple[VaRed2VideoResNet, float]:
    """``vared2 convert``: torchvision weights → a vared2 checkpoint in ``out`` (refused if it holds anything,
    unless ``overwrite``), with where the weights came from and the parity found in its provenance."""
    refuse_to_replace(out, overwrite=overwrite, hint="pass --overwrite to replace it, or another --out")
    backbone = source.partition(":")[2]
    table = None
    if buckets is not None and backbone in BACKBONES:
        table = table_from_names(buckets, default_buckets(backbone, frames))
    model, difference = convert_torchvision(source, weights, frames=frames, size=size, buckets=table)
    used = weights if weights is not None else default_weights_file(backbone)[0]
    model.config.provenance = {
        "command": command,
        "converted_from": {
            "source": source,
            "weights": str(used),
            "weights_sha256": sha256_of(Path(used)),
            "full_bucket_max_abs_diff": difference,
        },
    }
    save(model, out)
    return model, difference
