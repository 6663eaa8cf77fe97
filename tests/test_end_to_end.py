"""The whole pipeline on the shipped demo model: ./build.sh's main job, then a generated MP4 through the
runtime's stream, equal to PyTorch eager on the same frames (issue 5 and issue 6 "must show")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vared2.cli import cli
from vared2.formats.manifest import Manifest
from vared2.formats.video import write_video
from vared2.models import load
from vared2.models.synthetic import generate
from vared2.pipeline import DEMO_CHECKPOINT
from vared2.pipeline import main as pipeline_main
from vared2.runtime import Runtime
from vared2.runtime.video import decode


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``./build.sh``'s main job on the demo checkpoint (the short benchmark is tested in test_bench*)."""
    out = tmp_path_factory.mktemp("artifacts")
    result = CliRunner().invoke(pipeline_main, ["--out", str(out), "--skip-bench"])
    assert result.exit_code == 0, result.output
    assert "all graphs match" in result.output and "vared2 infer" in result.output
    return out


def test_the_main_job_leaves_a_valid_engine_directory(deployed: Path) -> None:
    manifest = Manifest.load(deployed / "engines" / "demo")  # validates the schema and every sha256
    model = load(DEMO_CHECKPOINT)
    assert manifest.backend == "onnxruntime"
    assert [b.name for b in manifest.buckets] == [b.name for b in model.buckets]
    assert (deployed / "samples" / "sample.mp4").stat().st_size > 0


def test_stream_equals_pytorch_eager_on_the_same_frames(deployed: Path, tmp_path: Path) -> None:
    model = load(DEMO_CHECKPOINT).eval()
    config = model.config
    video = tmp_path / "clips.mp4"
    clips = generate(4, seed=11, frames=config.frames, size=config.size)
    write_video(video, np.concatenate([c.frames for c in clips]))

    with Runtime.open(deployed / "engines" / "demo") as runtime:
        results = list(runtime.stream(video, stride=config.frames // 2))
    frames = np.stack([f.rgb for f in decode(video, config.size, config.size)])
    assert len(results) == (len(frames) - config.frames) // (config.frames // 2) + 1

    mean = torch.tensor(config.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1, 1)
    windows = np.stack([frames[r.start_frame : r.end_frame] for r in results])
    x = (torch.from_numpy(windows).permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    with torch.no_grad():
        logits, choices = model(x)
    probabilities = logits.softmax(1).numpy()
    assert [r.bucket for r in results] == choices.tolist(), "the runtime's bucket choice must be the gate's"
    for r, expected in zip(results, probabilities, strict=True):
        np.testing.assert_allclose(r.probabilities, expected, atol=1e-4, rtol=0)
        assert r.label == config.labels[int(expected.argmax())]
    assert {r.bucket for r in results} == {0, 1}  # the gate picks [1, 1, 1, 1, 1, 0, 0] here: both buckets run


def test_infer_command_on_the_demo_engines(deployed: Path) -> None:
    sample = deployed / "samples" / "sample.mp4"
    result = CliRunner().invoke(cli, ["infer", str(deployed / "engines" / "demo"), str(sample), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert lines and all({"label", "score", "bucket", "gflops"} <= set(line) for line in lines)


def test_the_main_job_refuses_bad_options_before_it_exports(tmp_path: Path) -> None:
    """Export and parity take minutes at full size: options the build would refuse are refused first."""
    import importlib.util

    cases = [
        (["--fp16"], "precision fp16: a TensorRT option (ONNX Runtime engines are fp32 or int8"),
        (["--max-batch", "0"], "max_batch: expected a positive integer"),
        (["--name", "../elsewhere"], "expected a plain folder name"),
    ]
    if importlib.util.find_spec("tensorrt") is None:
        cases.append((["--backend", "tensorrt"], "needs NVIDIA TensorRT's Python package"))
    for args, message in cases:
        result = CliRunner().invoke(pipeline_main, ["--out", str(tmp_path / "out"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "==> export" not in result.output, (args, result.output)
    assert list(tmp_path.iterdir()) == []
