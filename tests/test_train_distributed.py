"""Training on several processes (issue 26): torchrun with gloo on the CPU, the same weights as one process with
the whole batch, bit-exact resume, and the CUDA paths (marked ``gpu``)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.utils.data import Dataset

from vared2.cli import cli
from vared2.models import VaRed2VideoResNet, load, r2plus1d_18
from vared2.models.dataset import ClipListDataset
from vared2.models.distributed import Placement
from vared2.models.synthetic import Clip, generate
from vared2.models.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 4, 32
BUCKETS = ("t0c0/t0c0/t0c0/t0c0", "t1c0/t1c0/t0c0/t0c0", "t0c1/t0c1/t0c1/t0c1")


def tiny_model() -> VaRed2VideoResNet:
    torch.manual_seed(0)
    return r2plus1d_18(width=0.125, frames=FRAMES, size=SIZE, num_classes=12, buckets=list(BUCKETS))


@functools.cache
def raw_clips() -> list[Clip]:
    """16 synthetic videos, made once per process (seconds) and handed to the spawned ranks."""
    return generate(16, seed=3, frames=8, size=40)


def tiny_clips(raw: list[Clip] | None = None) -> ClipListDataset:
    return ClipListDataset(raw if raw is not None else raw_clips(), frames=FRAMES, size=SIZE)


class _Stop(Exception):
    """Raised after the first epoch's checkpoint: the run is cut there."""


