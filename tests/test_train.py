"""Training and evaluation (issue 3): real steps on a tiny model, real MP4 data, resumable checkpoints."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vared2.cli import cli
from vared2.models import load, r2plus1d_18
from vared2.models.dataset import ClipListDataset
from vared2.models.synthetic import generate
from vared2.models.train import (
    TrainConfig,
    autocast,
    learning_rate,
    routed_forward,
    sandwich_buckets,
    train,
    training_loss,
)

FRAMES, SIZE = 4, 32


def tiny_model(num_classes: int = 12) -> torch.nn.Module:
    torch.manual_seed(0)
    return r2plus1d_18(width=0.125, frames=FRAMES, size=SIZE, num_classes=num_classes)


@pytest.fixture(scope="module")
def clips() -> ClipListDataset:
    return ClipListDataset(generate(24, seed=3, frames=8, size=40), frames=FRAMES, size=SIZE)


def batch(dataset: ClipListDataset, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(n)]
    return torch.stack([c for c, _, _ in items]), torch.tensor([label for _, label, _ in items])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_steps_reduce_the_loss(clips: ClipListDataset, precision: str) -> None:
    """Warm-up (sandwich) steps: the full bucket's cross-entropy falls, and so does each reduced bucket's,
    though only the full one sees the labels (the others learn from its predictions) — in fp32 and under
    bfloat16 autocast."""
    model = tiny_model().train()
    x, y = batch(clips)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = TrainConfig(precision=precision)

    def label_losses() -> list[float]:
        with torch.no_grad():
            return [float(F.cross_entropy(model(x, bucket=k), y)) for k in range(len(model.buckets))]

    before = label_losses()
    torch.manual_seed(0)  # which reduced bucket each sandwich step adds
    for _ in range(20):
        with autocast(config):
            loss, _, _ = training_loss(model, x, y, tau=1.0, config=config, gated=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = label_losses()
    assert after[0] < 0.5 * before[0], (before, after)
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)


def test_the_distillation_weight_scales_only_the_reduced_buckets_terms(clips: ClipListDataset) -> None:
    """``distill_weight`` multiplies each sandwich bucket's distillation, not the full bucket's cross-entropy."""
    model = tiny_model().eval()  # eval: BatchNorm statistics do not move between the calls
    with torch.no_grad():
        model.fc.weight.normal_(0, 1.0)  # fresh logits are all near 0; make the buckets' predictions differ
    x, y = batch(clips)
    losses = {}
    for weight in (0.0, 0.3, 1.0):
        torch.manual_seed(0)  # the same sandwich bucket each time
        with torch.no_grad():
            loss, full, _ = training_loss(model, x, y, tau=1.0, config=TrainConfig(distill_weight=weight), gated=False)
        losses[weight] = float(loss)
    assert losses[0.0] == pytest.approx(float(F.cross_entropy(full, y)), rel=1e-6)
    distillation = losses[1.0] - losses[0.0]
    assert distillation > 0.05  # the reduced buckets disagree with the full one
    assert losses[0.3] - losses[0.0] == pytest.approx(0.3 * distillation, rel=1e-4)


def test_the_gate_receives_gradients_through_the_routed_buckets(clips: ClipListDataset) -> None:
    model = tiny_model().train()
    x, y = batch(clips)
    torch.manual_seed(1)
    loss, logits, chosen = training_loss(model, x, y, tau=1.0, config=TrainConfig(), gated=True)
    loss.backward()
    assert chosen is not None and logits.shape == (len(y), 12)
    gate_grads = [p.grad for p in model.gate.parameters()]
    assert all(g is not None for g in gate_grads)
    assert sum(float(g.abs().sum()) for g in gate_grads if g is not None) > 0


def test_routing_runs_each_sample_through_its_bucket(clips: ClipListDataset) -> None:
    model = tiny_model().eval()
    x, _ = batch(clips, 6)
    choices = torch.tensor([0, 3, 3, 5, 1, 0])
    weights = torch.nn.functional.one_hot(choices, len(model.buckets)).float()
    with torch.no_grad():
        features = model.features(x)
        routed = routed_forward(model, features, weights)
        for i, k in enumerate(choices.tolist()):
            torch.testing.assert_close(routed[i], model.forward_features(features[i : i + 1], k)[0])


def test_training_is_deterministic_and_resumes_exactly(clips: ClipListDataset, tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, warmup_epochs=1, batch_size=8, seed=5, translate=2)  # augmentation included
    train(tiny_model(), clips, clips, tmp_path / "straight", config)
    train(tiny_model(), clips, clips, tmp_path / "again", config)

    def interrupt(stats: object) -> None:
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), clips, clips, tmp_path / "resumed", config, on_epoch=interrupt)
    history = train(tiny_model(), clips, clips, tmp_path / "resumed", config, resume=True)
    assert [h.epoch for h in history] == [1, 2]
    straight = load(tmp_path / "straight").state_dict()
    for other in ("again", "resumed"):
        state = load(tmp_path / other).state_dict()
        for name, value in straight.items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=f"{other}: {name}")
    # The translations are part of what was trained: without them the same run ends elsewhere.
    train(tiny_model(), clips, clips, tmp_path / "unmoved", replace(config, translate=0))
    unmoved = load(tmp_path / "unmoved").state_dict()
    assert any(not torch.equal(unmoved[name], value) for name, value in straight.items())


def test_the_learning_rate_ramps_up_then_follows_the_cosine() -> None:
    plain, ramped = TrainConfig(epochs=4, lr=1e-3), TrainConfig(epochs=4, lr=1e-3, lr_warmup_epochs=1)
    steps = 10  # per epoch
    assert learning_rate(plain, 0, steps) == pytest.approx(1e-3)
    assert learning_rate(plain, 20, steps) == pytest.approx(0.5e-3)  # half way through the cosine
    ramp = [learning_rate(ramped, step, steps) for step in range(steps)]
    assert ramp[0] == pytest.approx(1e-4)  # a tenth of the way up at the first step
    assert all(a < b for a, b in itertools.pairwise(ramp))
    for step in range(steps - 1, 4 * steps):  # from the ramp's last step on, the plain schedule
        assert learning_rate(ramped, step, steps) == learning_rate(plain, step, steps)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs and batch_size"),
        ({"warmup_epochs": 13}, "warmup_epochs must be within 0..epochs"),
        ({"warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"),
        ({"target_ratio": 0.0}, "target_ratio must be in"),
        ({"tau_end": 6.0}, "tau_start >= tau_end"),
        ({"translate": -1}, "translate must be >= 0"),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16, got .fp8."),
        ({"precision": "fp16", "device": "cpu"}, "precision fp16 needs a CUDA device"),
        ({"workers": -1}, "workers must be >= 0, got -1"),
        ({"distill_weight": -0.5}, "distill_weight must be a finite number >= 0, got -0.5"),
        ({"lr_warmup_epochs": 13}, "lr_warmup_epochs must be within 0..epochs"),
        ({"threads": 0}, "threads must be at least 1 .*got 0"),
        ({"threads": -2}, "threads must be at least 1 .*got -2"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"flops_weight": -1.0}, "flops_weight must be a finite number >= 0, got -1.0"),
    ],
)
def test_a_bad_training_setting_is_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(TrainConfig(), **change).validate()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--threads", "0"], "'--threads': 0 is not in the range x>=1"),
        (["--threads", "-2"], "'--threads': -2 is not in the range x>=1"),
        (["--lr", "0"], "'--lr': 0.0 is not in the range x>0"),
        (["--flops-weight", "-1"], "'--flops-weight': -1.0 is not in the range x>=0"),
        (["--epochs", "1", "--warmup-epochs", "3"], "got 3; lower it (--warmup-epochs) to at most 1"),
    ],
)
def test_a_bad_training_option_is_named_on_the_command_line(tmp_path: Path, option: list[str], message: str) -> None:
    """Refused before the data is read (DATA is an empty folder), naming the option — not a traceback from
    ``torch.set_num_threads``, nor ``--threads 0`` silently meaning all cores."""
    (tmp_path / "data").mkdir()
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"), *option]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "c").exists()


def test_train_refuses_a_non_empty_out_unless_resume_or_overwrite(tmp_path: Path) -> None:
    """A second run into the same --out (or into a folder of other files) stops before any work; --overwrite
    replaces the checkpoint there, --resume continues it, and an empty folder is as good as a new one."""
    from vared2.models.recipe import run_training

    runner = CliRunner()
    data, out = tmp_path / "data", tmp_path / "ckpt"
    result = runner.invoke(cli, ["synth", "--out", str(data), "--clips", "16", "--frames", "8", "--size", "40"])
    assert result.exit_code == 0, result.output
    out.mkdir()
    (out / "model.json").write_text("a finished run\n")
    (out / "notes.txt").write_text("unrelated\n")
    args = ["train", "--data", str(data), "--out", str(out), "--width", "0.125", "--frames", str(FRAMES)]
    args += ["--size", str(SIZE), "--epochs", "1", "--static"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"--out {out} already exists and is not empty" in result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (out / "model.json").read_text() == "a finished run\n" and sorted(p.name for p in out.iterdir()) == [
        "model.json",
        "notes.txt",
    ]
    with pytest.raises(FileExistsError, match="not empty"):  # Python callers get the same rule
        run_training(data, out, TrainConfig(epochs=1, static=True, warmup_epochs=0), width=0.125, frames=FRAMES)
    result = runner.invoke(cli, [*args, "--resume", "--overwrite"])
    assert result.exit_code == 2 and "pass only one" in result.output, result.output
    result = runner.invoke(cli, [*args, "--resume"])  # a finished model but no training state: nothing to continue
    assert result.exit_code == 2 and "holds no training run to continue" in result.output, result.output

    result = runner.invoke(cli, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert load(out).config.provenance["epochs_done"] == 1
    assert (out / "notes.txt").read_text() == "unrelated\n"  # only the checkpoint's files are replaced
    result = runner.invoke(cli, [*args[:-3], "--epochs", "2", "--static", "--resume"])
    assert result.exit_code == 0, result.output
    assert load(out).config.provenance["epochs_done"] == 2

    (tmp_path / "empty").mkdir()
    empty = ["--out", str(tmp_path / "empty"), "--data", str(tmp_path / "empty")]
    result = runner.invoke(cli, ["train", *empty, "--epochs", "1", "--static"])
    assert result.exit_code == 2 and "no 'train' split" in result.output, result.output  # past the check


def test_fit_gate_checks_its_target_and_its_out_before_any_work(tmp_path: Path) -> None:
    """A --target-ratio outside (0, 1] is refused as train refuses it (it used to be fitted and saved); a non-empty
    --out needs --overwrite, which replaces the checkpoint there and drops the replaced run's training state;
    the checkpoint's own directory is refused even with --overwrite."""
    from vared2.models import save
    from vared2.models.recipe import run_gate_fit

    runner = CliRunner()
    ckpt, out, data = tmp_path / "ckpt", tmp_path / "refit", tmp_path / "data"
    save(tiny_model(), ckpt)
    refit = ["fit-gate", str(ckpt), "--data", str(tmp_path), "--out", str(out)]
    for ratio in ("-1", "0", "2"):
        result = runner.invoke(cli, [*refit, "--target-ratio", ratio])
        assert result.exit_code == 2 and "'--target-ratio'" in result.output and "0.0<x<=1.0" in result.output
    with pytest.raises(ValueError, match=r"target_ratio \(--target-ratio\) must be in \(0, 1\], got -1"):
        run_gate_fit(tmp_path / "no checkpoint", tmp_path, out, -1.0)  # checked before anything is read
    assert not out.exists()

    result = runner.invoke(cli, ["synth", "--out", str(data), "--clips", "16", "--frames", "8", "--size", "40"])
    assert result.exit_code == 0, result.output
    out.mkdir()
    for name in ("model.json", "train_state.json", "train_state.safetensors"):
        (out / name).write_text("an earlier run\n")
    refit = ["fit-gate", str(ckpt), "--data", str(data), "--out", str(out), "--target-ratio", "0.6"]
    result = runner.invoke(cli, refit)
    assert result.exit_code == 2 and f"--out {out} already exists and is not empty" in result.output
    assert "--overwrite" in result.output and (out / "model.json").read_text() == "an earlier run\n"
    result = runner.invoke(cli, [*refit[:4], "--out", str(ckpt), "--overwrite"])
    assert result.exit_code == 2 and "the same directory as the checkpoint" in result.output
    result = runner.invoke(cli, [*refit, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert load(out).config.provenance["refit_from"] == str(ckpt)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]


def test_resume_without_a_saved_run_is_a_clear_error(clips: ClipListDataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint"):
        train(tiny_model(), clips, clips, tmp_path / "nothing", TrainConfig(epochs=1, warmup_epochs=0), resume=True)


def test_synth_train_evaluate_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    result = runner.invoke(cli, ["synth", "--out", str(data), "--clips", "30", "--frames", "8", "--size", "40"])
    assert result.exit_code == 0, result.output
    args = ["train", "--data", str(data), "--out", str(ckpt), "--width", "0.125", "--frames", str(FRAMES)]
    args += ["--size", str(SIZE), "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--fit-gate"]
    args += ["--translate", "2", "--precision", "bf16", "--distill-weight", "0.5", "--lr-warmup-epochs", "1"]
    # The command recorded is the one given, also in-process (sys.argv is pytest's here).
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.loads((ckpt / "model.json").read_text())["config"]
    provenance = config["provenance"]
    train_clips = sum(1 for _ in (data / "train.csv").open()) - 1  # the CSV has a header line
    assert provenance["batchnorm_calibration"]["clips"] == train_clips
    assert provenance["batchnorm_calibration"]["split"] == "train"
    # The run's last figure is the checkpoint as saved (after recalibration and the gate fit), not the last epoch.
    final = provenance["final_validation"]
    assert final["after"] == "the gate fit"
    figure = f"checkpoint (after the gate fit): val acc {final['val_accuracy']:.3f}"
    assert figure in result.stdout.splitlines()[-2], result.stdout
    assert 0 < provenance["gate_fit"]["oracle_ratio"] <= 1.0
    assert provenance["command"] == " ".join(["vared2", *args]) == provenance["gate_fit"]["command"]
    assert provenance["seed"] == 0 and provenance["data"]["seed"] == 0
    assert provenance["train_config"]["translate"] == 2
    assert provenance["train_config"]["precision"] == "bf16"
    assert provenance["train_config"]["distill_weight"] == 0.5
    assert provenance["train_config"]["lr_warmup_epochs"] == 1
    assert len(config["labels"]) == config["num_classes"] == 12
    report, plot = tmp_path / "new_folder" / "eval.json", tmp_path / "hist.png"  # --json makes its folder
    args = ["evaluate", str(ckpt), "--data", str(data), "--json", str(report), "--plot", str(plot)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    evaluation = json.loads(report.read_text())
    assert evaluation["samples"] == sum(evaluation["histogram"]) == 6
    assert evaluation["accuracy"] == pytest.approx(final["val_accuracy"])  # evaluate agrees with the final figure
    assert evaluation["histogram"] == final["histogram"]
    assert 0 < evaluation["gflops_ratio"] <= 1.0 + 1e-6
    assert set(evaluation["gflops_by_motion"]) == {"static", "slow", "fast"}
    assert plot.stat().st_size > 1000
    assert "accuracy" in result.output and "motion" in result.output
    # A bucket forced by its short name is the one forced by its id (t1 is t1c0/t1c0/t0c0/t0c0 at 4 frames).
    forced = [tmp_path / "t1.json", tmp_path / "3.json"]
    for key, out in zip(["t1", "3"], forced, strict=True):
        result = runner.invoke(cli, ["evaluate", str(ckpt), "--data", str(data), "--bucket", key, "--json", str(out)])
        assert result.exit_code == 0, result.output
    assert json.loads(forced[0].read_text()) == json.loads(forced[1].read_text())
    assert json.loads(forced[0].read_text())["forced_bucket"] is not None


def test_train_rejects_bad_data_with_a_clear_reason(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'empty'}: no 'train' split; expected {tmp_path / 'empty' / 'train.csv'}" in result.output


def test_warm_up_trains_each_bucket_with_its_own_batchnorm_statistics(clips: ClipListDataset, tmp_path: Path) -> None:
    model = tiny_model()
    config = TrainConfig(epochs=1, warmup_epochs=1, batch_size=12)
    train(model, clips, clips, tmp_path / "sandwich", config)
    # the cheapest bucket runs every warm-up step, so its statistics left their initial value
    cheapest = sandwich_buckets(model)[0]
    bn = model.bucket_batchnorms()[0]
    assert not torch.equal(bn.bucket_running_mean[cheapest - 1], torch.zeros(bn.num_features))
    assert not torch.allclose(bn.bucket_running_mean[cheapest - 1], bn.running_mean)  # type: ignore[arg-type]


def test_sandwich_takes_the_cheapest_bucket_and_one_other() -> None:
    model = tiny_model()
    costs = [model.gflops(k) for k in range(len(model.buckets))]
    torch.manual_seed(0)
    picks = [sandwich_buckets(model) for _ in range(30)]
    assert all(p[0] == costs.index(min(costs[1:])) and p[1] not in (0, p[0]) for p in picks)
    assert len({p[1] for p in picks}) == len(costs) - 2  # every other reduced bucket gets its turn


def test_init_from_a_different_architecture_is_a_clear_error(tmp_path: Path) -> None:
    from vared2.models import save

    save(r2plus1d_18(width=0.25, frames=FRAMES, size=SIZE, num_classes=12), tmp_path / "other")
    with pytest.raises(ValueError, match="init-from"):
        one_epoch_on_new_data(tmp_path, init_from=tmp_path / "other")
    assert not (tmp_path / "c").exists()


def one_epoch_on_new_data(tmp_path: Path, **options: Path) -> None:
    """``run_training`` for one epoch of a tiny model on 24 fresh synthetic clips, into ``tmp_path / "c"``."""
    from vared2.models.recipe import run_training

    data = tmp_path / "data"
    args = ["synth", "--out", str(data), "--clips", "24", "--frames", "8", "--size", "40"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    config = TrainConfig(epochs=1, warmup_epochs=1)
    run_training(data, tmp_path / "c", config, width=0.125, frames=FRAMES, size=SIZE, **options)


def test_a_teacher_is_what_the_reduced_buckets_learn(clips: ClipListDataset) -> None:
    """With teacher logits, the sandwich buckets learn the teacher's predictions, not the labels or the
    full bucket's: a teacher that names class 0 for every clip pulls the cheapest bucket there."""
    model = tiny_model().train()
    x, y = batch(clips)
    teacher = torch.full((len(y), 12), -8.0)
    teacher[:, 0] = 8.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(20):
        loss, _, _ = training_loss(model, x, y, tau=1.0, config=TrainConfig(), gated=False, teacher_logits=teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cheapest = sandwich_buckets(model)[0]
    with torch.no_grad():
        picked = model.eval()(x, bucket=cheapest).argmax(1)
    assert (y != 0).sum() > len(y) // 2  # the labels disagree with the teacher on most clips
    assert (picked == 0).float().mean() > 0.9, picked


@pytest.mark.parametrize(
    ("size", "message"),
    [(SIZE + 8, r"--teacher .*teacher: it reads 4x40 clips"), (SIZE, r"--teacher .*teacher: its classes \[\] differ")],
)
def test_a_teacher_that_reads_other_clips_or_names_other_classes_is_a_clear_error(
    tmp_path: Path, size: int, message: str
) -> None:
    """Another crop size, or no class names (the data's are the synthetic set's 12): stopped before training."""
    from vared2.models import save

    save(r2plus1d_18(width=0.125, frames=FRAMES, size=size, num_classes=12), tmp_path / "teacher")
    with pytest.raises(ValueError, match=message):
        one_epoch_on_new_data(tmp_path, teacher=tmp_path / "teacher")
    assert not (tmp_path / "c").exists()


def test_a_bucket_table_of_ones_own_from_the_command_line(tmp_path: Path) -> None:
    """``--buckets`` sets the table (short names of the default one, or full names); ``--init-from`` starts it
    from a checkpoint with the default table; a bad name, or resuming with another table, is named."""
    runner = CliRunner()
    data = tmp_path / "data"
    assert (
        runner.invoke(cli, ["synth", "--out", str(data), "--clips", "24", "--frames", "8", "--size", "40"]).exit_code
        == 0
    )
    common = ["--data", str(data), "--width", "0.125", "--frames", str(FRAMES), "--size", str(SIZE), "--epochs", "1"]
    result = runner.invoke(cli, ["train", *common, "--out", str(tmp_path / "static"), "--static"])
    assert result.exit_code == 0, result.output
    table = ["full", "t1", "t1c2/t1c2/t0c2/t0c2"]
    args = ["train", *common, "--out", str(tmp_path / "dyn"), "--warmup-epochs", "1", "--buckets", ",".join(table)]
    result = runner.invoke(cli, [*args, "--init-from", str(tmp_path / "static")])
    assert result.exit_code == 0, result.output
    model = load(tmp_path / "dyn")
    assert model.buckets.names == ("t0c0/t0c0/t0c0/t0c0", "t1c0/t1c0/t0c0/t0c0", "t1c2/t1c2/t0c2/t0c2")
    assert model.config.provenance["init_from"]["path"] == str(tmp_path / "static")

    bad = ["--out", str(tmp_path / "bad"), "--warmup-epochs", "1", "--buckets", "full,t9"]
    result = runner.invoke(cli, ["train", *common, *bad])
    assert result.exit_code == 2 and "'t9'" in result.output and "t1c2" in result.output
    assert not (tmp_path / "bad").exists()
    result = runner.invoke(
        cli, ["train", *common, "--out", str(tmp_path / "dyn"), "--resume", "--epochs", "2", "--warmup-epochs", "1"]
    )
    assert result.exit_code == 2 and "--resume" in result.output and "t1c2/t1c2/t0c2/t0c2" in result.output


def test_the_initial_weights_follow_the_seed(tmp_path: Path) -> None:
    """A fresh run's weights come from ``--seed`` alone, not from whatever drew from torch's RNG before it."""
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(cli, ["synth", "--out", str(data), "--clips", "16", "--frames", "8", "--size", "40"])
    assert result.exit_code == 0, result.output
    common = ["train", "--data", str(data), "--width", "0.125", "--frames", str(FRAMES), "--size", str(SIZE)]
    common += ["--epochs", "1", "--static"]
    for out, seed, draws in [("a", 0, 0), ("b", 0, 7), ("c", 1, 0)]:
        torch.rand(draws)  # something else used the global RNG first
        result = runner.invoke(cli, [*common, "--seed", str(seed), "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    a, b, c = (load(tmp_path / out).state_dict() for out in "abc")
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(c[name], value) for name, value in a.items() if value.is_floating_point())
