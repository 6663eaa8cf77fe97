"""int8 engines on ONNX Runtime (issue 24): calibration ranges, the agreement rule, weight sharing of int8 buckets,
the runtime opening an int8 directory, and the CLI's exit code 1 when the quantization is broken."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from vared2.engines import quantize
from vared2.engines.build import build_engines
from vared2.engines.calibration import ClipSet, activation_ranges, share_concat_ranges
from vared2.formats.errors import CheckFailed
from vared2.formats.manifest import Manifest

torch = pytest.importorskip("torch")

FRAMES, SIZE, CLASSES = 4, 32, 5


def _clips(count: int, seed: int, name: str) -> ClipSet:
    """Blocky random clips (8×8 noise upsampled: structure at the scale a tiny network sees) with random labels."""
    rng = np.random.default_rng(seed)
    clips = [
        np.repeat(np.repeat(rng.integers(0, 256, (FRAMES, 8, 8, 3), dtype=np.uint8), 4, 1), 4, 2) for _ in range(count)
    ]
    return ClipSet(
        clips, [int(v) for v in rng.integers(0, CLASSES, count)], name, [f"{name}/{i}" for i in range(count)]
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-0.125 r2plus1d_18 with two buckets (full, t1c2) whose classifier is centred on the pooled features
    of the validation clips, so its top-1 varies from clip to clip: a random network's logits barely depend on
    the input (every clip gets the same class), and agreement would then pass whatever int8 did."""
    from tests.tiny_buckets import randomise
    from vared2.export.onnx_export import export_model
    from vared2.models import r2plus1d_18
    from vared2.models.buckets import default_buckets
    from vared2.models.dataset import normalize_clip

    torch.manual_seed(0)
    names = default_buckets("r2plus1d_18", FRAMES).names
    buckets = [names[0], names[-1]]  # full and t1c2
    model = r2plus1d_18(width=0.125, frames=FRAMES, size=SIZE, num_classes=CLASSES, buckets=buckets).eval()
    randomise(model)
    with torch.no_grad():
        x = torch.stack([normalize_clip(c) for c in _clips(48, 2, "val").clips])
        model.set_bucket(0)
        f = model.features(x)
        pooled = model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(f))))).flatten(1)
        weight = torch.randn(CLASSES, pooled.shape[1], generator=torch.Generator().manual_seed(3))
        std = pooled.std(0)
        weight /= (std + std.mean()) * pooled.shape[1] ** 0.5  # logits of order 1, none dominated by a flat channel
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(-(weight @ pooled.mean(0)))
        out = tmp_path_factory.mktemp("int8") / "onnx"
        export_model(model, out)
    return out


