"""The server tier (DESIGN.md §8, §10): a generated model repository served by the real ``tritonserver`` of
``nvidia-pytriton`` on 127.0.0.1, over HTTP and gRPC, against ``Runtime.classify`` on the same engines.

Runs in the server tier's environment (``./build.sh triton-test``: numpy<2, no torch); elsewhere every test skips
with the reason. The engines are toy ones built here (onnx + onnxruntime), or ``$VARED2_SERVE_ENGINES`` (then
``$VARED2_SERVE_VIDEO``'s windows join the test clips: e.g. the demo engines and the sample video).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vared2.runtime import Result, Runtime
from vared2.serve import RepositoryOptions, TritonServer, write_repository
from vared2.serve.server import SHM_PREFIX, group_members

pytestmark = pytest.mark.server

SCORE_TOLERANCE = 1e-5  # batches the server forms can differ from the runtime's in float rounding only


def shm_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"{SHM_PREFIX}*")}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy ONNX Runtime engines with three buckets (``tests/ort_toy.py``), unless the environment names some."""
    given = os.environ.get("VARED2_SERVE_ENGINES")
    if given:
        return Path(given)
    from ort_toy import write_toy_onnx_dir

    from vared2.engines.build import build_engines

    root = tmp_path_factory.mktemp("serve-engines")
    write_toy_onnx_dir(root / "onnx", frames=4, size=16)
    return build_engines(root / "onnx", root / "engines", max_batch=8, progress=False)


@pytest.fixture(scope="module")
def runtime(engines: Path) -> Iterator[Runtime]:
    with Runtime.open(engines, threads=1) as rt:
        yield rt


@pytest.fixture(scope="module")
def clips(runtime: Runtime) -> np.ndarray:
    """Clips of several kinds (noise, flat, moving edges) whose gate choices cover at least two buckets."""
    t, h, w, _ = runtime.clip_shape
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for _ in range(3)]
    pool += [np.full((t, h, w, 3), level, np.uint8) for level in (0, 40, 200, 255)]
    for speed in (1, 3):
        frames = np.zeros((t, h, w, 3), np.uint8)
        for i in range(t):
            frames[i, :, : (i * speed) % w + 1] = 230
        pool.append(frames)
    if os.environ.get("VARED2_SERVE_VIDEO"):
        from vared2.runtime.video import decode, windows

        spec = runtime.manifest.model
        frames = decode(os.environ["VARED2_SERVE_VIDEO"], spec.size, spec.resize_to)
        pool += [w.clip for w in windows(frames, spec.frames, spec.frames)]
    batch = np.stack(pool)
    chosen = np.array([r.bucket for r in expected(runtime, batch)])
    assert len(set(chosen)) >= 2, f"the test clips must reach two buckets; the gate picks only {set(chosen)}"
    # Buckets in turn, so that every prefix of two or more clips mixes buckets.
    groups = [list(np.flatnonzero(chosen == b)) for b in np.unique(chosen)]
    order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return batch[order]