class Float64(Dataset[tuple[torch.Tensor, int, int]]):
    """The clips in float64: one process and two ranks sum in other orders, and a tiny network a few steps into
    training turns float32's rounding into percent-level differences; in float64 they stay near 1e-10."""

    def __init__(self, clips: ClipListDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        clip, label, motion = self.clips[index]
        return clip.double(), label, motion


def _rank_main(
    rank: int,
    world: int,
    rendezvous: str,
    out: str,
    config: TrainConfig,
    resume: bool,
    stop: bool,
    f64: bool,
    raw: list[Clip] | None = None,
) -> None:
    """One rank of a gloo run of ``train`` (torch.multiprocessing.spawn's target); ``world`` 1: no group. With
    ``stop`` the run is cut after its first epoch, and with ``resume`` too, resumed from there."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    placement = Placement(torch.device("cpu"), rank, world, "gloo" if world > 1 else None)

    def cut(stats: object) -> None:
        raise _Stop

    clips: Dataset[tuple[torch.Tensor, int, int]] = Float64(tiny_clips(raw)) if f64 else tiny_clips(raw)
    model = tiny_model().double() if f64 else tiny_model()
    try:
        train(
            model,
            clips,
            clips,
            Path(out),
            config,
            resume=resume and not stop,
            placement=placement,
            on_epoch=cut if stop else None,
        )
    except _Stop:
        if world > 1:
            dist.barrier()  # rank 0 saves the epoch before its callback: the others wait for it
            dist.destroy_process_group()
        if resume:  # cut, then resumed by the same processes from what the cut run saved (one spawn, not two)
            if rank == 0:
                shutil.copy(Path(out) / "model.json", Path(out).parent / "at_the_cut.json")
            if world > 1:
                init = f"file://{rendezvous}-resumed"
                dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
            train(tiny_model(), clips, clips, Path(out), config, resume=True, placement=placement)


def run_ranks(
    tmp: Path, out: Path, config: TrainConfig, *, resume: bool = False, stop: bool = False, f64: bool = False
) -> None:
    rendezvous = tmp / f"rendezvous-{time.monotonic_ns()}"
    arguments = (2, str(rendezvous), str(out), config, resume, stop, f64, raw_clips())
    mp.spawn(_rank_main, args=arguments, nprocs=2, join=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))  # as saved (``load`` wants float32)


@pytest.mark.parametrize("static", [True, False], ids=["static", "sandwich-then-gated"])
def test_two_ranks_with_half_the_batch_train_what_one_process_trains(tmp_path: Path, static: bool) -> None:
    """Two gloo ranks with batch 4 each end where one process with batch 8 ends (AdamW, 2 epochs of 2 steps), on
    the same clips in the same order (DistributedSampler by (seed, epoch); BatchNorm statistics over both ranks;
    the sandwich's buckets, the Gumbel noise and the translations drawn for the global batch from the shared
    seed); in float64, so that what differs is the order of the sums only."""
    config = TrainConfig(epochs=2, warmup_epochs=0 if static else 1, batch_size=8, static=static, threads=1)
    config.translate = 2
    _rank_main(0, 1, "", str(tmp_path / "one"), config, False, False, True)
    run_ranks(tmp_path, tmp_path / "two", replace(config, batch_size=4), f64=True)
    one, two, start = weights(tmp_path / "one"), weights(tmp_path / "two"), tiny_model().double().state_dict()
    moved = 0
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-7, msg=name)
        moved += int(value.is_floating_point() and float((value - start[name]).abs().max()) > 1e-4)
    assert moved > 50  # the weights moved: the comparison is not of two untouched models


def test_a_distributed_run_resumes_bit_exactly_and_only_with_its_world_size(tmp_path: Path) -> None:
    """Cut after epoch 1 and resumed on 2 ranks, a sandwich-then-gated run ends bit for bit where the uncut one
    does; resuming it on one process is refused, naming both world sizes."""
    config = TrainConfig(epochs=2, warmup_epochs=1, batch_size=4, threads=1)
    run_ranks(tmp_path, tmp_path / "straight", config)
    run_ranks(tmp_path, tmp_path / "cut", config, stop=True, resume=True)
    assert json.loads((tmp_path / "at_the_cut.json").read_text())["config"]["provenance"]["epochs_done"] == 1
    clips = tiny_clips()
    with pytest.raises(ValueError, match=r"trained on 2 process\(es\), this one has 1"):
        train(
            tiny_model(), clips, clips, tmp_path / "cut", config, resume=True, placement=Placement(torch.device("cpu"))
        )
    straight, resumed = load(tmp_path / "straight").state_dict(), load(tmp_path / "cut").state_dict()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    provenance = load(tmp_path / "cut").config.provenance
    assert provenance["distributed"] == {"world_size": 2, "backend": "gloo", "device_type": "cpu"}


def test_torchrun_two_processes_write_one_checkpoint_that_exports_and_builds(tmp_path: Path) -> None:
    """``torchrun --standalone --nproc_per_node=2 -m vared2 train …`` (gloo): one run, one checkpoint (rank 0's),
    the gate fitted once; it loads, exports and builds."""
    from vared2.engines.build import build_engines
    from vared2.export.onnx_export import export_checkpoint

    data, out = tmp_path / "data", tmp_path / "ckpt"
    result = CliRunner().invoke(cli, ["synth", "--out", str(data), "--clips", "20", "--frames", "8", "--size", "40"])
    assert result.exit_code == 0, result.output
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    command = [*launcher, "--standalone", "--nproc_per_node=2", "-m", "vared2", "train", "--data", str(data)]
    command += ["--out", str(out), "--width", "0.125", "--frames", str(FRAMES), "--size", str(SIZE), "--epochs", "2"]
    command += ["--warmup-epochs", "1", "--batch-size", "4", "--buckets", "full,t1", "--threads", "1", "--fit-gate"]
    command += ["--device", "cpu", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"torchrun 2-rank gloo run: {seconds:.1f} s")
    assert done.stdout.count("checkpoint: ") == 1  # rank 0 speaks for the run
    assert sorted(p.name for p in out.iterdir()) == [
        "model.json",
        "model.safetensors",
        "train_state.json",
        "train_state.safetensors",
    ]
    model = load(out)
    provenance = model.config.provenance
    assert provenance["distributed"] == {"world_size": 2, "backend": "gloo", "device_type": "cpu"}
    assert provenance["epochs_done"] == 2 and "gate_fit" in provenance and "batchnorm_calibration" in provenance
    assert sum(provenance["history"][-1]["histogram"]) == 4  # the 4 validation clips, counted once over both ranks
    onnx = export_checkpoint(out, tmp_path / "onnx")
    engines = build_engines(onnx.directory, tmp_path / "engines", backend="onnxruntime")
    assert (Path(engines) / "manifest.json").is_file()


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_follows_the_device(tmp_path: Path, precision: str) -> None:
    """On CUDA, under autocast (fp16 through a gradient scaler): a sandwich and a gated epoch, finite weights,
    the checkpoint on the CPU; evaluation and the BatchNorm calibration run on the device too."""
    from vared2.models.calibrate import calibrate_batchnorm, stack_dataset

    clips = tiny_clips()
    config = TrainConfig(epochs=2, warmup_epochs=1, batch_size=4, precision=precision, device="cuda")
    model = tiny_model()
    history = train(model, clips, clips, tmp_path / "c", config)
    assert len(history) == 2 and next(model.parameters()).device.type == "cuda"
    calibrate_batchnorm(model, stack_dataset(clips)[0])
    saved = load(tmp_path / "c")
    assert saved.config.provenance["distributed"]["device_type"] == "cuda"
    assert all(bool(torch.isfinite(t).all()) for t in saved.state_dict().values() if t.is_floating_point())


def test_fp16_and_a_missing_cuda_device_are_refused_on_the_cpu(tmp_path: Path) -> None:
    clips = tiny_clips()
    config = TrainConfig(epochs=1, warmup_epochs=0, precision="fp16")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(tiny_model(), clips, clips, tmp_path / "c", config, placement=Placement(torch.device("cpu")))
    if not torch.cuda.is_available():
        result = CliRunner().invoke(
            cli, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "d"), "--device", "cuda"]
        )
        assert result.exit_code == 2 and "CUDA is not available" in result.output, result.output
