"""The engine manifest: schema, validation, path confinement, checksums and the atomic directory writer."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vared2.engines.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    BucketEntry,
    ChecksumError,
    EngineFileError,
    GateEntry,
    Manifest,
    ManifestError,
    MissingEngineFileError,
    ModelSpec,
    SchemaVersionError,
    WeightsEntry,
    check_output_dir,
    sha256_file,
    write_engine_dir,
)


def _fill(directory: Path, *, buckets: int = 3, weights: bool = True) -> Manifest:
    """Engine-like files with distinct content, and a manifest naming them."""
    (directory / "gate.plan").write_bytes(b"gate engine bytes")
    entries = []
    for i in range(buckets):
        (directory / f"bucket_{i}.plan").write_bytes(f"bucket {i} engine".encode())
        entries.append(
            BucketEntry(
                id=i,
                name="full" if i == 0 else f"t{i}c{i}",
                policy=((0, 0), (0, 0)) if i == 0 else ((i, 0), (0, i)),
                gflops=4.0 / (i + 1),
                file=f"bucket_{i}.plan",
                sha256=sha256_file(directory / f"bucket_{i}.plan"),
                path="plugin" if i % 2 else "local-functions",
            )
        )
    if weights:
        (directory / "weights.bin").write_bytes(b"\0" * 64)
    return Manifest(
        name="demo",
        backend="tensorrt",
        backend_version="10.13.0.35",
        precision="fp16",
        device={"name": "NVIDIA A10", "compute_capability": "8.6"},
        max_batch=4,
        model=ModelSpec(
            frames=8,
            size=112,
            short_side=128,
            mean=(0.43, 0.39, 0.37),
            std=(0.22, 0.21, 0.21),
            labels=("a", "b", "c"),
            checkpoint_sha256="0f" * 32,
        ),
        gate=GateEntry(file="gate.plan", sha256=sha256_file(directory / "gate.plan"), gflops=0.3),
        buckets=tuple(entries),
        weights=WeightsEntry("weights.bin", sha256_file(directory / "weights.bin")) if weights else None,
        build_options={"fp16": True, "opt_batch": 1},
        created_by="vared2 0.1.0",
    )


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "engine"
    write_engine_dir(directory, _fill)
    return directory


def _edit(directory: Path, change: Any) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    manifest = _fill(directory)
    manifest.write(directory)
    loaded = Manifest.load(directory)
    assert loaded == manifest
    assert loaded.to_dict() == manifest.to_dict()
    assert loaded.to_dict()["schema_version"] == SCHEMA_VERSION
    assert loaded.buckets[1].path == "plugin" and loaded.model.num_classes == 3
    assert loaded.bucket("t2c2").id == 2 and loaded.bucket(1).name == "t1c1"
    with pytest.raises(ValueError, match=r"no bucket 'nope'.*0 \(full\)"):
        loaded.bucket("nope")


def test_short_names_are_stored_and_looked_up(tmp_path: Path) -> None:
    """The exporter's short names survive the manifest and select a bucket; a shared one is refused, not guessed."""
    directory = tmp_path / "d"
    directory.mkdir()
    manifest = _fill(directory)
    shorts = ("full", "t1", "t2")
    buckets = tuple(replace(b, short_name=short) for b, short in zip(manifest.buckets, shorts, strict=True))
    replace(manifest, buckets=buckets).write(directory)
    loaded = Manifest.load(directory)
    assert [b.short_name for b in loaded.buckets] == list(shorts)
    assert loaded.bucket("t1").id == 1 and loaded.bucket("full").id == 0
    with pytest.raises(ValueError, match=r"no bucket 't3'.*1 \(t1c1, t1\)"):
        loaded.bucket("t3")
    _edit(directory, lambda d: d["buckets"][2].update(short_name="t1"))
    with pytest.raises(ValueError, match="'t1' is ambiguous"):
        Manifest.load(directory).bucket("t1")
    _edit(directory, lambda d: d["buckets"][2].update(short_name=7))
    with pytest.raises(ManifestError, match=r"buckets\[2\]\.short_name"):
        Manifest.load(directory)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_newer_schema_version_is_rejected_with_the_version_this_vared2_reads(engine_dir: Path) -> None:
    _edit(engine_dir, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(SchemaVersionError, match=rf"schema {SCHEMA_VERSION + 1}.*reads schema {SCHEMA_VERSION}"):
        Manifest.load(engine_dir)


@pytest.mark.parametrize("bad", ["../outside.plan", "/etc/passwd", "a/../../x", "C:/x.plan", "sub\\x.plan", "./x"])
def test_paths_outside_the_directory_are_rejected(engine_dir: Path, bad: str) -> None:
    _edit(engine_dir, lambda d: d["buckets"][2].update(file=bad))
    with pytest.raises(ManifestError, match=r"buckets\[2\]\.file: must") as info:
        Manifest.load(engine_dir)
    assert not isinstance(info.value, FileNotFoundError)


def test_symlink_escaping_the_directory_is_rejected(engine_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.plan"
    outside.write_bytes((engine_dir / "bucket_1.plan").read_bytes())
    (engine_dir / "bucket_1.plan").unlink()
    (engine_dir / "bucket_1.plan").symlink_to(outside)
    with pytest.raises(EngineFileError, match=r"buckets\[1\]\.file resolves to .*outside the engine directory"):
        Manifest.load(engine_dir)


def test_tampered_engine_file_is_detected_naming_the_file_and_expected_sha(engine_dir: Path) -> None:
    expected = Manifest.load(engine_dir).buckets[1].sha256
    with open(engine_dir / "bucket_1.plan", "ab") as f:
        f.write(b"!")
    message = rf"bucket_1\.plan: sha256 is [0-9a-f]{{64}}, the manifest expects {expected}"
    with pytest.raises(ChecksumError, match=message):
        Manifest.load(engine_dir)
    assert Manifest.load(engine_dir, verify=False).buckets[1].sha256 == expected


def test_tampered_weights_file_is_detected(engine_dir: Path) -> None:
    (engine_dir / "weights.bin").write_bytes(b"\1" * 64)
    with pytest.raises(ChecksumError, match=r"weights\.bin"):
        Manifest.load(engine_dir)


def test_missing_engine_file(engine_dir: Path) -> None:
    (engine_dir / "bucket_2.plan").unlink()
    with pytest.raises(MissingEngineFileError, match=r"bucket_2\.plan: buckets\[2\]\.file: no such file") as info:
        Manifest.load(engine_dir, verify=False)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ManifestError)


def test_missing_manifest_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such engine directory"):
        Manifest.load(tmp_path / "nothing")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="a_file: a file, not an engine directory"):
        Manifest.load(tmp_path / "a_file")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["buckets"][2].update(file=7), r"buckets\[2\]\.file: expected a non-empty string, got 7"),
        (lambda d: d.update(precision="int4"), r"precision: expected one of fp32, fp16, int8, got 'int4'"),
        (lambda d: d.update(backend="openvino"), r"backend: expected one of onnxruntime, tensorrt"),
        (lambda d: d.update(max_batch=0), r"max_batch: expected an integer >= 1, got 0"),
        (lambda d: d.update(max_batch=True), r"max_batch: expected an integer, got True"),
        (lambda d: d["buckets"][1].update(id=2), r"buckets\[1\]\.id: bucket ids must be 0\.\.2 in order"),
        (lambda d: d["buckets"][2].update(name="full"), r"buckets\[2\]\.name: 'full' is used by another bucket"),
        (lambda d: d["buckets"][1].update(policy=[[1, 0]]), r"buckets\[1\]\.policy: has 1 stages"),
        (lambda d: d["buckets"][1].update(policy=[[1, -1], [0, 0]]), r"buckets\[1\]\.policy\[0\]\[1\]"),
        (lambda d: d["buckets"][0].update(policy=[[1, 0], [0, 0]]), r"buckets\[0\]\.policy: bucket 0 must be"),
        (lambda d: d["buckets"][1].update(path="magic"), r"buckets\[1\]\.path: expected one of plugin"),
        (lambda d: d["buckets"][1].update(gflops=float("nan")), r"buckets\[1\]\.gflops: expected a finite number"),
        (lambda d: d["buckets"][1].update(sha256="xyz"), r"buckets\[1\]\.sha256: expected 64 lowercase hex"),
        (lambda d: d["buckets"][1].update(file="bucket_0.plan"), r"buckets\[1\]\.file: 'bucket_0\.plan' is also"),
        (lambda d: d["model"].update(num_classes=5), r"model\.num_classes: is 5 but there are 3 labels"),
        (lambda d: d["model"].update(std=[1, 0, 1]), r"model\.std\[1\]: expected a number > 0"),
        (lambda d: d["model"].update(mean=[1, 2]), r"model\.mean: expected 3 numbers"),
        (lambda d: d["model"].pop("frames"), r"model\.frames: missing"),
        (lambda d: d.pop("gate"), r"gate: missing"),
        (lambda d: d.update(buckets=[]), r"buckets: expected at least one bucket"),
        (lambda d: d.update(device="gpu"), r"device: expected an object"),
        (lambda d: d.update(schema_version="1"), r"schema_version: expected an integer"),
    ],
)
def test_field_errors_name_the_field(engine_dir: Path, change: Any, message: str) -> None:
    _edit(engine_dir, change)
    with pytest.raises(ManifestError, match=message) as info:
        Manifest.load(engine_dir)
    assert str(engine_dir / MANIFEST_NAME) in str(info.value)


