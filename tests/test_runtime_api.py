"""``Runtime.open`` / ``classify`` on real ONNX Runtime sessions over small real engines (tests/test_runtime_models)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from test_runtime_models import BUCKETS, FRAMES, GATE_GFLOPS, LABELS, SIZE, build_engine_dir, reference

from vared2.cli import cli
from vared2.formats.manifest import MANIFEST_NAME, ChecksumError
from vared2.runtime import BackendError, BackendVersionError, Result, Runtime
from vared2.runtime.backends import OrtEngine, VersionMismatchWarning


@pytest.fixture(scope="module")
def runtime(engine_dir: Path) -> Runtime:
    return Runtime.open(engine_dir, threads=1)


def clips(n: int, seed: int = 0) -> np.ndarray:
    """Random clips, each with its own colour cast, so the gate's choice differs between them."""
    rng = np.random.default_rng(seed)
    cast = rng.integers(0, 200, (n, 1, 1, 1, 3))
    return (cast + rng.integers(0, 56, (n, FRAMES, SIZE, SIZE, 3))).astype(np.uint8)


class CountingEngine:
    """Wraps an OrtEngine and records each run's batch size (the real session still runs)."""

    def __init__(self, engine: OrtEngine, calls: list[tuple[str, int]], name: str) -> None:
        self.engine, self.calls, self.name = engine, calls, name

    def run(self, feeds: dict[str, np.ndarray], outputs: Any = None) -> dict[str, np.ndarray]:
        self.calls.append((self.name, next(iter(feeds.values())).shape[0]))
        return self.engine.run(feeds, outputs)


@pytest.fixture
def counted(engine_dir: Path) -> tuple[Runtime, list[tuple[str, int]]]:
    rt = Runtime.open(engine_dir, threads=1)
    calls: list[tuple[str, int]] = []
    backend: Any = rt.backend
    backend.gate = CountingEngine(backend.gate, calls, "gate")
    backend.buckets = [CountingEngine(e, calls, f"bucket_{i}") for i, e in enumerate(backend.buckets)]
    return rt, calls


def test_single_clip_matches_plain_onnxruntime(runtime: Runtime, engine_dir: Path) -> None:
    clip = clips(1, seed=3)[0]
    result = runtime.classify(clip)
    assert isinstance(result, Result)
    choice, probs = reference(engine_dir, clip[None])
    assert result.bucket == choice[0] and result.bucket_name == BUCKETS[choice[0]][1]
    np.testing.assert_allclose(result.probabilities, probs[0], rtol=1e-5, atol=1e-7)
    assert result.label == LABELS[int(np.argmax(probs[0]))] and result.score == pytest.approx(probs[0].max())
    assert [label for label, _ in result.topk] == [LABELS[i] for i in np.argsort(-probs[0])[:5]]
    assert result.gflops == pytest.approx(GATE_GFLOPS + BUCKETS[choice[0]][3])
    assert set(result.timings) == {"gate", "bucket", "total"} and result.timings["total"] >= result.timings["gate"]
    assert result.window is None


def test_batch_matches_per_clip_reference_and_groups_by_bucket(counted: tuple[Runtime, list], engine_dir: Path) -> None:
    rt, calls = counted
    batch = clips(8, seed=2)
    results = rt.classify(batch, topk=2)
    assert isinstance(results, list) and len(results) == 8
    choice, probs = reference(engine_dir, batch)
    assert len(set(choice)) == 3, "the test batch should exercise every bucket"
    assert [r.bucket for r in results] == list(choice)
    for r, p in zip(results, probs, strict=True):
        np.testing.assert_allclose(r.probabilities, p, rtol=1e-5, atol=1e-7)
        assert len(r.topk) == 2
    # One gate run for the batch, one run per distinct bucket with exactly its rows.
    assert calls[0] == ("gate", 8)
    expected = Counter(f"bucket_{b}" for b in choice)
    assert sorted(calls[1:]) == sorted((name, n) for name, n in expected.items())


def test_batches_above_max_batch_are_split(engine_dir: Path, tmp_path: Path) -> None:
    build_engine_dir(tmp_path / "small", max_batch=3)
    rt = Runtime.open(tmp_path / "small", threads=1)
    results = rt.classify(clips(7, seed=1))
    assert isinstance(results, list)
    choice, probs = reference(engine_dir, clips(7, seed=1))
    assert [r.bucket for r in results] == list(choice)
    np.testing.assert_allclose(np.stack([r.probabilities for r in results]), probs, rtol=1e-5, atol=1e-7)


