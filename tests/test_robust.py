"""Fail early, never hang, say what is happening (issue 27) and exit codes by error type (issue 23 item 5): real
engines (tests/test_runtime_models), real videos, a real TCP server on 127.0.0.1, the CLI in subprocesses."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime_models import FRAMES, SIZE
from test_runtime_video import write_mp4

from vared2.cli import cli
from vared2.formats.errors import CheckFailed, InputError, InputTypeError
from vared2.runtime import Result, Runtime, StreamDecodeError, VideoOpenError
from vared2.runtime.errors import RuntimeClosedError
from vared2.runtime.video import DEFAULT_TIMEOUT
from vared2.stages import run_stage

ROOT = Path(__file__).resolve().parents[1]
READ_ONLY = Path("/sys")  # read-only for root too, where os.access says yes


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("videos") / "clip.mp4")


def clip(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def vared2(*args: str, env: dict[str, str] | None = None, prelude: str = "", **kw: object) -> subprocess.Popen[str]:
    """The CLI in a fresh interpreter (``prelude`` runs first), so exit codes and streams are the real ones."""
    code = f"{prelude}\nimport sys\nfrom vared2.cli import main\nsys.argv = ['vared2', *{list(args)!r}]\nmain()\n"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-c", code], env=environment, text=True, cwd=ROOT, **kw
    )


def run_cli(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    process = vared2(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def read_only_location() -> Path:
    probe = READ_ONLY / "vared2-probe"
    try:
        probe.touch()
    except OSError:
        return READ_ONLY
    probe.unlink()
    pytest.skip(f"{READ_ONLY} is writable here; no read-only location to test with")


# ---- exit codes by type ----------------------------------------------------------------------------------


def raising(error: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise error

    return action


def disk_full() -> None:
    with open("/dev/full", "w") as f:
        f.write("x")
        f.flush()


@pytest.mark.parametrize(
    ("action", "code", "message", "traceback"),
    [
        (raising(InputError("--out x: bad")), 2, "vared2: error: --out x: bad", False),
        (raising(InputTypeError("clip must be uint8")), 2, "vared2: error: clip must be uint8", False),
        (raising(CheckFailed("parity")), 1, "vared2: check failed: parity", False),
        (raising(ValueError("a bug")), 3, "vared2: internal error: ValueError: a bug", True),
        (raising(TypeError("a bug")), 3, "vared2: internal error: TypeError: a bug", True),
        (raising(ImportError("cannot import name 'x'")), 3, "internal error: ImportError", True),
        (raising(ModuleNotFoundError("No module named 'vared2.nope'", name="vared2.nope")), 3, "internal", True),
        (raising(KeyError("k")), 3, "vared2: internal error: KeyError", True),
        (raising(KeyboardInterrupt()), 130, "vared2: interrupted", False),
        (raising(OSError(errno.EROFS, "Read-only file system", "/ro/x.json")), 2, "/ro/x.json: Read-only", False),
        (raising(PermissionError(errno.EACCES, "Permission denied", "/x")), 2, "/x: Permission denied", False),
        (raising(BrokenPipeError(errno.EPIPE, "Broken pipe")), 2, "vared2: error: output closed", False),
        (disk_full, 2, "No space left on device", False),
        (raising(OSError(errno.EIO, "I/O error")), 3, "internal error: OSError", True),
        (raising(ModuleNotFoundError("No module named 'torch'", name="torch")), 2, "pip install 'vared2[", False),
    ],
)
def test_exit_codes_come_from_the_error_types(
    action: Callable[[], None], code: int, message: str, traceback: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(action)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert message in err
    assert ("Traceback" in err) == traceback, err
    if not traceback:
        assert len(err.strip().splitlines()) == 1, err


def test_a_missing_extra_names_the_verb_and_its_pip_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(raising(ModuleNotFoundError("No module named 'onnx'", name="onnx")), verb="export")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "vared2: error: vared2 export needs the 'export' extra (onnx is not installed): pip install 'vared2[export]'"
    )


# A runtime-only install, simulated without uninstalling anything: torch's import fails in the child.
NO_TORCH = "import sys\nfor name in ('torch', 'torchvision', 'safetensors'):\n    sys.modules[name] = None"


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["train", "--data", "{tmp}", "--out", "{tmp}/run"], "train"),
        (["fit-gate", "{tmp}", "--data", "{tmp}", "--out", "{tmp}/fit"], "train"),
        (["evaluate", "{tmp}", "--data", "{tmp}"], "train"),
        (["export", "{tmp}", "--out", "{tmp}/onnx"], "export"),
        (["verify", "{tmp}", "--checkpoint", "{tmp}"], "export"),
    ],
)
def test_a_runtime_only_install_says_which_extra_to_install(args: list[str], extra: str, tmp_path: Path) -> None:
    result = run_cli(*(a.format(tmp=tmp_path) for a in args), prelude=NO_TORCH)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"vared2: error: vared2 {args[0]} needs the '{extra}' extra (torch is not installed): "
        f"pip install 'vared2[{extra}]'"
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "onnx").exists()


def test_synth_works_on_a_runtime_only_install(tmp_path: Path) -> None:
    """The synthetic benchmark is numpy and PyAV: no training stack needed to make data."""
    out = tmp_path / "data"
    result = run_cli("synth", "--out", str(out), "--clips", "4", "--frames", "4", "--size", "16", prelude=NO_TORCH)
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("**/*.mp4"))) == 4


def test_infer_works_on_a_runtime_only_install(engine_dir: Path, video: Path) -> None:
    result = run_cli("infer", str(engine_dir), str(video), "--json", prelude=NO_TORCH)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5


# ---- a closed Runtime ---------------------------------------------------------------------------------------


def test_a_closed_runtime_refuses_every_call(engine_dir: Path, video: Path) -> None:
    with Runtime.open(engine_dir, threads=1) as rt:
        assert isinstance(rt.classify(clip()), Result)
        stream = rt.stream(video)
    assert rt.closed
    rt.close()  # idempotent
    for call in (
        lambda: rt.classify(clip()),
        lambda: rt.classify(np.stack([clip(), clip(1)])),
        lambda: rt.stream(video),
        lambda: next(stream),  # made before close, first read after it
    ):
        with pytest.raises(RuntimeClosedError, match="this Runtime is closed"):
            call()


def test_closing_while_threads_call_never_breaks_a_call(engine_dir: Path) -> None:
    """Threads inside ``classify`` finish or get RuntimeClosedError; today they got hundreds of IndexErrors."""
    rt = Runtime.open(engine_dir, threads=1)
    expected = rt.classify(clip())
    assert isinstance(expected, Result)
    outcomes: list[object] = []
    started = threading.Barrier(9)

    def worker() -> None:
        started.wait()
        for _ in range(200):
            try:
                result = rt.classify(clip())
            except RuntimeClosedError:
                outcomes.append("closed")
                return
            except Exception as error:  # anything else is the bug this test is about
                outcomes.append(error)
                return
            assert isinstance(result, Result)
            outcomes.append(result.label == expected.label and result.bucket == expected.bucket)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.05)
    rt.close()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count("closed") == 8, [o for o in outcomes if not isinstance(o, bool)][:5]
    assert all(o is True for o in outcomes if o != "closed")


# ---- stream timeouts ------------------------------------------------------------------------------------------


@contextmanager
def tcp_server(payload: bytes = b"") -> Iterator[str]:
    """A server on 127.0.0.1 that accepts, sends ``payload`` and then never says another word; always closed."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            if payload:
                conn.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