def test_malformed_json(engine_dir: Path) -> None:
    for text in ('{"schema_version": 1,', "[" * 100_000 + "]" * 100_000, "1" * 5000, b"\xff\xfe{}"):
        path = engine_dir / MANIFEST_NAME
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        with pytest.raises(ManifestError, match="not valid JSON"):  # bad JSON, deep nesting, 5000 digits, not UTF-8
            Manifest.load(engine_dir)
    (engine_dir / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object, got list"):
        Manifest.load(engine_dir)


def test_manifests_built_in_python_are_validated_too(tmp_path: Path) -> None:
    manifest = _fill(tmp_path)
    with pytest.raises(ManifestError, match=r"gate\.file: must not contain '\.\.'"):
        Manifest(**{**manifest.__dict__, "gate": GateEntry("../gate.plan", "0" * 64, 1.0)})
    with pytest.raises(ManifestError, match=r"buckets\[0\]\.path: only TensorRT engines record a path"):
        Manifest(**{**manifest.__dict__, "backend": "onnxruntime"})


def _siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir())


def test_atomic_writer_leaves_nothing_when_fill_raises_midway(tmp_path: Path) -> None:
    final = tmp_path / "engines" / "demo"

    def failing(directory: Path) -> Manifest:
        (directory / "gate.plan").write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        write_engine_dir(final, failing)
    assert not final.exists()
    assert _siblings(final) == []


