"""Checkpoint directories: exact round trip, and a clear ValueError for every kind of damaged file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vared2.models import VaRed2VideoResNet, load, r2plus1d_18, save
from vared2.models.checkpoint import sha256_of


def trained_looking_model() -> VaRed2VideoResNet:
    """Random values in every tensor (weights, BN statistics, cheap ops, gate), so nothing passes by accident."""
    torch.manual_seed(0)
    model = r2plus1d_18(frames=8, size=32, width=0.25, num_classes=3)
    model.config.provenance = {"note": "test", "epochs": 1}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.2)
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[VaRed2VideoResNet, Path]:
    model = trained_looking_model()
    return model, save(model, tmp_path / "ckpt")


def rewrite(directory: Path, change: dict[str, torch.Tensor | None]) -> None:
    """Replace/drop/add tensors and record the new sha256, as a careless tool might."""
    tensors = load_file(str(directory / "model.safetensors"))
    for name, value in change.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    save_file(tensors, str(directory / "model.safetensors"))
    document = json.loads((directory / "model.json").read_text())
    document["weights"]["sha256"] = sha256_of(directory / "model.safetensors")
    (directory / "model.json").write_text(json.dumps(document))


def test_round_trip_is_exact(checkpoint: tuple[VaRed2VideoResNet, Path]) -> None:
    model, directory = checkpoint
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left
    loaded = load(directory)
    assert not loaded.training and loaded.config == model.config
    assert loaded.config.provenance == {"note": "test", "epochs": 1}
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        for k in range(len(model.buckets)):
            assert torch.equal(loaded(x, bucket=k), model(x, bucket=k))
        a, b = loaded(x), model(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    document = json.loads((directory / "model.json").read_text())
    assert document["format"] == "vared2-checkpoint" and document["config"]["buckets"] == list(model.buckets.names)
    save(loaded, directory)  # overwriting an existing checkpoint works and stays loadable
    assert torch.equal(load(directory).fc.weight, model.fc.weight)


def test_truncated_weights(checkpoint: tuple[VaRed2VideoResNet, Path]) -> None:
    _, directory = checkpoint
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 .* truncated, corrupted or was replaced"):
        load(directory)
    # Even with a matching hash, a truncated file is refused by the safetensors reader.
    rewrite_sha = json.loads((directory / "model.json").read_text())
    rewrite_sha["weights"]["sha256"] = sha256_of(weights)
    (directory / "model.json").write_text(json.dumps(rewrite_sha))
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load(directory)


def test_tampered_weights(checkpoint: tuple[VaRed2VideoResNet, Path]) -> None:
    _, directory = checkpoint
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 [0-9a-f]{64} does not match"):
        load(directory)


def test_missing_extra_and_misshapen_tensors(checkpoint: tuple[VaRed2VideoResNet, Path]) -> None:
    model, directory = checkpoint
    key = "layer1.0.conv1.0.0.temporal_scale.1"
    shape = tuple(model.state_dict()[key].shape)
    rewrite(directory, {key: None})
    with pytest.raises(ValueError, match=r"missing \[layer1\.0\.conv1\.0\.0\.temporal_scale\.1\], unexpected \[\]"):
        load(directory)
    rewrite(directory, {key: torch.ones(shape), "extra.weight": torch.ones(2)})
    with pytest.raises(ValueError, match=r"unexpected \[extra\.weight\]"):
        load(directory)
    rewrite(directory, {"extra.weight": None, key: torch.ones(2, shape[1])})
    with pytest.raises(ValueError, match=rf"'{re.escape(key)}' is torch\.float32 \[2, {shape[1]}\], expected"):
        load(directory)
    rewrite(directory, {key: torch.full(shape, float("nan"))})
    with pytest.raises(ValueError, match="NaN or infinity"):
        load(directory)


def test_bad_config_fields(checkpoint: tuple[VaRed2VideoResNet, Path]) -> None:
    _, directory = checkpoint
    path = directory / "model.json"
    good = json.loads(path.read_text())
    for change, message in [
        ({"config": good["config"] | {"frames": "8"}}, r"model\.json: field \"config\": ModelConfig\.frames"),
        ({"config": good["config"] | {"width": 0.5}}, r"'stem\.0\.weight' is torch\.float32 \[8, 3, 1, 7, 7\]"),
        ({"weights": {"file": "other.bin", "sha256": "0" * 64}}, r"model\.json: field \"weights\""),
        ({"format": "something-else"}, r"model\.json: not a vared2 checkpoint"),
        ({"version": 2}, r"model\.json: unsupported checkpoint version 2"),
    ]:
        path.write_text(json.dumps(good | change))
        with pytest.raises(ValueError, match=message):
            load(directory)
    for text in ("{not json", "[" * 100_000 + "]" * 100_000):
        path.write_text(text)
        with pytest.raises(ValueError, match=r"model\.json: not valid JSON"):
            load(directory)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load(directory)


def test_missing_weights_file(checkpoint: tuple[VaRed2VideoResNet, Path]) -> None:
    _, directory = checkpoint
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load(directory)


def test_saved_files_follow_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        directory = save(r2plus1d_18(width=0.125, frames=4, size=32, num_classes=3), tmp_path / "c")
    finally:
        os.umask(mask)
    for name in ("model.safetensors", "model.json"):
        assert (directory / name).stat().st_mode & 0o777 == 0o644