def test_the_default_timeout_is_stated() -> None:
    assert DEFAULT_TIMEOUT == 10.0
    infer_options = {p.name: p for p in cli.commands["infer"].params}
    assert infer_options["timeout"].default == DEFAULT_TIMEOUT
    assert f"{DEFAULT_TIMEOUT:g} s by default" in (ROOT / "README.md").read_text()


def test_a_silent_source_fails_to_open_within_the_timeout(engine_dir: Path) -> None:
    with Runtime.open(engine_dir, threads=1) as rt, tcp_server() as url:
        start = time.monotonic()
        with pytest.raises(VideoOpenError, match=r"no answer within 0\.5 s \(the timeout\)") as info:
            list(rt.stream(url, timeout=0.5))
        assert time.monotonic() - start < 5
        assert info.value.source == url


def mpegts(path: Path, frames: int = 80) -> bytes:
    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            rgb = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path.read_bytes()


def test_a_stream_that_stalls_mid_way_is_a_decode_error_naming_the_timeout(engine_dir: Path, tmp_path: Path) -> None:
    data = mpegts(tmp_path / "live.ts")
    with Runtime.open(engine_dir, threads=1) as rt, tcp_server(data[: len(data) // 2]) as url:
        results = []
        start = time.monotonic()
        with pytest.raises(StreamDecodeError, match=r"stalled: no data within 0\.5 s") as info:
            results.extend(rt.stream(url, timeout=0.5))
        assert time.monotonic() - start < 10
        assert info.value.source == url and info.value.frame_index > 0
        with tcp_server(data[: len(data) // 2]) as url2:  # "stop": the windows before the stall, then the end
            assert len(list(rt.stream(url2, timeout=0.5, on_error="stop"))) > 0


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "10", True])
def test_bad_timeouts_are_refused(engine_dir: Path, video: Path, bad: object) -> None:
    with Runtime.open(engine_dir, threads=1) as rt, pytest.raises(InputError, match="timeout"):
        rt.stream(video, timeout=bad)  # type: ignore[arg-type]


def test_infer_timeout_option(engine_dir: Path, video: Path) -> None:
    with tcp_server() as url:
        start = time.monotonic()
        result = run_cli("infer", str(engine_dir), url, str(video), "--timeout", "0.5", "--on-error", "skip")
        assert time.monotonic() - start < 60
    assert result.returncode == 2, result.stderr
    assert f"vared2: skipped: {url}: no answer within 0.5 s" in result.stderr
    assert "1 of 2 videos failed" in result.stderr
    assert len(result.stdout.splitlines()) == 1 + 5  # the table's header and the good video's windows


# ---- infer's options ---------------------------------------------------------------------------------------


def test_infer_bucket_max_gflops_topk_providers(engine_dir: Path, video: Path) -> None:
    runner = CliRunner()
    base = ["infer", str(engine_dir), str(video), "--json"]

    def rows(*args: str) -> list[dict]:
        return [json.loads(line) for line in runner.invoke(cli, [*base, *args]).stdout.splitlines()]

    forced = rows("--bucket", "2", "--topk", "2")
    assert forced and all(r["bucket"] == 2 and len(r["topk"]) == 2 for r in forced)
    default = rows()
    budget = min(r["gflops"] for r in default)
    capped = rows("--max-gflops", str(budget))
    assert capped and all(r["gflops"] <= budget for r in capped)
    result = runner.invoke(cli, [*base, "--max-gflops", "0.0000001"])
    assert result.exit_code == 2 and "below every bucket" in result.output
    result = runner.invoke(cli, [*base, "--bucket", "t9c9"])
    assert result.exit_code == 2 and "t9c9" in result.output
    result = runner.invoke(cli, [*base, "--providers", "NoSuchExecutionProvider"])
    assert result.exit_code == 2 and "NoSuchExecutionProvider" in result.output
    result = runner.invoke(cli, [*base, "--providers", "CPUExecutionProvider"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == len(default)


def test_infer_on_error_skip_and_stop(engine_dir: Path, video: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    args = ["infer", str(engine_dir), str(tmp_path / "missing.mp4"), str(video), str(broken), str(tmp_path), "--json"]
    result = run_cli(*args, "--on-error", "skip")
    assert result.returncode == 2
    assert len(result.stdout.splitlines()) == 5  # the good video's windows
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["vared2"] * 4, lines
    assert "missing.mp4: no such video file" in lines[0] and "a directory, not a video file" in lines[1]
    assert "broken.mp4" in lines[2]
    assert lines[3] == f"vared2: error: 3 of 4 videos failed: {args[2]}, {broken}, {tmp_path}"
    result = run_cli(*args, "--on-error", "stop")  # the default: refused before anything is printed
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"vared2: error: {args[2]}: no such video file"]


def test_a_closed_pipe_is_one_line_and_exit_2(engine_dir: Path, video: Path) -> None:
    """``vared2 infer … | head -1``: today BrokenPipeError, "internal error", exit 3."""
    process = vared2("infer", str(engine_dir), str(video), str(video), "--json", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, bufsize=0)  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == 2, err
    assert err.strip().splitlines() == ["vared2: error: output closed (broken pipe)"]


#: Ctrl-C as on a terminal: a shell that starts a job in the background (a CI runner may) makes it ignore SIGINT,
#: which Python then keeps ignoring; the child restores the default handler so the test sends what a user sends.
CTRL_C_AS_ON_A_TERMINAL = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)"


def test_ctrl_c_exits_130(engine_dir: Path) -> None:
    process = vared2("bench", str(engine_dir), "--duration", "120", "--no-ceiling", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, prelude=CTRL_C_AS_ON_A_TERMINAL)  # fmt: skip
    assert process.stdout is not None
    process.stdout.readline()  # the bench has started
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vared2: interrupted" and "Traceback" not in err


def test_ctrl_c_cleans_up_before_exiting_130(tmp_path: Path) -> None:
    """synth interrupted mid-way leaves neither its --out nor its temporary folder behind."""
    process = vared2("synth", "--out", str(tmp_path / "data"), "--clips", "400", "--frames", "4", "--size", "32",
                     stderr=subprocess.PIPE, prelude=CTRL_C_AS_ON_A_TERMINAL)  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()  # the first progress line: clips are being written
    assert "synth data:" in line, line
    process.send_signal(signal.SIGINT)
    err = process.stderr.read()
    assert process.wait(timeout=60) == 130, err
    assert err.strip().splitlines()[-1] == "vared2: interrupted"
    assert list(tmp_path.iterdir()) == []


# ---- outputs checked before any work ---------------------------------------------------------------------------


def test_bench_refuses_an_unwritable_output_before_timing(engine_dir: Path, tmp_path: Path) -> None:
    ro = read_only_location()
    runner = CliRunner()
    for option, path in (
        ("--json", ro / "out" / "bench.json"),
        ("--latency-table", ro / "latency.json"),
        ("--plot", ro / "plot.png"),
        ("--plot", tmp_path / "plot.txt"),
    ):
        start = time.monotonic()
        result = runner.invoke(cli, ["bench", str(engine_dir), "--duration", "60", option, str(path)])
        assert result.exit_code == 2, result.output
        assert time.monotonic() - start < 30, "the bench ran before the output was checked"
        assert result.output.strip().splitlines() == [result.output.strip()] and f"{option} {path}" in result.output
        assert "Latency" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["synth", "--out", "{ro}/data"],
        ["train", "--data", "{tmp}", "--out", "{ro}/run"],
        ["fit-gate", "{tmp}", "--data", "{tmp}", "--out", "{ro}/fit"],
        ["evaluate", "{tmp}", "--data", "{tmp}", "--json", "{ro}/e.json"],
        ["evaluate", "{tmp}", "--data", "{tmp}", "--plot", "{tmp}/hist.txt"],
        ["export", "{tmp}", "--out", "{ro}/onnx"],
        ["build", "{tmp}", "--out", "{ro}/engines"],
        ["build", "{tmp}", "--out", "{tmp}/engines", "--timing-cache", "{ro}/timing.cache"],
    ],
)
def test_every_verb_checks_its_outputs_first(args: list[str], tmp_path: Path) -> None:
    ro = read_only_location()
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path, ro=ro) for a in args])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("vared2: error: --") and "\n" not in line, line
    assert list(tmp_path.iterdir()) == []