def test_atomic_writer_rejects_an_invalid_result_and_keeps_the_old_directory(engine_dir: Path) -> None:
    before = Manifest.load(engine_dir)

    def wrong_sha(directory: Path) -> Manifest:
        manifest = _fill(directory)
        (directory / "gate.plan").write_bytes(b"changed after hashing")
        return manifest

    with pytest.raises(ChecksumError, match=r"gate\.plan"):
        write_engine_dir(engine_dir, wrong_sha)
    assert Manifest.load(engine_dir) == before
    assert _siblings(engine_dir) == ["engine"]


def test_atomic_writer_replaces_an_existing_directory(engine_dir: Path) -> None:
    (engine_dir / "stale.txt").write_text("from the previous build")
    manifest = write_engine_dir(engine_dir, lambda d: _fill(d, buckets=2, weights=False))
    assert Manifest.load(engine_dir) == manifest and manifest.num_buckets == 2
    assert not (engine_dir / "stale.txt").exists() and not (engine_dir / "weights.bin").exists()
    assert _siblings(engine_dir) == ["engine"]


def test_atomic_writer_rebuilds_the_directory_a_symlink_points_to(engine_dir: Path) -> None:
    link = engine_dir.parent / "current"
    link.symlink_to(engine_dir)
    manifest = write_engine_dir(link, lambda d: _fill(d, buckets=2, weights=False))
    assert link.is_symlink() and link.resolve() == engine_dir  # the link is kept, its target rebuilt
    assert Manifest.load(engine_dir) == manifest and manifest.num_buckets == 2
    assert sorted(p.name for p in engine_dir.parent.iterdir()) == ["current", "engine"]  # no leftovers


