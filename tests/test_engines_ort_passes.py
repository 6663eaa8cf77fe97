"""The declared ONNX Runtime graph passes (``vared2.engines.ort_passes``): the lists and their order, one
convention (a pass returns a new model and leaves its input alone), preconditions refused by name, and
``vared2 build --skip-pass`` (recorded in the manifest, unknown names refused with the known ones)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import helper
from ort_toy import write_toy_onnx_dir

from vared2.cli import cli
from vared2.engines.ort_graph import SPECIALIZED_DOMAIN
from vared2.engines.ort_passes import (
    BUCKET,
    BUCKET_PASSES,
    GATE,
    GATE_PASSES,
    check_skip,
    pass_names,
    passes_for,
    run_passes,
)
from vared2.formats.errors import InputError
from vared2.plugins import DOMAIN


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_onnx_dir(tmp_path_factory.mktemp("toy") / "onnx")


def test_pass_lists_are_declared_in_order() -> None:
    assert [p.name for p in GATE_PASSES] == ["pad-conv-pairs", "stem-over-frames", "temporal-conv-2d", "motion-head"]
    assert [p.name for p in BUCKET_PASSES] == [
        "skip-unread-frames",
        "split-temporal-phases",
        "specialize-reconstructions",
        "temporal-conv-2d",
    ]
    assert all(GATE in p.applies_to for p in GATE_PASSES) and all(BUCKET in p.applies_to for p in BUCKET_PASSES)
    assert [p.name for p in (*GATE_PASSES, *BUCKET_PASSES) if p.applies_to == {GATE, BUCKET}] == [
        "temporal-conv-2d"
    ] * 2
    assert all(p.matches and p.emits and "fp32" in p.precisions for p in (*GATE_PASSES, *BUCKET_PASSES))
    assert passes_for(GATE) == list(GATE_PASSES) and passes_for(BUCKET) == list(BUCKET_PASSES)
    skipped = passes_for(BUCKET, skip=["temporal-conv-2d", "skip-unread-frames"])
    assert [p.name for p in skipped] == ["split-temporal-phases", "specialize-reconstructions"]
    # int8 buckets run every bucket pass but the 2-D views (slower in int8's NHWC kernels); the gate stays fp32.
    assert [p.name for p in passes_for(BUCKET, precision="int8")] == [
        "skip-unread-frames",
        "split-temporal-phases",
        "specialize-reconstructions",
    ]
    assert passes_for(GATE, precision="int8") == []
    assert pass_names().count("temporal-conv-2d") == 1


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown graph pass 'fuse-everything'.*motion-head.*skip-unread-frames"):
        check_skip(["motion-head", "fuse-everything"])
    with pytest.raises(InputError, match="unknown graph pass"):
        passes_for(GATE, skip=["nope"])
    with pytest.raises(InputError, match="graph kind"):
        passes_for("trunk")


def test_a_pass_refuses_what_it_is_not_declared_for(toy: Path) -> None:
    bucket = onnx.load(str(toy / "bucket_1.onnx"))
    specialize = next(p for p in BUCKET_PASSES if p.name == "specialize-reconstructions")
    with pytest.raises(InputError, match="pass specialize-reconstructions: applies to bucket graphs, not 'gate'"):
        specialize(bucket, GATE)
    views = next(p for p in BUCKET_PASSES if p.name == "temporal-conv-2d")
    with pytest.raises(InputError, match="pass temporal-conv-2d: valid for fp32 engines, not 'int8'"):
        views(bucket, BUCKET, "int8")
    older = onnx.ModelProto()
    older.CopyFrom(bucket)
    del older.opset_import[:]
    older.opset_import.extend([helper.make_opsetid("", 13), helper.make_opsetid(DOMAIN, 1)])
    with pytest.raises(InputError, match="pass specialize-reconstructions: expects a graph of default opset 17"):
        specialize(older, BUCKET)
    with pytest.raises(TypeError, match=r"onnx\.ModelProto"):
        specialize.run(b"not a model")  # type: ignore[arg-type]


def test_every_pass_returns_a_new_model_and_leaves_its_input_alone(toy: Path) -> None:
    for kind, file, passes in ((GATE, "gate.onnx", GATE_PASSES), (BUCKET, "bucket_1.onnx", BUCKET_PASSES)):
        model = onnx.load(str(toy / file))
        before = model.SerializeToString()
        for graph_pass in passes:
            result = graph_pass(model, kind)
            assert result is not model, graph_pass.name
            assert model.SerializeToString() == before, graph_pass.name
    bucket = onnx.load(str(toy / "bucket_1.onnx"))
    done = run_passes(bucket, BUCKET, passes_for(BUCKET))
    assert {n.domain for n in done.graph.node} >= {SPECIALIZED_DOMAIN} and DOMAIN not in {
        n.domain for n in done.graph.node
    }
    assert run_passes(bucket, BUCKET, []) is bucket


def _build(toy: Path, out: Path, *skips: str) -> tuple[int, str]:
    args = ["build", str(toy), "--out", str(out)]
    for name in skips:
        args += ["--skip-pass", name]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_build_skip_pass(toy: Path, tmp_path: Path) -> None:
    code, output = _build(toy, tmp_path / "all")
    assert code == 0, output
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["build_options"]["graph_passes"] == {
        "gate": [p.name for p in GATE_PASSES],
        "bucket": [p.name for p in BUCKET_PASSES],
    }
    assert "skip_passes" not in manifest["build_options"]["build_options"]  # the default keeps its build key
    domains = {
        n.domain for n in onnx.load(str(tmp_path / "all" / "bucket_1.onnx"), load_external_data=False).graph.node
    }
    assert SPECIALIZED_DOMAIN in domains and DOMAIN not in domains

    code, output = _build(toy, tmp_path / "skipped", "specialize-reconstructions", "temporal-conv-2d")
    assert code == 0, output
    options = json.loads((tmp_path / "skipped" / "manifest.json").read_text())["build_options"]
    assert options["graph_passes"]["bucket"] == ["skip-unread-frames", "split-temporal-phases"]
    assert "temporal-conv-2d" not in options["graph_passes"]["gate"]
    assert options["build_options"]["skip_passes"] == ["specialize-reconstructions", "temporal-conv-2d"]
    bucket = onnx.load(str(tmp_path / "skipped" / "bucket_1.onnx"), load_external_data=False)
    assert DOMAIN in {n.domain for n in bucket.graph.node}  # the exported ϕs node, as exported (parity still held)

    code, output = _build(toy, tmp_path / "skipped", "specialize-reconstructions", "temporal-conv-2d")
    assert code == 0 and "up to date" in output
    code, output = _build(toy, tmp_path / "refused", "motion-head", "no-such-pass")
    assert code == 2
    assert "unknown graph pass 'no-such-pass'" in output and ", ".join(pass_names()) in output
    assert not (tmp_path / "refused").exists()