def test_max_gflops_takes_the_best_bucket_within_the_budget(runtime: Runtime, engine_dir: Path) -> None:
    batch = clips(16, seed=2)
    full = runtime.classify(batch)
    capped = runtime.classify(batch, max_gflops=GATE_GFLOPS + 2.0)  # buckets 1 and 2 fit, 0 does not
    assert runtime.classify(batch[:2], max_gflops=np.float32(GATE_GFLOPS + 2.0)) == capped[:2]  # NumPy numbers too
    sess = ort.InferenceSession(str(engine_dir / "gate.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(["bucket_logits"], {"clip": batch})[0]
    assert isinstance(full, list) and isinstance(capped, list)
    for f, c, row in zip(full, capped, logits, strict=True):
        assert c.bucket == 1 + int(np.argmax(row[1:]))
        assert c.gflops <= GATE_GFLOPS + 2.0
        if f.bucket != 0:
            assert c.bucket == f.bucket and c.probabilities == pytest.approx(f.probabilities)
    _, probs = reference(engine_dir, batch, buckets=np.array([c.bucket for c in capped]))
    np.testing.assert_allclose(np.stack([c.probabilities for c in capped]), probs, rtol=1e-5, atol=1e-7)


def test_max_gflops_below_every_bucket_names_the_cheapest(counted: tuple[Runtime, list]) -> None:
    rt, calls = counted
    with pytest.raises(ValueError, match=r"cheapest, 2 \(t1c1/t1c1\), needs 1\.5 GFLOPs \(gate 0\.5 \+ bucket 1\)"):
        rt.classify(clips(1)[0], max_gflops=1.0)
    assert calls == []


@pytest.mark.parametrize("key", [2, "t1c1/t1c1", np.int64(2)])
def test_forced_bucket_by_id_or_name(runtime: Runtime, engine_dir: Path, key: Any) -> None:
    batch = clips(5, seed=4)
    results = runtime.classify(batch, bucket=key)
    assert isinstance(results, list) and {r.bucket for r in results} == {2}
    _, probs = reference(engine_dir, batch, buckets=np.full(5, 2))
    np.testing.assert_allclose(np.stack([r.probabilities for r in results]), probs, rtol=1e-5, atol=1e-7)


def test_bad_bucket_options(runtime: Runtime) -> None:
    clip = clips(1)[0]
    with pytest.raises(ValueError, match=r"no bucket 'nope'.*buckets are: 0 \(full\), 1 \(t1c0/t0c0\)"):
        runtime.classify(clip, bucket="nope")
    with pytest.raises(ValueError, match="not both"):
        runtime.classify(clip, bucket=0, max_gflops=10.0)
    with pytest.raises(ValueError, match="topk must be a positive integer"):
        runtime.classify(clip, topk=0)


@pytest.mark.parametrize(
    ("clip", "error", "message"),
    [
        ([[0]], TypeError, r"numpy uint8 array of shape \[T, H, W, 3\] = \[4, 8, 8, 3\].*got list"),
        (np.zeros((FRAMES, SIZE, SIZE, 3), np.float32), TypeError, "must be uint8.*got dtype float32"),
        (
            np.zeros((FRAMES, SIZE, SIZE), np.uint8),
            ValueError,
            r"^clip must have shape \[T, H, W, 3\] = \[4, 8, 8, 3\] or \[N, 4, 8, 8, 3\], got \[4, 8, 8\]$",
        ),
        (np.zeros((FRAMES + 1, SIZE, SIZE, 3), np.uint8), ValueError, r"got \[5, 8, 8, 3\]"),
        (np.zeros((2, FRAMES, SIZE, SIZE, 4), np.uint8), ValueError, r"\[N, 4, 8, 8, 3\].*got \[2, 4, 8, 8, 4\]"),
        (np.zeros((0, FRAMES, SIZE, SIZE, 3), np.uint8), ValueError, "empty batch"),
        (np.zeros((FRAMES, 0, SIZE, 3), np.uint8), ValueError, r"got \[4, 0, 8, 3\]"),
    ],
)
def test_bad_clips_fail_before_any_engine_runs(
    counted: tuple[Runtime, list], clip: Any, error: type[Exception], message: str
) -> None:
    rt, calls = counted
    with pytest.raises(error, match=message):
        rt.classify(clip)
    assert calls == []


def test_concurrent_calls_give_the_serial_results(runtime: Runtime) -> None:
    inputs = [clips(1 + i % 3, seed=100 + i) for i in range(16)]
    serial = [runtime.classify(x) for x in inputs]
    errors: list[BaseException] = []
    mismatches: list[tuple[int, int]] = []

    def worker(t: int) -> None:
        try:
            for k in range(200):
                i = (t * 7 + k) % len(inputs)
                got = runtime.classify(inputs[i])
                want = serial[i]
                assert isinstance(got, list) and isinstance(want, list)
                if got != want or any(
                    not np.array_equal(a.probabilities, b.probabilities) for a, b in zip(got, want, strict=True)
                ):
                    mismatches.append((t, k))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and mismatches == []


def test_open_verifies_checksums(tmp_path: Path) -> None:
    build_engine_dir(tmp_path / "e")
    with open(tmp_path / "e" / "bucket_1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match=r"bucket_1\.onnx: sha256 is"):
        Runtime.open(tmp_path / "e")


def test_onnxruntime_version_policy(tmp_path: Path) -> None:
    major, minor, *_ = ort.__version__.split(".")
    build_engine_dir(tmp_path / "old", backend_version=f"{major}.{int(minor) - 1}.0")
    with pytest.raises(BackendVersionError, match=rf"built with onnxruntime {major}\.{int(minor) - 1}\.0.*install"):
        Runtime.open(tmp_path / "old")
    build_engine_dir(tmp_path / "patch", backend_version=f"{major}.{minor}.99")
    with pytest.warns(VersionMismatchWarning, match=rf"built with onnxruntime {major}\.{minor}\.99"):
        Runtime.open(tmp_path / "patch")
    build_engine_dir(tmp_path / "same")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Runtime.open(tmp_path / "same")


def test_a_wrong_file_fails_at_open_naming_the_interface(tmp_path: Path) -> None:
    directory = tmp_path / "e"
    build_engine_dir(directory)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["gate"]["file"], manifest["buckets"][0]["file"] = "bucket_0.onnx", "gate.onnx"
    manifest["gate"]["sha256"], manifest["buckets"][0]["sha256"] = (
        manifest["buckets"][0]["sha256"],
        manifest["gate"]["sha256"],
    )
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    # The manifest's gate is now bucket_0.onnx: the message names that file, what a gate has and what it has.
    message = (
        f"{directory / 'bucket_0.onnx'}: a gate engine has input 'clip' and outputs 'features', 'bucket_logits'; "
        "this one has inputs ['features'], outputs ['logits']"
    )
    with pytest.raises(BackendError, match=f"^{re.escape(message)}$"):
        Runtime.open(directory)
    # The command line reports it as bad input: one line naming the file, exit code 2, no traceback.
    result = CliRunner().invoke(cli, ["bench", str(directory), "--duration", "0.1", "--no-ceiling"])
    assert result.exit_code == 2, result.output
    assert result.output == f"vared2: error: {message}\n"


def test_a_bad_thread_count_is_named(engine_dir: Path) -> None:
    with pytest.raises(TypeError, match="threads must be an integer or None, got '2'"):
        Runtime.open(engine_dir, threads="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads must be a positive integer or None, got 0"):
        Runtime.open(engine_dir, threads=0)
    Runtime.open(engine_dir, threads=np.int64(1)).close()  # NumPy integers are integers


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_missing_provider_is_a_clear_error(engine_dir: Path) -> None:
    with pytest.raises(BackendError, match=r"no CUDAExecutionProvider.*install onnxruntime-gpu"):
        Runtime.open(engine_dir, providers=["CUDAExecutionProvider"])


def test_shared_weights_file_feeds_every_session(tmp_path: Path) -> None:
    """With ``manifest.weights``, sessions take their initializers from the shared file, not their own copies:
    a bias changed only in weights.bin changes the result exactly as expected."""
    shared_weights = pytest.importorskip("vared2.formats.weights")
    import onnx
    from onnx import numpy_helper
    from test_runtime_models import fill_engine_dir

    from vared2.formats.manifest import Manifest, WeightsEntry, sha256_file, write_engine_dir

    delta = np.linspace(-2.0, 3.0, len(LABELS)).astype(np.float32)

    def fill(directory: Path) -> Manifest:
        manifest = fill_engine_dir(directory)
        alignment, tensors, models, blobs = 4096, [], {}, []
        offset = alignment  # the header (index JSON, well under 4 KiB here) is padded to one alignment unit
        for file in [manifest.gate.file, *(b.file for b in manifest.buckets)]:
            models[file] = {}
            for init in onnx.load(str(directory / file)).graph.initializer:
                array = numpy_helper.to_array(init)
                if file == "bucket_1.onnx" and init.name == "fc_b":
                    array = array + delta
                models[file][init.name] = len(tensors)
                tensors.append(
                    {"offset": offset, "length": array.nbytes, "dtype": str(array.dtype), "shape": list(array.shape)}
                )
                blobs.append(array.tobytes() + b"\0" * (-array.nbytes % alignment))
                offset += len(blobs[-1])
        header = shared_weights.encode_header({"alignment": alignment, "tensors": tensors, "models": models}, alignment)
        assert len(header) == alignment
        (directory / "weights.bin").write_bytes(header + b"".join(blobs))
        weights = WeightsEntry("weights.bin", sha256_file(directory / "weights.bin"))
        return Manifest(**{**manifest.__dict__, "weights": weights})

    write_engine_dir(tmp_path / "shared", fill)
    rt = Runtime.open(tmp_path / "shared", threads=1)
    batch = clips(4, seed=5)
    got = rt.classify(batch, bucket=1)
    _, plain = reference(tmp_path / "shared", batch, buckets=np.full(4, 1))
    shifted = np.log(plain) + delta
    expected = np.exp(shifted - shifted.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert isinstance(got, list)
    np.testing.assert_allclose(np.stack([r.probabilities for r in got]), expected, rtol=1e-5, atol=1e-7)
    unchanged = rt.classify(batch, bucket=0)
    _, plain0 = reference(tmp_path / "shared", batch, buckets=np.zeros(4))
    assert isinstance(unchanged, list)
    np.testing.assert_allclose(np.stack([r.probabilities for r in unchanged]), plain0, rtol=1e-5, atol=1e-7)


SHARED_POOL_SCRIPT = """
import json, sys
import numpy as np
from vared2.runtime import Runtime

directory, clip_file = sys.argv[1], sys.argv[2]
batch = np.load(clip_file)
per_session_rt = Runtime.open(directory, threads=1)
per_session = per_session_rt.classify(batch)
shared = Runtime.open(directory, threads=2, shared_thread_pool=True)
options = shared.backend.gate.session.get_session_options()
again = Runtime.open(directory, shared_thread_pool=True)  # threads=None: the pool as it is
try:
    Runtime.open(directory, threads=1, shared_thread_pool=True)
    resize = None
except ValueError as error:
    resize = str(error)
try:
    Runtime.open(directory, threads=1)  # a pool of its own, now that the process runs the shared one
    per_session_after = None
except ValueError as error:
    per_session_after = str(error)
per_session_before = [r.bucket for r in per_session_rt.classify(batch)]  # opened before the pool: still works
results = shared.classify(batch)
print(json.dumps({
    "per_session_threads": options.use_per_session_threads,
    "same_buckets": [a.bucket for a in results] == [b.bucket for b in per_session],
    "max_diff": max(float(np.abs(a.probabilities - b.probabilities).max()) for a, b in zip(results, per_session)),
    "again": [r.bucket for r in again.classify(batch)] == [r.bucket for r in results],
    "resize": resize,
    "per_session_after": per_session_after,
    "per_session_before": per_session_before == [r.bucket for r in results],
}))
"""


def test_a_shared_thread_pool_gives_the_same_results_and_keeps_its_size(engine_dir: Path, tmp_path: Path) -> None:
    """In a fresh process (the pool belongs to the process): the sessions run on it, the results equal the
    per-session ones, and a second runtime asking for another size is a clear error, not a silent resize."""
    np.save(tmp_path / "clips.npy", clips(5))
    run = subprocess.run(
        [sys.executable, "-c", SHARED_POOL_SCRIPT, str(engine_dir), str(tmp_path / "clips.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and "ignored" not in run.stderr, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["per_session_threads"] is False and found["same_buckets"] and found["again"]
    assert found["max_diff"] < 1e-5
    assert "has 2 thread(s) and cannot be resized to 1" in found["resize"]
    assert "already runs the shared ONNX Runtime thread pool (2 thread(s)" in found["per_session_after"]
    assert found["per_session_before"]
