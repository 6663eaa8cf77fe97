"""``vared2 convert`` (issue 26): torchvision weights from a local file become a checkpoint whose full bucket is
torchvision's model; a pickle with code is refused; ``--init-from`` maps the classifier by class name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision.models.video as tv
from click.testing import CliRunner
from safetensors.torch import save_file

from vared2.cli import cli
from vared2.models import VaRed2VideoResNet, load, r2plus1d_18
from vared2.models.video_resnet import copy_weights

FRAMES, SIZE = 8, 32


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """A torchvision r2plus1d_18 with 5 classes and BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    model = tv.r2plus1d_18(weights=None, num_classes=5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.1)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
    return model.eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_gives_torchvisions_model_as_the_full_bucket(
    tmp_path: Path, reference: torch.nn.Module, suffix: str
) -> None:
    weights = tmp_path / f"r2plus1d_18{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, weights) if suffix == ".pth" else save_file(state, str(weights))
    out = tmp_path / "ckpt"
    args = ["convert", "--from", "torchvision:r2plus1d_18", "--weights", str(weights), "--frames", str(FRAMES)]
    result = CliRunner().invoke(cli, [*args, "--size", str(SIZE), "--buckets", "full,t1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load(out)
    assert model.buckets.names == ("t0c0/t0c0/t0c0/t0c0", "t1c0/t1c0/t1c0/t0c0")
    clip = torch.randn(3, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        difference = float((model(clip, bucket=0) - reference(clip)).abs().max())
    assert difference <= 1e-5
    converted = model.config.provenance["converted_from"]
    assert converted["source"] == "torchvision:r2plus1d_18" and converted["full_bucket_max_abs_diff"] <= 1e-5
    assert len(converted["weights_sha256"]) == 64


def test_a_pickle_with_code_and_a_missing_weights_file_are_refused(tmp_path: Path, reference: torch.nn.Module) -> None:
    """A whole pickled model (code, not a state dict) is refused with the reason; without --weights nothing is
    downloaded: the message says where torchvision's cache would be and what to fetch."""
    pickled = tmp_path / "model.pth"
    torch.save(reference, pickled)
    runner = CliRunner()
    args = ["convert", "--from", "torchvision:r2plus1d_18", "--out", str(tmp_path / "out")]
    result = runner.invoke(cli, [*args, "--weights", str(pickled)])
    assert result.exit_code == 2 and "a pickle with code in it" in result.output, result.output
    assert "does not unpickle code" in result.output and not (tmp_path / "out").exists()
    result = runner.invoke(cli, args, env={"TORCH_HOME": str(tmp_path / "cache")})
    assert result.exit_code == 2 and "downloads nothing" in result.output and "r2plus1d_18-" in result.output
    result = runner.invoke(cli, ["convert", "--from", "timm:r2plus1d_18", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "expected torchvision:<backbone>" in result.output


def test_init_from_maps_the_classifier_by_class_name() -> None:
    """Another model's classifier rows follow the class names (a subset of its classes, as Mini-Kinetics-200 of
    Kinetics-400); classes it does not name leave the classifier as built."""
    torch.manual_seed(0)
    config = replace(r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5).config, labels=tuple("abcde"))
    source = VaRed2VideoResNet(config)
    with torch.no_grad():
        source.fc.weight.normal_()
    target = VaRed2VideoResNet(replace(config, num_classes=2, labels=("d", "b")))
    assert "fc.weight" not in copy_weights(source, target)
    torch.testing.assert_close(target.fc.weight, source.fc.weight[[3, 1]])
    other = VaRed2VideoResNet(replace(config, num_classes=2, labels=("x", "b")))
    assert "fc.weight" in copy_weights(source, other)