@pytest.fixture(scope="module")
def int8_engine(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_int8(tiny_onnx, tmp_path_factory.mktemp("int8eng") / "tiny-int8")


def _build_int8(onnx_dir: Path, out: Path) -> Path:
    """int8 engines calibrated on 8 clips, checked on 48 others at an agreement bar of 0.8."""
    calibration, validation = _clips(8, 1, "train"), _clips(48, 2, "val")
    return build_engines(
        onnx_dir,
        out,
        precision="int8",
        calibration=calibration,
        validation=validation,
        min_agreement=0.8,
        progress=False,
    )


def test_activation_ranges_are_the_min_and_max_over_every_feed() -> None:
    w = numpy_helper.from_array(np.array([[[[2.0]]], [[[-1.0]]]], dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"]),
            helper.make_node("Relu", ["y"], ["r"]),
            helper.make_node("Concat", ["r", "x"], ["out"], axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 2, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [
        {"x": np.array([1.0, 2.0, 3.0, 0.5], np.float32).reshape(1, 1, 2, 2)},
        {"x": np.full((1, 1, 2, 2), -4.0, np.float32)},
    ]
    ranges = activation_ranges(model, feeds)
    assert ranges["x"] == (-4.0, 3.0)
    assert ranges["y"] == (-8.0, 6.0)  # channel 0: 2x, channel 1: -x
    assert ranges["r"] == (0.0, 6.0)
    assert "w" not in ranges  # weights are quantized by their own values
    shared = share_concat_ranges(model, ranges)
    assert shared["r"] == shared["x"] == shared["out"] == (-4.0, 6.0)
    assert shared["y"] == ranges["y"]


def test_clip_set_names_a_bad_clip_and_hashes_its_list() -> None:
    good = _clips(2, 0, "d")
    assert good.digest() == _clips(2, 5, "d").digest() != _clips(3, 0, "d").digest()
    with pytest.raises(ValueError, match="clip d/1"):
        ClipSet([good.clips[0], good.clips[1][:2]], [0, 0], "d", ["d/0", "d/1"])


def test_int8_build_records_precision_calibration_and_agreement(int8_engine: Path) -> None:
    manifest = Manifest.load(int8_engine)
    assert manifest.precision == "int8"
    options = manifest.build_options
    assert options["calibration"]["clips"] == 8
    assert options["calibration"]["clip_list_sha256"] == _clips(8, 1, "train").digest()
    assert options["min_agreement"] == 0.8
    figures = options["int8_parity"]
    assert set(figures) == {b.file for b in manifest.buckets}
    for f in figures.values():
        assert f["clips"] == 48 and f["agreement"] >= 0.8
    assert options["ort_session_config"]["session.disable_prepacking"] == "0"
    # The buckets are int8 (QDQ around every convolution), the gate fp32, the logits fp32.
    bucket = onnx.load(str(int8_engine / manifest.buckets[0].file), load_external_data=False)
    ops = [n.op_type for n in bucket.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "Gemm" in ops
    gemm = next(n for n in bucket.graph.node if n.op_type == "Gemm")
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in gemm.output for n in bucket.graph.node)
    gate = onnx.load(str(int8_engine / manifest.gate.file), load_external_data=False)
    assert "QuantizeLinear" not in {n.op_type for n in gate.graph.node}


def test_int8_buckets_share_the_full_buckets_weight_rows(int8_engine: Path) -> None:
    from vared2.formats.sessions import SharedWeights

    manifest = Manifest.load(int8_engine)
    options = manifest.build_options
    full, reduced = manifest.buckets[0].file, manifest.buckets[1].file
    shared, total = options["int8_weights_shared"][reduced]
    assert shared > 0 and total > 0
    assert options["weights_stored_bytes"] < options["weights_referenced_bytes"]
    weights = SharedWeights.open(int8_engine)
    full_names, reduced_names = weights.initializers(full), weights.initializers(reduced)
    prefixes = 0
    for name in set(full_names) & set(reduced_names):
        a, b = weights.array(full, name), weights.array(reduced, name)
        if a.dtype == np.int8 and a.shape != b.shape:
            assert np.array_equal(a[: b.shape[0]], b)  # a row prefix of the same stored bytes
            assert a.ctypes.data == b.ctypes.data
            prefixes += 1
    assert prefixes > 0


def test_the_runtime_opens_an_int8_directory_with_prepacking_on(int8_engine: Path) -> None:
    from vared2.runtime import Runtime

    clip = _clips(1, 9, "x").clips[0]
    with Runtime.open(int8_engine, threads=1) as runtime:
        results = [runtime.classify(clip, bucket=b.id) for b in runtime.manifest.buckets]
        session = runtime.backend.buckets[0].session  # type: ignore[attr-defined]
        assert session.get_session_options().get_session_config_entry("session.disable_prepacking") == "0"
    assert all(r.label in {f"class{i}" for i in range(CLASSES)} for r in results)


def test_broken_quantization_fails_the_build_and_leaves_nothing(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "share_concat_ranges", _shrunk)
    out = tmp_path / "broken"
    with pytest.raises(CheckFailed, match="int8 parity failed") as failure:
        _build_int8(tiny_onnx, out)
    assert isinstance(failure.value, quantize.AgreementError)
    assert not out.exists() and not list(tmp_path.glob(".broken*"))


def test_cli_int8_build_reads_the_data_directory_and_exits_1_on_failed_parity(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vared2.cli import cli

    runner = CliRunner()
    data = tmp_path / "data"
    made = runner.invoke(cli, ["synth", "--out", str(data), "--clips", "24", "--frames", "8", "--size", "32"])
    assert made.exit_code == 0, made.output
    out = tmp_path / "eng"
    # Without --calib, and --calib without int8: refused before any work (exit code 2).
    refused = runner.invoke(cli, ["build", str(tiny_onnx), "--out", str(out), "--precision", "int8"])
    assert refused.exit_code == 2 and "--calib" in refused.output
    refused = runner.invoke(cli, ["build", str(tiny_onnx), "--out", str(out), "--calib", str(data)])
    assert refused.exit_code == 2 and "int8" in refused.output
    # A broken quantization (ranges shrunk): the real rule fails, exit code 1, nothing written.
    monkeypatch.setattr(quantize, "share_concat_ranges", _shrunk)
    args = ["build", str(tiny_onnx), "--out", str(out), "--precision", "int8", "--calib", str(data)]
    result = runner.invoke(cli, [*args, "--calib-clips", "4", "--val-clips", "3", "--min-agreement", "0.5"])
    assert result.exit_code == 1, result.output
    assert "check failed: int8 parity failed on 3 validation clips" in result.output, result.output[-600:]
    assert "val.csv" in result.output and not out.exists()


def _shrunk(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """A deliberately broken calibration: ranges a thousandth of the measured ones saturate every activation."""
    return {k: (lo * 1e-3, hi * 1e-3) for k, (lo, hi) in share_concat_ranges(model, ranges).items()}


@pytest.fixture(scope="module")
def fp32_engine(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_engines(tiny_onnx, tmp_path_factory.mktemp("fp32eng") / "tiny-fp32", progress=False)


def test_bench_against_times_both_directories_interleaved(
    int8_engine: Path, fp32_engine: Path, real_other_model: Path, tmp_path: Path
) -> None:
    from vared2.bench.against import run_against
    from vared2.bench.dynamic import policy_string
    from vared2.cli import cli

    manifest = Manifest.load(int8_engine)
    mix = tmp_path / "mix.json"  # what `vared2 bench --data --json` records of a dynamic workload
    counts = {policy_string(b.policy): 2 + b.id for b in manifest.buckets}
    mix.write_text(json.dumps({"dynamic": {"dynamic": {"bucket_counts": counts}}}))
    report = run_against(
        int8_engine, fp32_engine, rounds=2, iterations=2, warmup_ms=0, threads=1, replay=mix, out=io.StringIO()
    )
    assert (report.precision, report.against_precision) == ("int8", "fp32")
    names = [r.name for r in report.rows]
    assert names[0] == "gate" and names[1].startswith("bucket 0") and names[-1] == "dynamic (replayed mix)"
    assert all(len(r.mine) == len(r.other) == 2 and min(r.mine + r.other) > 0 for r in report.rows)
    assert len(report.dynamic_vs_static) == 2
    assert report.efficiency(report.rows[1]) == pytest.approx(1.0)

    runner = CliRunner()
    out = tmp_path / "against.json"
    args = ["bench", str(int8_engine), "--against", str(fp32_engine), "--rounds", "1", "--iterations", "1"]
    result = runner.invoke(cli, [*args, "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "int8 ms" in result.output and "fp32 ms" in result.output and "speedup" in result.output
    assert json.loads(out.read_text())["rows"][0]["name"] == "gate"
    refused = runner.invoke(cli, [*args, "--data", str(tmp_path)])
    assert refused.exit_code == 2 and "--data" in refused.output
    other = runner.invoke(cli, ["bench", str(int8_engine), "--against", str(real_other_model), "--rounds", "1"])
    assert other.exit_code == 2 and "not the same model" in other.output


@pytest.fixture(scope="module")
def real_other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Engines of a model with another bucket table (the toy model: one bucket)."""
    from ort_toy import write_toy_onnx_dir

    onnx_dir = write_toy_onnx_dir(tmp_path_factory.mktemp("toy") / "onnx")
    return build_engines(onnx_dir, tmp_path_factory.mktemp("toyeng") / "toy", progress=False)
