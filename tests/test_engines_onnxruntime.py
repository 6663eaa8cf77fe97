"""ONNX Runtime engines: built from a tiny exported model (and the onnx.helper toy), checked against the source
ONNX, one shared weights file, atomic and incremental builds, tampering detected at load."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ort_toy import write_toy_onnx_dir

from vared2.engines import build as build_module
from vared2.engines import onnxruntime_engine as ort_engine
from vared2.engines.build import build_engines
from vared2.formats.manifest import ChecksumError, Manifest
from vared2.formats.sessions import SharedWeights, open_session
from vared2.formats.weights import read_index


@pytest.fixture(scope="module")
def real_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny r2plus1d_18 through the real exporter (custom ops, folded BN, prefix-sliced weights)."""
    torch = pytest.importorskip("torch")
    from vared2.export.onnx_export import export_model
    from vared2.models import r2plus1d_18

    torch.manual_seed(0)
    model = r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5)
    out = tmp_path_factory.mktemp("real") / "onnx"
    with torch.no_grad():
        export_model(model, out)
    return out


@pytest.fixture(scope="module")
def real_engine(real_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_engines(real_onnx, tmp_path_factory.mktemp("eng") / "tiny", progress=False)


@pytest.fixture()
def toy_onnx(tmp_path: Path) -> Path:
    return write_toy_onnx_dir(tmp_path / "toy_onnx")


def _gate_features(onnx_dir: Path, seed: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    gate = ort.InferenceSession(str(onnx_dir / "gate.onnx"), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 3 for d in gate.get_inputs()[0].shape]
    feed = {"clip": np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)}
    return feed, gate.run(["features"], feed)[0]


def _embedded(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _shared(engine: Path, file: str, feed: dict[str, np.ndarray], level: str = "extended") -> list[np.ndarray]:
    return open_session(engine / file, level=level, weights=SharedWeights.open(engine)).run(None, feed)


def test_real_engines_match_the_exported_onnx(real_onnx: Path, real_engine: Path) -> None:
    manifest = Manifest.load(real_engine)
    spec = json.loads((real_onnx / "export.json").read_text())
    assert manifest.backend == "onnxruntime" and manifest.backend_version == ort.__version__
    assert [b.file for b in manifest.buckets] == [b["file"] for b in spec["buckets"]]
    assert [b.policy for b in manifest.buckets] == [tuple(map(tuple, b["policy"])) for b in spec["buckets"]]
    # The exporter's short names reach the manifest, so the runtime can select a bucket by one.
    assert manifest.buckets[0].short_name == "full" and all(b.short_name for b in manifest.buckets)
    assert [b.short_name for b in manifest.buckets] == [b["short_name"] for b in spec["buckets"]]
    assert manifest.bucket(manifest.buckets[-1].short_name or "").id == manifest.buckets[-1].id
    assert manifest.weights is not None and manifest.weights.file == "weights.bin"
    clip_feed, features = _gate_features(real_onnx)
    for file in [manifest.gate.file, *(b.file for b in manifest.buckets)]:
        feed = clip_feed if file == manifest.gate.file else {"features": features}
        expected = _embedded(real_onnx / file, feed)
        # Shared weights (the runtime's path) and ORT's own external-data loading give the source's outputs.
        for got in (_shared(real_engine, file, feed), _embedded(real_engine / file, feed)):
            for a, b in zip(expected, got, strict=True):
                np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)


def test_weights_file_holds_each_distinct_tensor_once(real_onnx: Path, real_engine: Path) -> None:
    index = read_index(real_engine / "weights.bin")
    per_bucket = 0
    for file in index.models:
        model = onnx.load(str(real_onnx / file))
        sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
        per_bucket += sum(sizes[name] for name in index.models[file])
        engine_model = onnx.load(str(real_engine / file), load_external_data=False)
        external = {t.name: t for t in engine_model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        # The engine file's external-data references and the runtime's index agree, tensor by tensor.
        assert set(external) == set(index.models[file])
        for name, k in index.models[file].items():
            info = {e.key: e.value for e in external[name].external_data}
            view = index.tensors[k]
            assert (info["location"], int(info["offset"]), int(info["length"])) == (
                "weights.bin",
                view.offset,
                view.length,
            )
            assert view.offset % index.alignment == 0
    stored = (real_engine / "weights.bin").stat().st_size
    assert stored < per_bucket
    # Distinct regions hold distinct bytes: no tensor is stored twice.
    regions = {(v.offset, v.length) for v in index.tensors}
    starts = sorted({v.offset for v in index.tensors})
    data = (real_engine / "weights.bin").read_bytes()
    longest = {o: max(n for off, n in regions if off == o) for o in starts}
    blobs = [data[o : o + longest[o]] for o in starts]
    assert len(set(blobs)) == len(blobs)
    # A partial convolution's weight is a prefix view of the full bucket's tensor of the same name.
    full, sliced = index.models["bucket_0.onnx"], index.models[f"bucket_{len(index.models) - 2}.onnx"]
    shared_names = [n for n in sliced if n in full and index.tensors[sliced[n]].length < index.tensors[full[n]].length]
    assert shared_names, "expected at least one prefix-shared partial-convolution weight"
    for name in shared_names:
        assert index.tensors[sliced[name]].offset == index.tensors[full[name]].offset


def test_per_bucket_batchnorm_statistics_still_share_the_weights(tmp_path: Path) -> None:
    """A trained model's buckets keep their own BatchNorm statistics; the exporter folds the full bucket's scale
    into every bucket's partial weight and restores each bucket's own with a per-channel ratio after the
    convolution (``vared2.export.fold``), so a partial weight is still a prefix view of the full bucket's tensor
    (DESIGN.md §5) — and the engines still match the exported graphs (the build's parity check)."""
    torch = pytest.importorskip("torch")
    from test_export import perturb

    from vared2.export.onnx_export import export_model
    from vared2.models import r2plus1d_18

    torch.manual_seed(0)
    model = perturb(r2plus1d_18(width=0.125, frames=4, size=32, num_classes=5))
    with torch.no_grad():
        export_model(model, tmp_path / "onnx")
    engine = build_engines(tmp_path / "onnx", tmp_path / "engines", progress=False)
    index = read_index(engine / "weights.bin")
    full = index.models["bucket_0.onnx"]
    for file in [f for f in index.models if f.startswith("bucket_") and f != "bucket_0.onnx"]:
        mine = index.models[file]
        # Every gated convolution's weight (5-D, of the full bucket's name); the shortcut projections' small
        # weights keep their own BatchNorm folded in.
        convs = [n for n in mine if n in full and len(index.tensors[mine[n]].shape) == 5 and "downsample" not in n]
        assert len(convs) >= 16, f"{file}: expected every gated convolution's weight, got {convs}"
        for name in convs:
            assert index.tensors[mine[name]].offset == index.tensors[full[name]].offset, (file, name)
            assert index.tensors[mine[name]].length <= index.tensors[full[name]].length
    manifest = Manifest.load(engine)
    assert manifest.build_options["parity_max_abs"]


def test_shared_weights_are_zero_copy_views_of_one_mapping(real_engine: Path) -> None:
    weights = SharedWeights.open(real_engine)
    assert SharedWeights.open(real_engine) is weights
    full = weights.initializers("bucket_0.onnx")
    name = next(n for n, v in full.items() if len(v.shape()) == 5)
    array = weights.array("bucket_0.onnx", name)
    assert not array.flags.writeable
    base = weights._map.ctypes.data
    assert base <= full[name].data_ptr() < base + weights.nbytes


def test_pack_dedupes_by_name_prefix_and_content(tmp_path: Path) -> None:
    big = np.random.default_rng(0).standard_normal((160, 3)).astype(np.float32)
    other = np.full((300,), 7.0, np.float32)

    def model(tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
        inits = [onnx.numpy_helper.from_array(v, k) for k, v in tensors.items()]
        graph = onnx.helper.make_graph([], "g", [], [], inits)
        return onnx.helper.make_model(graph)

    models = {
        "a.onnx": model({"w": big, "x": other}),
        "b.onnx": model({"w": big[:80], "y": other}),  # prefix under the same name; same bytes, other name
        "c.onnx": model({"w": big[40:120]}),  # same name, not a prefix: stored separately
    }
    stats = ort_engine.pack_weights(models, tmp_path / "weights.bin", alignment=64, min_bytes=16)
    assert stats.distinct_tensors == 3
    assert stats.stored_bytes == big.nbytes + other.nbytes + big[40:120].nbytes
    index = read_index(tmp_path / "weights.bin")
    views = {(f, n): index.tensors[k] for f, names in index.models.items() for n, k in names.items()}
    assert views[("b.onnx", "w")].offset == views[("a.onnx", "w")].offset
    assert views[("b.onnx", "y")].offset == views[("a.onnx", "x")].offset
    assert views[("c.onnx", "w")].offset != views[("a.onnx", "w")].offset
    raw = (tmp_path / "weights.bin").read_bytes()
    for (file, name), view in views.items():
        original = {t.name: t for t in models[file].graph.initializer}[name]
        assert original.data_location == onnx.TensorProto.EXTERNAL
        expected = {
            "a.onnx": {"w": big, "x": other},
            "b.onnx": {"w": big[:80], "y": other},
            "c.onnx": {"w": big[40:120]},
        }
        got = np.frombuffer(raw[view.offset : view.offset + view.length], np.float32).reshape(view.shape)
        np.testing.assert_array_equal(got, expected[file][name])


def test_toy_build_and_option_rebuild(toy_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "engines" / "toy"
    assert build_engines(toy_onnx, out, progress=False) == out
    first = Manifest.load(out)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    build_engines(toy_onnx, out)  # up to date: nothing rebuilt, and it says so
    assert "up to date" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    build_engines(toy_onnx, out, optimization="extended", progress=False)  # a changed option rebuilds
    second = Manifest.load(out)
    assert second.build_options["optimization"] == "extended" and first.build_options["optimization"] == "all"
    # A changed source rebuilds too.
    write_toy_onnx_dir(toy_onnx, seed=5)
    build_engines(toy_onnx, out, optimization="extended", progress=False)
    assert Manifest.load(out).weights != second.weights
    assert [p.name for p in out.parent.iterdir()] == ["toy"]  # no temporary directories left behind


def test_interrupted_build_leaves_no_directory(toy_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_check = ort_engine.check_parity
    calls = []

    def failing_check(*args: object, **kwargs: object) -> float:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressing Ctrl-C midway through the buckets
        return real_check(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ort_engine, "check_parity", failing_check)
    out = tmp_path / "engines" / "toy"
    with pytest.raises(KeyboardInterrupt):
        build_engines(toy_onnx, out, progress=False)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_parity_failure_fails_the_build_and_keeps_the_old_directory(
    toy_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "engines" / "toy"
    build_engines(toy_onnx, out, progress=False)
    before = (out / "weights.bin").read_bytes()
    real_pack = ort_engine.pack_weights

    def corrupting_pack(models: dict[str, onnx.ModelProto], path: Path, **kw: int) -> ort_engine.PackStats:
        stats = real_pack(models, path, **kw)
        index = read_index(path)
        view = index.tensors[index.models["bucket_1.onnx"]["layer2.conv.weight"]]
        with path.open("r+b") as f:  # one weight off by a lot: the engine no longer matches its source
            f.seek(view.offset)
            value = struct.unpack("<f", f.read(4))[0]
            f.seek(view.offset)
            f.write(struct.pack("<f", value + 10.0))
        return stats

    monkeypatch.setattr(ort_engine, "pack_weights", corrupting_pack)
    # bucket_1's weight is a byte prefix of the full bucket's (one stored copy), so the full bucket — checked
    # before bucket 1 — is the first engine that no longer matches its source.
    source = re.escape(str(toy_onnx / "bucket_0.onnx"))
    message = rf"^bucket_0\.onnx: output 'logits' differs from {source} by [0-9.e+-]+ \(max abs\), tolerance 0\.0001$"
    with pytest.raises(ort_engine.ParityError, match=message):
        build_engines(toy_onnx, out, optimization="basic", progress=False)
    assert (out / "weights.bin").read_bytes() == before  # the previous good build is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]


def test_tampered_engine_file_is_detected_at_load(toy_onnx: Path, tmp_path: Path) -> None:
    out = build_engines(toy_onnx, tmp_path / "toy", progress=False)
    with (out / "weights.bin").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ChecksumError, match=r"weights\.bin"):
        Manifest.load(out)
    # A tampered directory is not "up to date": the next build replaces it.
    build_engines(toy_onnx, out, progress=False)
    Manifest.load(out)


def test_bad_inputs_give_clear_errors(toy_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"export\.json"):
        build_engines(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="backend"):
        build_engines(toy_onnx, tmp_path / "out", backend="coreml", progress=False)
    with pytest.raises(ValueError, match="optimization"):
        build_engines(toy_onnx, tmp_path / "out", optimization="max", progress=False)
    with pytest.raises(ValueError, match="fp16"):
        build_engines(toy_onnx, tmp_path / "out", fp16=True, progress=False)
    with pytest.raises(ValueError, match=r"opt_batch, timing_cache: TensorRT options"):
        build_engines(toy_onnx, tmp_path / "out", opt_batch=2, timing_cache=tmp_path / "t.cache", progress=False)
    with pytest.raises(ValueError, match=r"use_plugins=False \(--no-plugins\): TensorRT options"):
        build_engines(toy_onnx, tmp_path / "out", use_plugins=False, progress=False)
    with pytest.raises(ValueError, match=r"opt_batch: expected an integer from 1 to max_batch \(8\), got 0"):
        build_engines(toy_onnx, tmp_path / "out", backend="tensorrt", opt_batch=0, progress=False)
    whole = (toy_onnx / "bucket_1.onnx").read_bytes()
    (toy_onnx / "bucket_1.onnx").write_bytes(whole[: len(whole) // 2])  # a truncated copy
    with pytest.raises(ValueError, match=r"bucket_1\.onnx: not a readable ONNX model"):
        build_engines(toy_onnx, tmp_path / "out", progress=False)
    (toy_onnx / "bucket_1.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"bucket_1\.onnx"):
        build_engines(toy_onnx, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not a vared2 weights file"):
        (tmp_path / "junk.bin").write_bytes(b"0" * 64)
        read_index(tmp_path / "junk.bin")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": 5}, r"gate\.onnx: tensor 'clip' is \['N', 4, .*describes \['N', 5, "),
        ({"size": 64}, r"gate\.onnx: tensor 'clip' is .* describes \['N', 4, 64, 64, 3\]"),
        ({"labels": ["a", "b"]}, r"bucket_0\.onnx: tensor 'logits' is \['N', 5\], but .* describes \['N', 2\]"),
    ],
)
def test_an_export_json_that_disagrees_with_its_graphs_is_named(
    toy_onnx: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    """The manifest copies export.json, and the runtime decodes clips by it: a disagreement is a build error, not a
    wrong-shape error at the first call (or a 'video too short' for frames the graph never reads)."""
    spec = json.loads((toy_onnx / "export.json").read_text())
    spec["model"] |= change
    (toy_onnx / "export.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        build_engines(toy_onnx, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_an_export_json_without_labels_builds_with_placeholder_names(toy_onnx: Path, tmp_path: Path) -> None:
    spec = json.loads((toy_onnx / "export.json").read_text())
    del spec["model"]["labels"]  # the export check allows it (num_classes is then required)
    (toy_onnx / "export.json").write_text(json.dumps(spec))
    manifest = Manifest.load(build_engines(toy_onnx, tmp_path / "out", progress=False))
    assert manifest.model.labels == tuple(f"class{i}" for i in range(spec["model"]["num_classes"]))


def test_the_builders_are_the_manifests_backends() -> None:
    assert build_module.BACKENDS == ("onnxruntime", "tensorrt")


def test_the_build_checks_parity_through_the_runtimes_loader(
    toy_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build's parity check and ``Runtime.open`` both take every engine file's initializers from a
    ``SharedWeights`` (vared2.formats.sessions): the build certifies the loader the runtime uses."""
    from vared2.runtime import Runtime

    seen: list[str] = []
    real = SharedWeights.initializers

    def spy(self: SharedWeights, model_file: str) -> dict[str, ort.OrtValue]:
        seen.append(model_file)
        return real(self, model_file)

    monkeypatch.setattr(SharedWeights, "initializers", spy)
    out = build_engines(toy_onnx, tmp_path / "toy", progress=False)
    manifest = Manifest.load(out)
    engine_files = sorted([manifest.gate.file, *(b.file for b in manifest.buckets)])
    assert sorted(seen) == engine_files
    seen.clear()
    Runtime.open(out)
    assert sorted(seen) == engine_files


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_build_replaces_only_an_empty_directory_or_a_previous_build(toy_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "engines"
    out.mkdir()
    build_engines(toy_onnx, out, progress=False)  # an empty directory is fine
    (out / "stale.txt").write_text("from the previous build")
    build_engines(toy_onnx, out, force=True, progress=False)  # a rebuild replaces the previous build as a whole
    assert not (out / "stale.txt").exists()
    Manifest.load(out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    other_export = write_toy_onnx_dir(tmp_path / "other_onnx")  # an export is not an engine directory either
    before = _contents(other_export)
    for foreign in (mine, other_export):
        with pytest.raises(FileExistsError, match=re.escape(f"{foreign} exists and is not an engine directory")):
            build_engines(toy_onnx, foreign, progress=False)
    assert _contents(mine) == {"keep.txt": b"keep"} and _contents(other_export) == before


def test_build_refuses_its_onnx_directory_and_the_working_directory(
    toy_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _contents(toy_onnx)
    (tmp_path / "link").symlink_to(toy_onnx)
    for out in (toy_onnx, toy_onnx / "engines", tmp_path, tmp_path / "link"):
        with pytest.raises(ValueError, match=r"(is|inside|contains) the ONNX directory"):
            build_engines(toy_onnx, out, progress=False)
    assert _contents(toy_onnx) == before
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (Path("."), work):
        with pytest.raises(ValueError, match="current directory"):
            build_engines(toy_onnx, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "toy_onnx", "work"]
    assert list(work.iterdir()) == []


def test_cli_build_refuses_a_foreign_out_directory(toy_onnx: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vared2.cli import cli

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    result = CliRunner().invoke(cli, ["build", str(toy_onnx), "--out", str(mine)])
    assert result.exit_code == 2, result.output
    assert f"vared2: error: {mine} exists and is not an engine directory (no manifest.json)" in result.output
    assert _contents(mine) == {"keep.txt": b"keep"}
    result = CliRunner().invoke(cli, ["build", str(toy_onnx), "--out", str(toy_onnx)])
    assert result.exit_code == 2, result.output
    assert f"{toy_onnx} is the ONNX directory" in result.output
    assert (toy_onnx / "export.json").is_file()