@pytest.fixture(scope="module")
def repository(engines: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(engines, tmp_path_factory.mktemp("serve") / "repo", RepositoryOptions(instances=1))


def stopped_cleanly(server: TritonServer, regions_before: set[str]) -> None:
    """After ``stop``: no process of its group is left, nor any shared-memory region it made."""
    assert server.process is None
    assert not (shm_regions() - regions_before), "the Python backend left shared-memory regions behind"


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    before = shm_regions()
    s = TritonServer(repository, log=tmp_path_factory.mktemp("log") / "server.log").start(timeout=180)
    pgid = s.process.pid if s.process else -1
    yield s
    s.stop()
    assert not group_members(pgid), "processes of the server's group outlived stop()"
    stopped_cleanly(s, before)


def _client(protocol: str, server: TritonServer) -> Any:
    if protocol == "http":
        import tritonclient.http as module

        return module, module.InferenceServerClient(server.http_url)
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(server.grpc_url)


def infer(
    protocol: str, server: TritonServer, clips: np.ndarray, dtype: str = "UINT8", **parameters: Any
) -> dict[str, np.ndarray]:
    module, client = _client(protocol, server)
    try:
        tensor = module.InferInput("clip", list(clips.shape), dtype)
        tensor.set_data_from_numpy(clips)
        result = client.infer("vared2", [tensor], parameters=parameters or None)
        names = ("label_index", "label", "score", "bucket", "bucket_name", "gflops", "probabilities")
        return {name: result.as_numpy(name) for name in names}
    finally:
        client.close()


def assert_equal(served: dict[str, np.ndarray], expected: list[Result], labels: list[str]) -> None:
    assert len(served["score"]) == len(expected)
    for i, r in enumerate(expected):
        assert int(served["bucket"][i, 0]) == r.bucket, f"clip {i}: bucket"
        assert served["bucket_name"][i, 0].decode() == r.bucket_name
        assert served["label"][i, 0].decode() == r.label, f"clip {i}: label"
        assert labels[int(served["label_index"][i, 0])] == r.label
        assert served["gflops"][i, 0] == pytest.approx(r.gflops, rel=1e-12)
        assert abs(served["score"][i, 0] - r.score) <= SCORE_TOLERANCE
        np.testing.assert_allclose(served["probabilities"][i], r.probabilities, atol=SCORE_TOLERANCE, rtol=0)


def expected(runtime: Runtime, clips: np.ndarray, **kwargs: Any) -> list[Result]:
    results = runtime.classify(clips, **kwargs)
    assert isinstance(results, list)
    return results


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_single_clips_equal_the_runtime(
    server: TritonServer, runtime: Runtime, clips: np.ndarray, protocol: str
) -> None:
    for clip in clips:
        assert_equal(infer(protocol, server, clip[None]), expected(runtime, clip[None]), runtime.labels)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_mixed_bucket_batches_equal_the_runtime(
    server: TritonServer, runtime: Runtime, clips: np.ndarray, protocol: str
) -> None:
    batch = clips[: runtime.manifest.max_batch]
    want = expected(runtime, batch)
    assert len({r.bucket for r in want}) >= 2, "the batch must mix buckets"
    assert_equal(infer(protocol, server, batch), want, runtime.labels)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_budget_and_forced_bucket_are_honoured(
    server: TritonServer, runtime: Runtime, clips: np.ndarray, protocol: str
) -> None:
    batch = clips[:4]
    last = runtime.manifest.buckets[-1]
    for forced in (0, last.id, last.name):
        served = infer(protocol, server, batch, bucket=forced)
        assert_equal(served, expected(runtime, batch, bucket=forced), runtime.labels)
        assert {int(b) for b in served["bucket"][:, 0]} == {runtime.manifest.bucket(forced).id}
    costs = sorted(runtime.manifest.gate.gflops + b.gflops for b in runtime.manifest.buckets)
    budget = (costs[0] + costs[1]) / 2  # only the cheapest bucket fits
    served = infer(protocol, server, batch, max_gflops=budget)
    assert_equal(served, expected(runtime, batch, max_gflops=budget), runtime.labels)
    assert np.all(served["gflops"] <= budget)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_only_the_requested_outputs_come_back(
    server: TritonServer, runtime: Runtime, clips: np.ndarray, protocol: str
) -> None:
    module, client = _client(protocol, server)
    try:
        tensor = module.InferInput("clip", list(clips[:3].shape), "UINT8")
        tensor.set_data_from_numpy(clips[:3])
        outputs = [module.InferRequestedOutput(name) for name in ("bucket", "label")]
        result = client.infer("vared2", [tensor], outputs=outputs)
    finally:
        client.close()
    want = expected(runtime, clips[:3])
    assert [b.decode() for b in result.as_numpy("label")[:, 0]] == [r.label for r in want]
    assert result.as_numpy("bucket")[:, 0].tolist() == [r.bucket for r in want]
    assert result.as_numpy("score") is None and result.as_numpy("probabilities") is None


def test_bad_requests_get_errors_naming_the_input_and_the_server_goes_on(
    server: TritonServer, runtime: Runtime, clips: np.ndarray
) -> None:
    from tritonclient.utils import InferenceServerException

    clip = clips[:1]
    too_many = np.repeat(clip, runtime.manifest.max_batch + 1, axis=0)
    cheapest = min(runtime.manifest.gate.gflops + b.gflops for b in runtime.manifest.buckets)
    bad: list[tuple[str, np.ndarray, str, dict[str, Any], list[str]]] = [
        ("float clips", clip.astype(np.float32), "FP32", {}, ["clip", "UINT8"]),
        ("wrong frame size", clip[:, :, :-1], "UINT8", {}, ["clip", "shape"]),
        ("batch over the maximum", too_many, "UINT8", {}, ["batch"]),
        ("empty batch", clip[:0], "UINT8", {}, ["clip"]),  # Triton: "input byte size mismatch for input 'clip'"
        ("unknown bucket", clip, "UINT8", {"bucket": "no-such-bucket"}, ["bucket", "no-such-bucket"]),
        ("bucket id out of range", clip, "UINT8", {"bucket": 99}, ["bucket", "99"]),
        ("budget below every bucket", clip, "UINT8", {"max_gflops": cheapest / 2}, ["max_gflops", "below"]),
        ("budget not a number", clip, "UINT8", {"max_gflops": "cheap"}, ["max_gflops", "cheap"]),
        ("budget and bucket", clip, "UINT8", {"max_gflops": 10.0, "bucket": 0}, ["bucket", "max_gflops"]),
        ("unknown parameter", clip, "UINT8", {"topk": 3}, ["topk"]),
    ]
    good = expected(runtime, clips[:2])
    for what, data, dtype, parameters, words in bad:
        for protocol in ("http", "grpc"):
            with pytest.raises(InferenceServerException) as caught:
                infer(protocol, server, data, dtype=dtype, **parameters)
            message = str(caught.value)
            assert all(word in message for word in words), f"{what} over {protocol}: {message}"
            assert_equal(infer(protocol, server, clips[:2]), good, runtime.labels)  # still serving
    assert server.process is not None and server.process.poll() is None


def test_eight_concurrent_clients_get_correct_results(
    server: TritonServer, runtime: Runtime, clips: np.ndarray
) -> None:
    want = expected(runtime, clips)
    failures: list[str] = []

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        try:
            for _ in range(6):
                rows = rng.choice(len(clips), size=int(rng.integers(1, 4)), replace=False)
                served = infer("grpc" if k % 2 else "http", server, clips[rows])
                assert_equal(served, [want[i] for i in rows], runtime.labels)
        except Exception as error:  # collected: an assertion in a thread would be lost
            failures.append(f"client {k}: {error!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a client did not finish within 300 s"
    assert not failures, "\n".join(failures)


def test_a_restarted_server_serves_the_same_answers(
    repository: Path, runtime: Runtime, clips: np.ndarray, tmp_path: Path
) -> None:
    before = shm_regions()
    answers = []
    for run in range(2):
        server = TritonServer(repository, log=tmp_path / f"run{run}.log").start(timeout=180)
        pgid = server.process.pid if server.process else -1
        try:
            answers.append(infer("http", server, clips[: runtime.manifest.max_batch]))
        finally:
            server.stop()
        assert not group_members(pgid), f"run {run}: processes of the server's group outlived stop()"
        stopped_cleanly(server, before)
    assert_equal(answers[1], expected(runtime, clips[: runtime.manifest.max_batch]), runtime.labels)
    for name in ("label", "bucket", "score"):
        np.testing.assert_array_equal(answers[0][name], answers[1][name])


def test_a_failing_start_reports_the_end_of_the_server_log(tmp_path: Path) -> None:
    """A model that cannot load: the fixture's wait fails fast with the server's own words, and leaves nothing."""
    from vared2.serve import TritonServerError

    broken = tmp_path / "repo"
    (broken / "vared2" / "1").mkdir(parents=True)
    (broken / "vared2" / "config.pbtxt").write_text('name: "vared2"\nbackend: "no_such_backend"\n')
    server = TritonServer(broken)
    with pytest.raises(TritonServerError, match="no_such_backend"):
        server.start(timeout=60)
    assert server.process is None


def _free_port_block(size: int = 3) -> int:
    """A port P with P … P + size - 1 all free on 127.0.0.1 now (``vared2 serve`` uses P, P+1, P+2)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + size > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


def _tritonservers_on(port: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"--http-port={port}".encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def test_vared2_serve_runs_in_the_foreground_and_ctrl_c_stops_it_cleanly(
    engines: Path, runtime: Runtime, clips: np.ndarray
) -> None:
    port = _free_port_block()
    before = shm_regions()
    folders = set(Path(tempfile.gettempdir()).glob("vared2-serve-*"))
    command = [sys.executable, "-m", "vared2", "serve", str(engines), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the server is ready
        assert f"HTTP 127.0.0.1:{port}, gRPC 127.0.0.1:{port + 1}" in line, line + process.stdout.read()
        server = TritonServer(engines, http_port=port, grpc_port=port + 1)  # only for its addresses
        assert_equal(infer("grpc", server, clips[:3]), expected(runtime, clips[:3]), runtime.labels)
        assert _tritonservers_on(port)
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait(timeout=60) == 0
        assert "stopping tritonserver" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert not _tritonservers_on(port), "tritonserver outlived vared2 serve"
    assert not (shm_regions() - before)
    assert set(Path(tempfile.gettempdir()).glob("vared2-serve-*")) <= folders, "the temporary repository is left"
