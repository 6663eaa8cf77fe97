"""Export (DESIGN.md §4, issue 4): every bucket to ONNX with the vared2 custom ops, checked against PyTorch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator
from safetensors.torch import load_file, save_file

from vared2.cli import cli
from vared2.export.onnx_export import EXPORT_JSON, export_checkpoint, export_model
from vared2.export.verify import verify_model
from vared2.models import BucketBatchNorm3d, VaRed2VideoResNet, mc3_18, r2plus1d_18, r3d_18, save
from vared2.models.checkpoint import sha256_of

# Standard operators the bucket graphs may use: all of them are in onnx-tensorrt's supported-operator list.
TENSORRT_PARSER_OPS = {
    "Conv", "Relu", "Add", "Mul", "Reshape", "Flatten", "Gemm", "MatMul", "GlobalAveragePool",
    "ReduceMean", "Concat", "Slice", "Transpose", "Unsqueeze", "Squeeze", "Shape", "Gather", "Constant",
    "Cast", "Sub", "Abs", "Div", "Identity",
}  # fmt: skip
CUSTOM_OPS = {("vared2", "TemporalReconstruct"), ("vared2", "ChannelReconstruct")}


def perturb(model: VaRed2VideoResNet, seed: int = 0) -> VaRed2VideoResNet:
    """Random BatchNorm statistics and cheap-op parameters, so folding and reconstruction are really
    exercised (fresh models have identity BatchNorm and copy-initialised cheap ops)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)  # type: ignore[union-attr]
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)  # type: ignore[union-attr]
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
            if isinstance(module, BucketBatchNorm3d):  # each bucket folds its own statistics
                rows = module.bucket_running_mean.shape
                module.bucket_running_mean.copy_(torch.rand(rows, generator=generator) - 0.5)
                module.bucket_running_var.copy_(torch.rand(rows, generator=generator) + 0.5)
        for name, param in model.named_parameters():
            if "temporal" in name or "channel" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def tiny(build=r2plus1d_18, **kwargs) -> VaRed2VideoResNet:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return perturb(build(width=0.125, frames=4, size=32, num_classes=5, **kwargs))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[VaRed2VideoResNet, Path]:
    model = tiny()
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_model(model, out)
    return model, out


def test_every_bucket_is_exported_with_the_custom_ops(tiny_export: tuple[VaRed2VideoResNet, Path]) -> None:
    model, out = tiny_export
    spec = json.loads((out / EXPORT_JSON).read_text())
    assert [b["name"] for b in spec["buckets"]] == [b.name for b in model.buckets]
    for entry in spec["buckets"]:
        graph = onnx.load(str(out / entry["file"]))
        onnx.checker.check_model(graph, full_check=True)
        assert graph.opset_import[0].version == 17 or any(o.version == 17 for o in graph.opset_import)
        ops = {(n.domain or "", n.op_type) for n in graph.graph.node}
        standard = {op for domain, op in ops if domain in ("", "ai.onnx")}
        assert standard <= TENSORRT_PARSER_OPS, f"{entry['file']}: {standard - TENSORRT_PARSER_OPS}"
        assert "BatchNormalization" not in standard, "BatchNorm must be folded"
        custom = [n for n in graph.graph.node if n.domain == "vared2"]
        policies = [tuple(p) for p in entry["policy"]]
        if all(p == (0, 0) for p in policies):
            assert custom == []
        else:
            assert custom, f"{entry['name']} has no vared2 nodes"
            assert {(n.domain, n.op_type) for n in custom} <= CUSTOM_OPS
            for node in custom:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                assert attrs["plugin_namespace"] == b"vared2" and attrs["plugin_version"] == b"1"
            assert {f.name for f in graph.functions} >= {n.op_type for n in custom}
        # The batch axis is dynamic, every other axis static.
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:])


def test_gate_takes_uint8_clips_and_normalises_in_graph(tiny_export: tuple[VaRed2VideoResNet, Path]) -> None:
    _model, out = tiny_export
    gate = onnx.load(str(out / "gate.onnx"))
    clip = gate.graph.input[0]
    assert clip.name == "clip" and clip.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in clip.type.tensor_type.shape.dim[1:]] == [4, 32, 32, 3]
    assert [o.name for o in gate.graph.output] == ["features", "bucket_logits"]


def test_tiny_model_matches_pytorch_through_onnxruntime(tiny_export: tuple[VaRed2VideoResNet, Path]) -> None:
    model, out = tiny_export
    report = verify_model(out, model, batch=3)
    assert report.passed, report.table()
    assert len(report.checks) == 1 + len(model.buckets)
    assert max(max(c.max_abs.values()) for c in report.checks) <= 1e-4