def test_atomic_writer_replaces_only_an_empty_directory_or_a_previous_build(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_engine_dir(empty, _fill)
    Manifest.load(empty)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    calls: list[Path] = []

    def fill(directory: Path) -> Manifest:
        calls.append(directory)
        return _fill(directory)

    with pytest.raises(
        FileExistsError, match=re.escape(f"{mine} exists and is not an engine directory (no manifest.json)")
    ):
        write_engine_dir(mine, fill)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(NotADirectoryError, match="file exists and is not a directory"):
        write_engine_dir(tmp_path / "file", fill)
    assert calls == []  # refused before any work
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and (tmp_path / "file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "mine"]


def test_atomic_writer_refuses_its_source_and_the_working_directory(
    engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "onnx"
    source.mkdir()
    (source / "export.json").write_text("{}")
    for out in (source, source / "engine", tmp_path):
        with pytest.raises(ValueError, match=r"(is|inside|contains) the ONNX directory"):
            write_engine_dir(out, _fill, source=source)
    assert [p.name for p in source.iterdir()] == ["export.json"]
    before = Manifest.load(engine_dir)
    monkeypatch.chdir(engine_dir)  # a previous engine directory, but the current one: never replaced
    for out in (Path("."), engine_dir, tmp_path):
        with pytest.raises(ValueError, match="current directory"):
            write_engine_dir(out, _fill)
    assert Manifest.load(engine_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine", "onnx"]


def test_output_directory_check_resolves_symlinks(tmp_path: Path) -> None:
    source = tmp_path / "onnx"
    source.mkdir()
    (tmp_path / "link").symlink_to(source)
    with pytest.raises(ValueError, match=re.escape(f"link (= {source}) is the ONNX directory")):
        check_output_dir(
            tmp_path / "link",
            marker=MANIFEST_NAME,
            kind="an engine directory",
            source=source,
            source_kind="ONNX directory",
        )
    assert check_output_dir(tmp_path / "new", marker=MANIFEST_NAME, kind="x", source=source) == tmp_path / "new"


@pytest.mark.parametrize("bad", ["x" * 300 + ".plan", "a\x00b.plan"])
def test_an_unusable_file_name_is_named(engine_dir: Path, bad: str) -> None:
    """Too long for the file system, or with a NUL byte: an EngineFileError naming the field, not an OSError."""
    _edit(engine_dir, lambda data: data["buckets"][0].__setitem__("file", bad))
    with pytest.raises(EngineFileError, match=r"buckets\[0\]\.file: not a usable file name"):
        Manifest.load(engine_dir)


def test_backend_versions_read_ascii_digits_only() -> None:
    from vared2.runtime.backends import _version_tuple

    assert _version_tuple("1.32.0²") == (1, 32, 0) and _version_tuple("10.13.0.35+cu12") == (10, 13, 0, 35)