# ---- training defaults that fit short runs ----------------------------------------------------------------------


def test_a_one_epoch_run_is_not_refused_for_the_warmup_default(tmp_path: Path) -> None:
    from vared2.models.train_config import default_warmup

    assert [default_warmup(e) for e in (1, 3, 4, 12, 40)] == [0, 0, 1, 3, 10]
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
                                      "--epochs", "1"])  # fmt: skip
    assert result.exit_code == 2 and "no 'train' split" in result.output, result.output  # past the settings


@pytest.mark.parametrize(("backbone", "size"), [("r2plus1d_18", 3), ("r2plus1d_18", 16), ("r3d_18", 8)])
def test_a_crop_too_small_for_the_network_is_refused_before_anything_is_written(
    tmp_path: Path, backbone: str, size: int
) -> None:
    (tmp_path / "data").mkdir()
    out = tmp_path / "c"
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "data"), "--out", str(out),
                                      "--backbone", backbone, "--size", str(size), "--frames", "8"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"vared2: error: --size {size}: too small for {backbone} at 8 frames" in result.output
    assert "use --size at least 17" in result.output
    assert not out.exists()


def test_the_crop_rule_matches_the_network() -> None:
    """check_crop's arithmetic against a real training-mode forward pass with a batch of one clip."""
    import torch

    from vared2.models.recipe import check_crop
    from vared2.models.video_resnet import ModelConfig, build_model

    for backbone, frames, size in (("r2plus1d_18", 8, 16), ("r2plus1d_18", 8, 17), ("mc3_18", 4, 8), ("r3d_18", 9, 9)):
        model = build_model(ModelConfig(backbone=backbone, width=0.125, num_classes=2, frames=frames, size=size))
        try:
            with torch.no_grad():
                model.train()(torch.zeros(1, 3, frames, size, size), 0)
            trains = True
        except ValueError:
            trains = False
        try:
            check_crop(backbone, frames, size)
            accepted = True
        except InputError:
            accepted = False
        assert accepted == trains, (backbone, frames, size)


