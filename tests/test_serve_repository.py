"""``vared2 triton``'s model repository as files (DESIGN.md §10): layout, configs, relocatability, the rule for
replacing ``--out``, TensorRT's ``tensorrt_plan`` configs (written and read here; served only on a GPU host), the
router's request parameters, and the command line. The repository served for real is tests/test_serve_server.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from ort_toy import write_toy_onnx_dir
from test_runtime_models import BUCKETS, fill_engine_dir
from test_runtime_tensorrt import trt_manifest

from vared2.cli import cli
from vared2.engines.build import build_engines
from vared2.formats.errors import InputError
from vared2.formats.manifest import Manifest, sha256_file, write_engine_dir
from vared2.serve import RepositoryOptions, TritonServer, write_repository
from vared2.serve.server import TritonInstall
from vared2.serve.triton_models import read_parameters


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_onnx_dir(root / "onnx", frames=4, size=16)
    return build_engines(root / "onnx", root / "engines", max_batch=8, progress=False)


def config(repo: Path, model: str) -> str:
    return (repo / model / "config.pbtxt").read_text()


def test_onnxruntime_repository_layout_and_configs(engines: Path, tmp_path: Path) -> None:
    options = RepositoryOptions(instances=2, max_batch=4, threads=1, max_queue_delay_us=500)
    repo = write_repository(engines, tmp_path / "repo", options)
    manifest = Manifest.load(engines)
    models = ["vared2", "gate", *(f"bucket_{b.id}" for b in manifest.buckets)]
    assert sorted(p.name for p in repo.iterdir()) == sorted([*models, "vared2-repository.json"])
    for model in models:
        text = config(repo, model)
        assert f'name: "{model}"' in text and 'backend: "python"' in text and "max_batch_size: 4" in text
        delay = 500 if model == "vared2" else 0  # only the router waits: its batch reaches the engines whole
        assert f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}" in text
        count = 4 if model == "vared2" else 2  # the router: twice the engines' instances by default
        assert f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]" in text
        assert "TritonPythonModel" in (repo / model / "1" / "model.py").read_text()
    router = config(repo, "vared2")
    assert '{ name: "clip" data_type: TYPE_UINT8 dims: [ 4, 16, 16, 3 ] }' in router
    for output in ("label_index", "label", "score", "bucket", "bucket_name", "gflops"):
        assert re.search(rf'name: "{output}" data_type: TYPE_\w+ dims: \[ 1 \] reshape', router), output
    assert f'name: "probabilities" data_type: TYPE_FP64 dims: [ {manifest.model.num_classes} ]' in router
    gate = config(repo, "gate")  # the toy's stem: 8 channels, 4 frames, 16 × 16
    assert '{ name: "features" data_type: TYPE_FP32 dims: [ 8, 4, 16, 16 ] }' in gate
    assert f'{{ name: "bucket_logits" data_type: TYPE_FP32 dims: [ {manifest.num_buckets} ] }}' in gate
    assert 'key: "engine" value: { string_value: "2" }' in config(repo, "bucket_2")
    # The engine directory, whole and unchanged, once, shared by every model through a relative path.
    copied = Manifest.load(repo / "vared2" / "engines", verify=True)
    assert copied == manifest
    assert sha256_file(repo / "vared2" / "engines" / "weights.bin") == manifest.weights.sha256  # type: ignore[union-attr]
    assert 'string_value: "../vared2/engines"' in gate
    record = json.loads((repo / "vared2-repository.json").read_text())
    assert record["models"] == models and record["options"]["instances"] == 2


def test_the_repository_is_relocatable(engines: Path, tmp_path: Path) -> None:
    repo = write_repository(engines, tmp_path / "a" / "repo")
    texts = [p.read_text() for p in repo.rglob("*") if p.suffix in (".pbtxt", ".py")]
    assert not any(str(tmp_path) in text or str(engines) in text for text in texts), "no absolute path inside"
    moved = shutil.move(repo, tmp_path / "elsewhere")
    for model in ("gate", "bucket_0"):
        relative = re.search(r'"engine_dir" value: \{ string_value: "([^"]+)"', config(Path(moved), model))
        assert relative is not None
        Manifest.load(Path(moved) / model / relative.group(1), verify=True)


def test_tensorrt_repository_is_native_tensorrt_plan_models(tmp_path: Path) -> None:
    """Written and read here; serving plans needs a GPU host with Triton's TensorRT backend (docs/serving.md)."""

    def fill(directory: Path) -> Manifest:
        onnx_manifest = fill_engine_dir(directory)
        for file in ["gate", *(f"bucket_{b[0]}" for b in BUCKETS)]:
            (directory / f"{file}.plan").write_bytes(f"a plan: {file}".encode())
        return trt_manifest(directory, onnx_manifest, "10.13.0.35", "8.6")

    engines = tmp_path / "trt"
    manifest = write_engine_dir(engines, fill)
    repo = write_repository(engines, tmp_path / "repo", RepositoryOptions(instances=3))
    for name, entry in [("gate", manifest.gate.file), *((f"bucket_{b.id}", b.file) for b in manifest.buckets)]:
        text = config(repo, name)
        assert 'platform: "tensorrt_plan"' in text and "backend:" not in text
        assert f"max_batch_size: {manifest.max_batch}" in text
        assert "instance_group [ { count: 3 kind: KIND_GPU } ]" in text
        assert "input [" not in text, "inputs and outputs come from the plan (Triton's auto-complete)"
        assert (repo / name / "1" / "model.plan").read_bytes() == (engines / entry).read_bytes()
        assert not (repo / name / "1" / "model.py").exists()
    assert 'backend: "python"' in config(repo, "vared2")
    assert sorted(p.name for p in (repo / "vared2" / "engines").iterdir()) == ["manifest.json"]