@pytest.mark.parametrize("build", [r3d_18, mc3_18])
def test_other_backbones_export_and_match(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny(build)
    export_model(model, tmp_path / "onnx")
    report = verify_model(tmp_path / "onnx", model)
    assert report.passed, report.table()


def test_verify_detects_a_wrong_weight(tiny_export: tuple[VaRed2VideoResNet, Path], tmp_path: Path) -> None:
    model, out = tiny_export
    broken = tmp_path / "onnx"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    graph = onnx.load(str(broken / "bucket_1.onnx"))
    init = graph.graph.initializer[0]
    values = onnx.numpy_helper.to_array(init).copy()
    values.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    onnx.save(graph, str(broken / "bucket_1.onnx"))
    report = verify_model(broken, model)
    assert not report.passed
    assert [c.graph for c in report.checks if not c.passed] == ["bucket_1"]


def test_onnx_reference_evaluator_agrees_with_onnxruntime(tiny_export: tuple[VaRed2VideoResNet, Path]) -> None:
    """An independent check of the graphs' standard semantics, the local functions included."""
    _model, out = tiny_export
    spec = json.loads((out / EXPORT_JSON).read_text())
    # The bucket with both cheap ops: temporal and channel reconstruction.
    entry = max(spec["buckets"], key=lambda b: sum(pt > 0 and pc > 0 for pt, pc in b["policy"]))
    features = np.random.default_rng(0).standard_normal((1, *spec["gate"]["features_shape"])).astype(np.float32)
    path = str(out / entry["file"])
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"features": features})[0]
    got = ReferenceEvaluator(path).run(None, {"features": features})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_r2plus1d_18_all_buckets_match_at_8x112x112(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = perturb(r2plus1d_18(frames=8, size=112, num_classes=400))
    export_model(model, tmp_path / "onnx")
    report = verify_model(tmp_path / "onnx", model, batch=1)
    assert report.passed, report.table()
    assert len(report.checks) == 1 + len(model.buckets) >= 6


def _checkpoint(tmp_path: Path) -> Path:
    directory = tmp_path / "ckpt"
    save(tiny(), directory)
    return directory


def test_missing_tensor_fails_before_writing(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    tensors = load_file(str(ckpt / "model.safetensors"))
    missing = next(name for name in tensors if name.endswith("weight"))
    del tensors[missing]
    save_file(tensors, str(ckpt / "model.safetensors"))
    # Record the new file's sha256 (as a careless tool might), so the sha check passes and the tensor check is hit.
    document = json.loads((ckpt / "model.json").read_text())
    document["weights"]["sha256"] = sha256_of(ckpt / "model.safetensors")
    (ckpt / "model.json").write_text(json.dumps(document))
    out = tmp_path / "onnx"
    with pytest.raises(ValueError, match=rf"model\.safetensors: .*missing \[{re.escape(missing)}\], unexpected \[\]"):
        export_checkpoint(ckpt, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [ckpt]


def test_unknown_backbone_fails_before_writing(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    config = json.loads((ckpt / "model.json").read_text())
    config["config"]["backbone"] = "resnet9000"
    (ckpt / "model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="resnet9000"):
        export_checkpoint(ckpt, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_bucket_table_the_model_cannot_run_fails_before_writing(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    config = json.loads((ckpt / "model.json").read_text())
    section = config["config"]
    # 4 input frames: the last stage has one frame, so R = 2 cannot divide it.
    section["buckets"] = [*section["buckets"], "t1c0/t1c0/t1c0/t1c0"]
    (ckpt / "model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"layer\d\.\d\.conv"):
        export_checkpoint(ckpt, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_cli_export_and_verify_exit_codes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["verify", str(tmp_path / "onnx"), "--checkpoint", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert "all graphs match" in result.output
    # A checkpoint that differs from the exported one is a failed check: exit code 1.
    other = tmp_path / "other"
    model = tiny()
    perturb(model, seed=1)
    save(model, other)
    result = runner.invoke(cli, ["verify", str(tmp_path / "onnx"), "--checkpoint", str(other)])
    assert result.exit_code == 1
    assert "MISMATCH" in result.output
    # Bad input: exit code 2 with a one-line reason.
    result = runner.invoke(cli, ["export", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "model.json" in result.output


def test_an_unexpected_error_exits_3_not_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit code 1 means "a check ran and failed"; a bug must not look like one to a script."""
    from vared2.stages import INTERNAL_ERROR, run_stage

    def broken() -> None:
        raise RuntimeError("TensorRT failed to build an engine")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(broken)
    assert exit_info.value.code == INTERNAL_ERROR == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "vared2: internal error: RuntimeError: TensorRT failed to build an engine" in err


def test_verify_names_a_broken_export_and_marks_the_failing_row(tmp_path: Path) -> None:
    import shutil

    from vared2.export.verify import ATOL, Check, VerifyReport

    ckpt = _checkpoint(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "onnx")]).exit_code == 0
    broken = tmp_path / "broken"
    for content, message in (
        ("{}", "format must be 'vared2-onnx'"),
        ('{"format": "vared2-onnx",', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"format": "vared2-onnx", "model": {}, "gate": {}, "buckets": [{}]}', "gate.file: expected a file name"),
        ('{"format": "vared2-onnx", "model": {}, "gate": {"file": "g"}, "buckets": 5}', "buckets: expected a list"),
        ({"labels": [], "num_classes": 10**9}, "model.num_classes: expected an integer from 1 to 1000000"),
        ({"frames": 16}, "the model is described differently from the checkpoint: frames 16 (the checkpoint: 4)"),
        ({"std": [1.0, 1.0, 1.0]}, "the model is described differently from the checkpoint: std [1.0, 1.0, 1.0]"),
    ):
        shutil.copytree(tmp_path / "onnx", broken, dirs_exist_ok=True)
        if isinstance(content, dict):  # a field of a good export changed
            spec = json.loads((tmp_path / "onnx" / EXPORT_JSON).read_text())
            spec["model"] |= content
            content = json.dumps(spec)
        (broken / EXPORT_JSON).write_text(content)
        result = runner.invoke(cli, ["verify", str(broken), "--checkpoint", str(ckpt)])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"{broken / EXPORT_JSON}: {message}" in result.output
    shutil.copytree(tmp_path / "onnx", broken, dirs_exist_ok=True)
    whole = (broken / "bucket_1.onnx").read_bytes()
    (broken / "bucket_1.onnx").write_bytes(whole[: len(whole) // 2])
    result = runner.invoke(cli, ["verify", str(broken), "--checkpoint", str(ckpt)])
    assert result.exit_code == 2, result.output
    assert "bucket_1.onnx: ONNX Runtime cannot load this exported graph" in result.output
    # The verdict stands on the row that earned it, not on the graph's first row.
    report = VerifyReport([Check("gate", {"features": ATOL / 2, "bucket_logits": 30.0}, passed=False)])
    rows = report.table().splitlines()
    assert rows[2].split()[-1] == "ok" and rows[3].split()[-1] == "FAIL" and "MISMATCH" in rows[-1]
    report = VerifyReport([Check("gate", {"features": 0.0}, passed=False, note="bucket argmax DIFFERS: [1]")])
    assert report.table().splitlines()[3].endswith("FAIL")


def test_output_directories_follow_the_umask(tmp_path: Path) -> None:
    import os

    from vared2.export.onnx_export import atomic_directory

    mask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "onnx") as work:
            (work / "x").write_text("1")
    finally:
        os.umask(mask)
    assert (tmp_path / "onnx").stat().st_mode & 0o777 == 0o755


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_export_replaces_only_an_empty_directory_or_a_previous_export(tmp_path: Path) -> None:
    model = tiny()
    out = tmp_path / "onnx"
    out.mkdir()
    export_model(model, out)  # an empty directory (pytest's tmp_path, a fresh mkdir) is fine
    (out / "stale.txt").write_text("from the previous export")
    export_model(model, out)  # a re-export replaces the previous one as a whole
    assert (out / EXPORT_JSON).is_file() and not (out / "stale.txt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=re.escape(f"{mine} exists and is not an ONNX export (no export.json)")):
        export_model(model, mine)
    assert _contents(mine) == {"keep.txt": b"keep"}
    (tmp_path / "file").write_text("keep")
    with pytest.raises(NotADirectoryError, match="file exists and is not a directory"):
        export_model(model, tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "onnx"]


def test_export_refuses_the_checkpoint_directory_and_anything_inside_or_around_it(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    before = _contents(ckpt)
    (tmp_path / "link").symlink_to(ckpt)
    for out in (ckpt, ckpt / "onnx", tmp_path, tmp_path / "link"):
        with pytest.raises(ValueError, match=r"(is|inside|contains) the checkpoint directory"):
            export_checkpoint(ckpt, out)
        assert _contents(ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "link"]


def test_export_refuses_the_working_directory_and_its_ancestors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / EXPORT_JSON).write_text("{}")  # even a previous export: the current directory is never replaced
    monkeypatch.chdir(work)
    model = tiny()
    for out in (Path("."), work, tmp_path):
        with pytest.raises(ValueError, match="current directory"):
            export_model(model, out)
    assert _contents(work) == {EXPORT_JSON: b"{}"}
    assert [p.name for p in tmp_path.iterdir()] == ["work"]


def test_cli_export_refuses_a_foreign_out_directory(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(ckpt), "--out", str(mine)])
    assert result.exit_code == 2, result.output
    assert f"vared2: error: {mine} exists and is not an ONNX export" in result.output
    assert _contents(mine) == {"keep.txt": b"keep"}
    before = _contents(ckpt)
    result = runner.invoke(cli, ["export", str(ckpt), "--out", str(ckpt)])
    assert result.exit_code == 2, result.output
    assert f"{ckpt} is the checkpoint directory" in result.output
    assert _contents(ckpt) == before