# ---- progress: a bar on a terminal, plain lines in a log -------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_whole_lines_and_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from vared2.formats.progress import progress, say

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress(range(25), desc="work", unit="clip")) == list(range(25))
    say("done")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[-2:] == ["work: 25/25 clips", "done"]
    assert 3 <= len(lines) <= 12  # about every tenth, not every item
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(5), desc="work", unit="clip")) == list(range(5))
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()


def test_synth_writes_plain_progress_lines_into_a_log(tmp_path: Path) -> None:
    """Today tqdm wrote its ``\\r`` frames into redirected stderr."""
    result = run_cli("synth", "--out", str(tmp_path / "data"), "--clips", "6", "--frames", "4", "--size", "32")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "synth data: 6/6 clips" in result.stderr.splitlines()


def test_fit_gate_says_what_it_is_doing(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from vared2.models import r2plus1d_18
    from vared2.models.dataset import ClipListDataset
    from vared2.models.recipe import fit_and_record_gate
    from vared2.models.synthetic import generate

    torch.manual_seed(0)
    model = r2plus1d_18(width=0.125, frames=4, size=32, num_classes=12)
    clips = ClipListDataset(generate(12, seed=3, frames=8, size=40), frames=4, size=32)
    fit_and_record_gate(model, clips, 0.6, None, seed=0, command="test")
    err = capsys.readouterr().err
    assert "fit-gate: decoding the 12 training clips" in err
    assert "fit-gate: each clip's loss under each of the" in err and "at 0.600 of the full bucket's gflops" in err
    assert "every bucket on 12 clips: 1/1 batches" in err


# ---- tables and plots name buckets by their short names, the policy beside ---------------------------------------

CROWDED = [  # short name, policy, GFLOPs, median ms: several points close together, as the demo's are
    ("full", ((0, 0),) * 4, 20.3, 206.0),
    ("c1", ((0, 1),) * 4, 10.5, 131.0),
    ("c2", ((0, 2),) * 4, 5.6, 92.0),
    ("t1", ((1, 0), (1, 0), (0, 0), (0, 0)), 10.2, 128.0),
    ("t1c1", ((1, 1), (1, 1), (0, 1), (0, 1)), 5.3, 90.0),
    ("t1c2", ((1, 2), (1, 2), (0, 2), (0, 2)), 2.9, 70.0),
]


def crowded_report() -> object:
    from vared2.bench import BenchReport, BucketResult, Trace
    from vared2.bench.dynamic import policy_string

    def trace(ms: float) -> Trace:
        return Trace({"latency": [ms, ms * 1.01, ms * 0.99]}, 1, 1.0, 3 * ms).summarise((90,))

    buckets = [
        BucketResult(i, policy_string(p), p, g, trace(ms), CROWDED[0][2], CROWDED[0][3], short_name=short)
        for i, (short, p, g, ms) in enumerate(CROWDED)
    ]
    engine = {"name": "demo", "backend": "onnxruntime", "backend_version": "1.32", "precision": "fp32"}
    return BenchReport("engines/demo", engine, {}, {"batch": 1}, trace(3.0), 0.05, buckets)


def test_the_bench_table_and_plot_use_short_names_and_the_plot_labels_stay_apart_and_inside(tmp_path: Path) -> None:
    from vared2.bench.report import label_box, plot_figure, write_plot

    report = crowded_report()
    table = report.table().splitlines()  # type: ignore[attr-defined]
    assert table[0].split()[:3] == ["id", "bucket", "policy"]
    assert table[2].split()[1:3] == ["full", "t0c0/t0c0/t0c0/t0c0"] and table[5].split()[1] == "t1"
    fig, ax, labels = plot_figure(report)
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    boxes = [label_box(ax, label, renderer) for label in labels]  # the text, not its arrow
    assert [label.get_text().split()[0] for label in labels] == [short for short, *_ in CROWDED]
    assert "t1c1/t1c1/t0c1/t0c1" in labels[4].get_text()
    for i, box in enumerate(boxes):
        assert area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1, labels[i]
        for j in range(i):
            assert not box.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    assert write_plot(report, tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"  # type: ignore[arg-type]


def test_the_evaluation_table_uses_short_names_with_the_policy() -> None:
    from vared2.models.evaluate import Evaluation

    names = [policy for _, policy, *_ in CROWDED]
    from vared2.bench.dynamic import policy_string

    evaluation = Evaluation(
        samples=10,
        accuracy=0.5,
        mean_gflops=1.0,
        full_gflops=2.0,
        gflops_ratio=0.5,
        buckets=[policy_string(p) for p in names],
        short_names=[short for short, *_ in CROWDED],
        histogram=[1, 2, 3, 4, 0, 0],
        forced_bucket=3,
    )
    lines = evaluation.table().splitlines()
    assert "(bucket t1 (t1c0/t1c0/t0c0/t0c0))" in lines[0]
    assert lines[3].split() == ["bucket", "policy", "clips", "share"]
    assert lines[4].split() == ["full", "t0c0/t0c0/t0c0/t0c0", "1", "10.0%"]


# ---- every purposeful error of the user-facing modules is typed -------------------------------------------------

USER_FACING = [
    "runtime/api.py", "runtime/infer.py", "runtime/video.py", "runtime/backends.py", "runtime/errors.py",
    "runtime/thread_pool.py", "engines/build.py", "export/verify.py", "bench/run.py", "bench/dynamic.py",
    "bench/timing.py", "bench/against.py", "export/fold.py", "models/recipe.py", "models/checkpoint.py",
    "models/dataset.py",
    "models/synthetic.py", "models/buckets.py", "models/config.py", "models/train_config.py",
    "models/train_state.py", "models/torchvision_convert.py", "vared2/stages.py",
    *(f"formats/{p.name}" for p in sorted((ROOT / "formats").glob("*.py"))),
]  # fmt: skip
BUILT_INS = {"ValueError", "TypeError", "FileNotFoundError", "FileExistsError", "NotADirectoryError",
             "IsADirectoryError", "ImportError", "OSError"}  # fmt: skip
#: Invariants of the code itself, not input: if one fires, it is a bug (exit code 3) on purpose.
INVARIANTS = ("fill must return a Manifest", "measure_interleaved: no steps to time")


def test_the_user_facing_modules_raise_typed_errors() -> None:
    """A plain built-in raised there would exit 3 ("a bug") from the CLI; the typed ones exit 2."""
    import ast

    found = []
    for relative in USER_FACING:
        tree = ast.parse((ROOT / relative).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None)
                if name in BUILT_INS and not any(text in ast.unparse(node) for text in INVARIANTS):
                    found.append(f"{relative}:{node.lineno}: {name}")
    assert not found, found