def test_out_follows_the_rule_of_export_and_build(engines: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a vared2 model repository"):
        write_repository(engines, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="engine directory"):
        write_repository(engines, engines)
    with pytest.raises(ValueError, match="engine directory"):
        write_repository(engines, engines / "repo")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        write_repository(engines, tmp_path / "file")
    repo = write_repository(engines, tmp_path / "repo", RepositoryOptions(instances=1))
    write_repository(engines, repo, RepositoryOptions(instances=3))  # a previous repository is replaced
    assert "count: 3 kind: KIND_CPU" in config(repo, "gate")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")], "no temporary folder left"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RepositoryOptions(instances=0), "--instances"),
        (RepositoryOptions(threads=0), "--threads"),
        (RepositoryOptions(router_instances=0), "--router-instances"),
        (RepositoryOptions(max_batch=9), r"--max-batch: 9 is more than the engines' max_batch 8"),
        (RepositoryOptions(max_queue_delay_us=-1), "--max-queue-delay-us"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    engines: Path, tmp_path: Path, options: RepositoryOptions, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        write_repository(engines, tmp_path / "repo", options)
    assert not (tmp_path / "repo").exists()


def test_request_parameters() -> None:
    assert read_parameters(None) == (None, None)
    assert read_parameters('{"max_gflops": 0.5}') == (0.5, None)
    assert read_parameters('{"bucket": "full"}') == (None, "full")
    assert read_parameters('{"bucket": 1}') == (None, 1)
    for text, words in [
        ('{"topk": 5}', "unknown request parameter(s) 'topk'"),
        ('{"max_gflops": "a lot"}', "'max_gflops': expected a number"),
        ('{"max_gflops": true}', "'max_gflops': expected a number"),
        ('{"bucket": false}', "'bucket': expected a bucket id or name"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            read_parameters(text)


def test_the_server_binds_every_address_to_the_loopback(tmp_path: Path) -> None:
    install = TritonInstall(*(tmp_path / name for name in ("tritonserver", "lib.so", "utils.py", "stub")))
    command = TritonServer(tmp_path, http_port=1, grpc_port=2, metrics_port=3).command(install, tmp_path / "b")
    for kind, port in (("http", 1), ("grpc", 2), ("metrics", 3)):
        assert f"--{kind}-address=127.0.0.1" in command and f"--{kind}-port={port}" in command
    assert "--backend-config=python,shm-default-byte-size=16777216" in command


def test_triton_and_serve_commands(engines: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["triton", str(engines), "--out", str(tmp_path / "repo"), "--instances", "2"])
    assert result.exit_code == 0, result.output
    assert "model repository:" in result.output and "count: 2" in config(tmp_path / "repo", "gate")
    result = CliRunner().invoke(cli, ["triton", str(engines), "--out", str(tmp_path / "r2"), "--max-batch", "99"])
    assert result.exit_code == 2 and "--max-batch: 99" in result.output
    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("tritonserver is installed here: vared2 serve is tested by the server tier")
    result = CliRunner().invoke(cli, ["serve", str(engines)])
    assert result.exit_code == 2
    assert "tritonserver is not installed" in result.output and "./build.sh triton-test" in result.output
    assert len(result.output.strip().splitlines()) == 1
