"""vared2.bench: trtexec's statistics and loop, the summary format, and real short runs on toy ONNX Runtime engines
(built with ``vared2.engines.build``) — JSON, latency table, plot, ceilings, dynamic workload. No timing
thresholds: only what must hold whatever the machine's speed."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from io import StringIO
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ort_toy import write_toy_onnx_dir

from vared2.bench import (
    Stats,
    Trace,
    coefficient_of_variance,
    instability_warning,
    measure,
    median,
    parse_percentiles,
    percentile,
    percentile_index,
    run_bench,
    summary_lines,
)
from vared2.bench.ceiling import conv_layers, conv_only_model
from vared2.bench.profile import profile_bucket
from vared2.bench.run import stem_in_buckets
from vared2.bench.stats import fmt, perf_string
from vared2.bench.stem import stem_only_model
from vared2.bench.timing import measure_interleaved
from vared2.engines.build import build_engines

FRAMES, SIZE = 8, 32
SHORT = {"warmup_ms": 10.0, "iterations": 3, "duration_s": 0.05}


# --- trtexec's statistics --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "p", "index"),
    [
        # Worked by hand with trtexec's rule, e = int((1 - p/100) * n) in float32, index = max(n - 1 - e, 0):
        (10, 90, 8),  # 1 - 0.9f = 0.100000024 → e = int(1.0000002) = 1 (float64 would give e = 0, index 9)
        (10, 95, 9),  # e = int(0.5) = 0
        (10, 99, 9),
        (10, 50, 4),  # e = 5: the lower middle sample, not the median's average
        (20, 95, 18),  # 1 - 0.95f = 0.050000012 → e = int(1.0000002) = 1
        (100, 90, 89),  # e = int(10.000002) = 10
        (1000, 99, 990),  # 1 - 0.99f = 0.00999999 → e = int(9.99999) = 9
        (1000, 99.9, 999),
        (3, 50, 1),
        (2, 50, 0),
        (1, 99, 0),
        (7, 0, 0),  # e = 7 → max(-1, 0)
        (7, 100, 6),
    ],
)
def test_percentile_index_follows_trtexec(count: int, p: float, index: int) -> None:
    assert percentile_index(count, p) == index


def test_percentile_on_known_arrays_picks_samples_without_interpolation() -> None:
    values = [7.0, 3.0, 10.0, 1.0, 9.0, 2.0, 8.0, 4.0, 6.0, 5.0]  # 1..10, shuffled
    assert percentile(values, 90) == 9.0
    assert percentile(values, 95) == 10.0
    assert percentile(values, 99) == 10.0
    assert percentile(values, 50) == 5.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    hundred = [float(v) for v in range(1, 101)]
    assert percentile(hundred, 90) == 90.0 and percentile(hundred, 95) == 95.0 and percentile(hundred, 99) == 100.0
    assert median(values) == 5.5 and median([3.0, 1.0, 2.0]) == 2.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0, 2.0], 101)
    with pytest.raises(ValueError, match="empty"):
        percentile([], 90)
    with pytest.raises(ValueError, match="percentile"):
        parse_percentiles("90,abc")
    with pytest.raises(ValueError, match="percentile"):
        parse_percentiles("-1")
    assert parse_percentiles("90,95,99.9") == (90.0, 95.0, 99.9)


def test_coefficient_of_variance_is_population_std_over_mean_in_percent() -> None:
    # mean 2.5, population variance 1.25 → 100 * sqrt(1.25) / 2.5
    assert coefficient_of_variance([1.0, 2.0, 3.0, 4.0]) == pytest.approx(44.72135955)
    assert coefficient_of_variance([5.0, 5.0, 5.0]) == 0.0


def test_numbers_print_like_a_cpp_ostream() -> None:
    assert [fmt(v) for v in (9.114141, 120.6994, 0.0, 1e-5, 3.0, 1234567.0)] == [
        "9.11414",
        "120.699",
        "0",
        "1e-05",
        "3",
        "1.23457e+06",
    ]


def test_latency_line_has_trtexecs_format() -> None:
    stats = Stats.of([float(v) for v in range(1, 11)], (90, 95, 99))
    assert perf_string(stats) == (
        "min = 1 ms, max = 10 ms, mean = 5.5 ms, median = 5.5 ms, "
        "percentile(90%) = 9 ms, percentile(95%) = 10 ms, percentile(99%) = 10 ms"
    )
    assert perf_string(Stats.of([2.0, 4.0], (99.9,))).endswith("percentile(99.9%) = 4 ms")


# --- the loop --------------------------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when a step runs: each step takes ``step_ms``."""

    def __init__(self, step_ms: float) -> None:
        self.now = 100.0
        self.step_ms = step_ms
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.calls += 1
        self.now += self.step_ms / 1e3


def test_warmup_runs_until_its_time_has_passed_then_both_iterations_and_duration_bound() -> None:
    clock = FakeClock(10.0)
    # 25 ms of warm-up at 10 ms a run: runs at 0, 10, 20 ms → 3; then 0.1 s needs 10 runs (> 5 iterations).
    trace = measure(clock.step, warmup_ms=25, iterations=5, duration_s=0.1, clock=clock)
    assert (trace.warmup_count, trace.count) == (3, 10)
    assert trace.warmup_ms == pytest.approx(30.0)
    assert trace.walltime_ms == pytest.approx(100.0)
    assert trace.samples["latency"] == pytest.approx([10.0] * 10)
    assert clock.calls == 13

    clock = FakeClock(10.0)
    trace = measure(clock.step, warmup_ms=0, iterations=20, duration_s=0.05, batch=4, clock=clock)
    assert (trace.warmup_count, trace.count) == (0, 20)  # iterations bound: 20 runs are 0.2 s > 0.05 s
    assert trace.throughput_qps == pytest.approx(4 * 20 / 0.2)


def test_interleaved_steps_run_in_rounds_until_each_meets_both_bounds() -> None:
    """Three steps of 10, 20 and 40 ms on one clock: every round runs each once (in a shuffled order), warm-up
    until 25 ms per step have passed, then rounds until each has 3 runs and 0.1 s of its own time — the 10 ms step
    sets the count (10 rounds)."""
    clock = FakeClock(0.0)
    calls: list[int] = []

    def step(index: int, ms: float) -> Callable[[], None]:
        def run() -> None:
            calls.append(index)
            clock.now += ms / 1e3

        return run

    traces = measure_interleaved(
        [step(0, 10.0), step(1, 20.0), step(2, 40.0)], warmup_ms=25, iterations=3, duration_s=0.1, clock=clock
    )
    assert [t.warmup_count for t in traces] == [2, 2, 2]  # 70 ms a round: 75 ms needs two
    assert [t.count for t in traces] == [10, 10, 10]
    assert [t.latency.median for t in traces] == pytest.approx([10.0, 20.0, 40.0])
    timed = calls[6:]
    assert all(sorted(timed[i : i + 3]) == [0, 1, 2] for i in range(0, 30, 3))  # each round runs each once
    assert len({tuple(timed[i : i + 3]) for i in range(0, 30, 3)}) > 1  # in more than one order
    with pytest.raises(ValueError, match="no steps"):
        measure_interleaved([])


def test_a_real_short_run_meets_both_bounds() -> None:
    def work() -> None:
        sum(range(2000))

    trace = measure(work, warmup_ms=5, iterations=3, duration_s=0.02)
    assert trace.count >= 3 and trace.walltime_ms >= 20.0
    assert len(trace.samples["latency"]) == trace.count and all(v >= 0 for v in trace.samples["latency"])


@pytest.mark.parametrize("bad", [{"warmup_ms": -1}, {"iterations": 0}, {"duration_s": -0.5}, {"batch": 0}])
def test_bad_settings_name_the_option(bad: Mapping[str, float]) -> None:
    settings = {"warmup_ms": 0.0, "iterations": 1, "duration_s": 0.0, "batch": 1, **bad}
    option = {"warmup_ms": "--warmup", "iterations": "--iterations", "duration_s": "--duration", "batch": "--batch"}
    with pytest.raises(ValueError, match=option[next(iter(bad))]):
        measure(lambda: None, **settings)  # type: ignore[arg-type]


# --- the summary and the instability warning ---------------------------------------------------------------------


def host_trace(values: list[float], batch: int = 1) -> Trace:
    return Trace({"latency": values}, 2, 201.0, sum(values), batch).summarise((90, 95, 99))


def test_summary_block_has_trtexecs_lines_in_order() -> None:
    lines = summary_lines(host_trace([float(v) for v in range(1, 11)]))
    assert lines[:5] == [
        "Warmup completed 2 queries over 201 ms",
        "Timing trace has 10 queries over 0.055 s",
        "=== Performance summary ===",
        "Throughput: 181.818 qps",
        "Latency: min = 1 ms, max = 10 ms, mean = 5.5 ms, median = 5.5 ms, percentile(90%) = 9 ms, "
        "percentile(95%) = 10 ms, percentile(99%) = 10 ms",
    ]
    assert "Total Host Walltime: 0.055 s" in lines
    assert "Coefficient of variance (Latency): 52.2233%" in lines
    assert not any("GPU" in line for line in lines)


def test_device_phases_print_as_trtexecs_gpu_lines() -> None:
    clock = FakeClock(1.0)
    phases = iter([{"enqueue": 0.1, "h2d": 0.5, "compute": 2.0 + 0.01 * (i % 2), "d2h": 0.25} for i in range(100)])

    def step() -> dict[str, float]:
        clock.step()
        return next(phases)

    trace = measure(step, warmup_ms=0, iterations=4, duration_s=0, clock=clock)
    lines = summary_lines(trace)
    titles = [line.split(":")[0] for line in lines[3:9]]
    assert titles == ["Throughput", "Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency"]
    assert trace.stats["latency"].median == pytest.approx(0.5 + 2.005 + 0.25)  # h2d + compute + d2h, as trtexec
    assert any(line.startswith("Total GPU Compute Time: ") for line in lines)
    assert not instability_warning(trace)  # compute CoV 0.25 %


def test_instability_warning_fires_above_trtexecs_threshold() -> None:
    noisy = host_trace([10.0, 10.0, 10.0, 20.0])  # CoV 33 %
    assert noisy.unstable
    warning = instability_warning(noisy)
    assert warning[0] == "[W] * CPU compute time is unstable, with coefficient of variance = 34.641%."
    assert instability_warning(noisy)[0] in summary_lines(noisy)
    steady = host_trace([10.0, 10.1, 9.9, 10.0])  # CoV 0.7 %
    assert not steady.unstable and not instability_warning(steady)

    phases = {"enqueue": [0.1] * 4, "h2d": [0.5] * 4, "compute": [2.0, 2.0, 2.0, 3.0], "d2h": [0.5] * 4}
    device = Trace({"latency": [3.0] * 4, **phases}, 0, 0.0, 12.0).summarise()  # compute: mean 2.25, std 0.433
    assert instability_warning(device) == [
        "[W] * GPU compute time is unstable, with coefficient of variance = 19.245%.",
        "[W]   If not already in use, locking GPU clock frequency may improve the stability.",
    ]


# --- real runs on toy engines ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_toy_onnx_dir(root / "onnx", frames=FRAMES, size=SIZE)
    return build_engines(root / "onnx", root / "engines", progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic videos relabelled onto the toy's five classes (label index mod 5)."""
    from vared2.models.synthetic import CLASSES, write_dataset

    root = write_dataset(tmp_path_factory.mktemp("data") / "synth", clips=12, frames=FRAMES, size=SIZE,
                         val_fraction=0.5, progress=False)  # fmt: skip
    rows = list(csv.DictReader((root / "val.csv").open()))
    with (root / "val.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "motion"])
        for row in rows:
            writer.writerow([row["path"], f"class{CLASSES.index(row['label']) % 5}", row["motion"]])
    return root


def test_run_bench_prints_summaries_and_writes_every_file(engines: Path, data: Path, tmp_path: Path) -> None:
    out = StringIO()
    report = run_bench(
        engines,
        **SHORT,
        percentiles="50,99",
        json_path=tmp_path / "bench.json",
        latency_table=tmp_path / "latency.json",
        plot=tmp_path / "plot.png",
        data=data,
        threads=1,
        out=out,
    )
    text = out.getvalue()
    assert text.count("=== Performance summary ===") == 1 + 3  # the gate and three buckets
    assert len(re.findall(r"^Throughput: [0-9.e+-]+ qps$", text, re.M)) == 4
    latency = r"^Latency: min = .* ms, percentile\(50%\) = .* ms, percentile\(99%\) = .* ms$"
    assert len(re.findall(latency, text, re.M)) == 4
    assert "Efficiency" in text and "dynamic workload" in text

    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["settings"] | {"percentiles": [50.0, 99.0], "threads": 1, "batch": 1} == saved["settings"]
    assert saved["engine"]["backend"] == "onnxruntime"
    assert len(saved["buckets"]) == 3
    full = saved["buckets"][0]
    assert full["flops_fraction"] == 1.0 and full["efficiency"] == 1.0 and full["ceiling"] == 1.0
    own = sum(layer.macs for layer in conv_layers(engines / "bucket_0.onnx", batch=1)) / 1e9
    for b in saved["buckets"]:
        trace = b["trace"]
        assert trace["count"] >= 3 and len(trace["samples_ms"]["latency"]) == trace["count"]
        assert b["median_ms"] == trace["latency"]["median"] == median(trace["samples_ms"]["latency"])
        assert trace["latency"]["percentiles"]["99"] == percentile(trace["samples_ms"]["latency"], 99)
        assert b["latency_fraction"] == pytest.approx(b["median_ms"] / full["median_ms"])
        assert b["efficiency"] == pytest.approx(b["flops_fraction"] / b["latency_fraction"])
        engine_fraction = b["engine_gflops"] / (full["gflops"] - b["stem_gflops"])
        assert b["engine_efficiency"] == pytest.approx(engine_fraction / b["latency_fraction"])
        assert b["efficiency_over_ceiling"] == pytest.approx(b["engine_efficiency"] / b["ceiling"])
        # what the manifest counts beyond the full bucket's own convolutions: the stem, as the real model counts it
        # (the toy's stand-in GFLOPs also count biases), not the gate engine's padded or stacked convolutions
        assert b["stem_gflops"] == pytest.approx(full["gflops"] - own)
        assert b["stem_gflops"] == pytest.approx(8 * 3 * 9 * FRAMES * SIZE * SIZE / 1e9, rel=0.1)
        conv = b["conv_only"]
        assert conv["ceiling"] == pytest.approx(conv["conv_flops_fraction"] / conv["conv_latency_fraction"])
    assert [b["conv_only"]["conv_flops_fraction"] < 1 for b in saved["buckets"]] == [False, True, True]
    assert saved["gate"]["fraction_of_full"] == pytest.approx(saved["gate"]["median_ms"] / full["median_ms"])
    split = saved["gate"]["split"]
    assert split["decision_ms"] == pytest.approx(split["gate_median_ms"] - split["stem_median_ms"])
    share = split["stem_median_ms"] / split["gate_median_ms"]
    assert split["stem_share_of_gate"] == pytest.approx(share)
    assert split["decision_share_of_gate"] == pytest.approx(1 - share)
    assert split["stem_fraction_of_full"] == pytest.approx(share * saved["gate"]["fraction_of_full"])
    assert split["decision_fraction_of_full"] == pytest.approx((1 - share) * saved["gate"]["fraction_of_full"])
    assert split["stem_median_ms"] == median(split["stem_trace"]["samples_ms"]["latency"])
    assert 0 < split["stem_nodes"] < split["gate_nodes"]
    line = r"^gate split \(interleaved\): stem alone [0-9.]+ of [0-9.]+ ms = [0-9.]+% of the gate; so of the full"
    assert re.search(line, text, re.M)

    dynamic = saved["dynamic"]
    assert dynamic["clips"] == 6
    gflops = json.loads((engines / "manifest.json").read_text())
    gate = gflops["gate"]["gflops"]
    allowed = {gate + b["gflops"] for b in gflops["buckets"]}
    assert dynamic["static_full"]["mean_gflops"] == pytest.approx(gate + gflops["buckets"][0]["gflops"])
    assert sum(dynamic["dynamic"]["bucket_counts"].values()) == 6
    assert dynamic["static_full"]["bucket_counts"] == {gflops["buckets"][0]["name"]: 6}
    assert min(allowed) - 1e-12 <= dynamic["dynamic"]["mean_gflops"] <= max(allowed) + 1e-12
    for way in ("dynamic", "static_full"):
        assert dynamic[way]["accuracy"] * 6 == pytest.approx(round(dynamic[way]["accuracy"] * 6))
    assert dynamic["target_ratio"] == pytest.approx(
        dynamic["dynamic"]["mean_ms"] / (dynamic["flops_fraction"] * dynamic["static_full"]["mean_ms"])
    )
    assert dynamic["drifted"] == (dynamic["static_full"]["latency"]["cov_percent"] > 2.5)

    table = json.loads((tmp_path / "latency.json").read_text())
    assert table["format"] == "vared2-latency-table" and table["unit"] == "ms" and table["backend"] == "onnxruntime"
    assert table["buckets"] == {b["name"]: b["median_ms"] for b in saved["buckets"]}
    assert table["gate_ms"] == saved["gate"]["median_ms"] and table["device"] == saved["engine"]["device"]

    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.table().splitlines()[0].split()[:3] == ["id", "bucket", "policy"]


def test_batch_scales_the_throughput_and_the_inputs(engines: Path) -> None:
    report = run_bench(engines, **SHORT, batch=2, ceiling=False, out=StringIO())
    assert report.gate_split is None  # timed with the ceilings
    assert "dynamic workload: not run (give --data DATA_DIR" in report.table()  # said, not silently missing
    assert report.gate.batch == 2 and all(b.trace.batch == 2 for b in report.buckets)
    trace = report.buckets[1].trace
    assert trace.throughput_qps == pytest.approx(2 * trace.count / trace.walltime_ms * 1e3)
    assert report.ceiling_note and report.buckets[1].ceiling is None
    with pytest.raises(ValueError, match="--batch: 9 exceeds the engines' max batch 8"):
        run_bench(engines, **SHORT, batch=9, out=StringIO())


def test_bad_arguments_fail_before_timing(engines: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such engine directory"):
        run_bench(tmp_path / "missing", **SHORT, out=StringIO())
    with pytest.raises(ValueError, match="percentile"):
        run_bench(engines, **SHORT, percentiles="90,150", out=StringIO())
    with pytest.raises(FileNotFoundError, match="--data"):
        run_bench(engines, **SHORT, data=tmp_path / "nothing", out=StringIO())
    # Bad data is found before minutes of timing: the workload is read and decoded first.
    bad = tmp_path / "bad.csv"
    first = next(csv.DictReader((data / "val.csv").open()))
    no_list = tmp_path / "no_list"
    no_list.mkdir()
    not_a_video = tmp_path / "not_a_video.mp4"
    not_a_video.write_bytes(b"not a video")
    for rows, error, message in (
        (None, FileNotFoundError, "val.csv: no such file"),
        (f"{data / first['path']},not_a_class", ValueError, "label 'not_a_class' is not one of the engine's classes"),
        (f"{not_a_video},{first['label']}", ValueError, "not_a_video.mp4"),
    ):
        if rows is not None:
            bad.write_text(f"path,label\n{rows}\n")
        out = StringIO()
        with pytest.raises(error, match=message):
            run_bench(engines, **SHORT, ceiling=False, data=no_list if rows is None else bad, out=out)
        assert "Performance summary" not in out.getvalue()


def test_replay_serves_a_recorded_bucket_mix(engines: Path, data: Path, tmp_path: Path) -> None:
    """A recorded mix (keyed by bucket name or by policy) is served clip for clip on this engine's buckets."""
    manifest = json.loads((engines / "manifest.json").read_text())
    first, third = manifest["buckets"][0], manifest["buckets"][2]
    policy = "/".join(f"t{pt}c{pc}" for pt, pc in third["policy"])
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps({"dynamic": {"dynamic": {"bucket_counts": {first["name"]: 2, policy: 3}}}}))
    out = StringIO()
    run_bench(engines, **SHORT, ceiling=False, replay=recorded, json_path=tmp_path / "b.json", out=out)
    saved = json.loads((tmp_path / "b.json").read_text())["dynamic"]
    gate = manifest["gate"]["gflops"]
    assert saved["clips"] == 5 and saved["data"] == f"replay:{recorded}"
    assert saved["dynamic"]["bucket_counts"] == {first["name"]: 2, third["name"]: 3}
    assert saved["static_full"]["bucket_counts"] == {first["name"]: 5}
    expected = gate + (2 * first["gflops"] + 3 * third["gflops"]) / 5
    assert saved["dynamic"]["mean_gflops"] == pytest.approx(expected)
    assert saved["dynamic"]["accuracy"] is None and saved["static_full"]["accuracy"] is None
    assert "replayed workload: 5 clips" in out.getvalue() and "n/a" in out.getvalue()


FULL_POLICY = "t0c0/t0c0/t0c0"  # the tiny test engines have three stages


def test_replay_rejects_files_without_a_usable_mix(engines: Path, data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content, message in (
        ("{not json", "not a readable vared2 bench JSON"),
        (json.dumps({"dynamic": None}), "no dynamic workload recorded"),
        (json.dumps({"dynamic": {"dynamic": {"bucket_counts": {"t9c9": 1}}}}), r"recorded buckets \['t9c9'\]"),
        (json.dumps({"dynamic": {"dynamic": {"bucket_counts": {}}}}), r"total 1\.\.1000000 clips, got 0"),
        (json.dumps({"dynamic": {"dynamic": {"bucket_counts": {FULL_POLICY: 10**12}}}}), r"got 1000000000000$"),
        (json.dumps({"dynamic": {"dynamic": {"bucket_counts": [1]}}}), "no dynamic workload recorded"),
        ("[" * 100_000 + "]" * 100_000, "not a readable vared2 bench JSON"),
    ):
        bad.write_text(content)
        out = StringIO()
        with pytest.raises(ValueError, match=message):
            run_bench(engines, **SHORT, ceiling=False, replay=bad, out=out)
        assert "Performance summary" not in out.getvalue()  # rejected before any timing
    with pytest.raises(ValueError, match="--replay and --data"):
        run_bench(engines, **SHORT, ceiling=False, replay=bad, data=data, out=StringIO())
    with pytest.raises(ValueError, match="--clips takes the first N videos of --data; a --replay serves"):
        run_bench(engines, **SHORT, ceiling=False, replay=bad, clips=5, out=StringIO())
    with pytest.raises(FileNotFoundError, match="--replay"):
        run_bench(engines, **SHORT, ceiling=False, replay=tmp_path / "none.json", out=StringIO())


# --- ceilings and profiles -----------------------------------------------------------------------------------------


def test_conv_only_graph_keeps_every_conv_at_its_real_shape(engines: Path) -> None:
    full, narrow = conv_layers(engines / "bucket_0.onnx", batch=2), conv_layers(engines / "bucket_2.onnx", batch=2)
    # toy widths 8 → 16 → 16 → 32 at 8×32×32; bucket 2 computes 1/2, 1/2, 1/4 of the stage channels
    assert [layer.output_shape for layer in full] == [(2, c, FRAMES, SIZE, SIZE) for c in (16, 16, 32)]
    assert [layer.weight_shape[:2] for layer in narrow] == [(8, 8), (8, 16), (8, 16)]
    assert full[0].macs == 2 * 16 * FRAMES * SIZE * SIZE * 8 * 27
    model = conv_only_model(narrow)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": np.ones(layer.input_shape, np.float32) for i, layer in enumerate(narrow)}
    outputs = session.run(None, feeds)
    assert [o.shape for o in outputs] == [layer.output_shape for layer in narrow]

    own = sum(layer.macs for layer in conv_layers(engines / "bucket_0.onnx")) / 1e9
    stem = 8 * 3 * 9 * FRAMES * SIZE * SIZE / 1e9
    assert stem_in_buckets(engines / "gate.onnx", own + stem, own) == pytest.approx(stem)
    assert stem_in_buckets(engines / "gate.onnx", own, own) == 0.0


def test_stem_only_graph_computes_the_gates_features_and_nothing_else(engines: Path, tmp_path: Path) -> None:
    import onnx

    gate = onnx.load(str(engines / "gate.onnx"))
    stem = stem_only_model(gate, engines / "gate.onnx")
    assert [o.name for o in stem.graph.output] == ["features"]
    assert len(stem.graph.node) < len(gate.graph.node)
    assert not {"Gemm", "Flatten"} & {node.op_type for node in stem.graph.node}  # the head's MLP is gone
    used = {name for node in stem.graph.node for name in node.input}
    assert {t.name for t in stem.graph.initializer} <= used
    clip = np.random.default_rng(1).integers(0, 256, (2, FRAMES, SIZE, SIZE, 3), np.uint8)
    full = ort.InferenceSession(str(engines / "gate.onnx"), providers=["CPUExecutionProvider"])
    alone = ort.InferenceSession(stem.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(alone.run(None, {"clip": clip})[0], full.run(["features"], {"clip": clip})[0],
                               rtol=1e-6, atol=1e-6)  # fmt: skip

    del gate.graph.output[0]  # a graph without the features output names the file and what it has
    with pytest.raises(ValueError, match=r"gate\.onnx: the gate graph has no 'features' output \(outputs: bucket"):
        stem_only_model(gate, tmp_path / "gate.onnx")


def test_profile_totals_kernel_time_per_op_type(engines: Path, tmp_path: Path) -> None:
    import onnx

    from vared2.formats.manifest import Manifest
    from vared2.formats.sessions import DEFAULT_SESSION_CONFIG, session_options

    profile = profile_bucket(engines, 2, runs=2, threads=1)
    assert (profile.bucket, profile.runs) == (2, 2)
    # One kernel per node of the graph ONNX Runtime runs: the bucket optimised as the engines are, saved and counted.
    manifest = Manifest.load(engines)
    config = {**DEFAULT_SESSION_CONFIG, **manifest.build_options.get("ort_session_config", {})}
    options = session_options(manifest.build_options.get("optimization", "all"), 1, config)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(engines / manifest.bucket(2).file), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    kernels: dict[str, int] = {}
    for node in optimized.graph.node:
        kernels[node.op_type] = kernels.get(node.op_type, 0) + 1
    assert profile.nodes == kernels and set(profile.per_op_ms) == set(kernels) and "Conv" in kernels
    # Mean milliseconds per run: every op took some time, and at one thread the kernels run one after another
    # inside the run, so together they cannot take longer than the run's own wall time.
    assert all(ms > 0 for ms in profile.per_op_ms.values())
    assert profile.total_ms == pytest.approx(sum(profile.per_op_ms.values()))
    assert 0 < profile.total_ms <= profile.run_ms
    saved = profile.to_dict()
    assert saved == {"bucket": 2, "runs": 2, "per_op_ms": profile.per_op_ms, "nodes": kernels,
                     "kernel_total_ms": profile.total_ms, "run_ms": profile.run_ms}  # fmt: skip
    # The table prints the same figures: one row per op type (slowest first), the kernels' total and the run.
    *rows, total, wall = [line.rsplit(maxsplit=3) for line in profile.table().splitlines()[1:]]
    assert [(op, int(n), float(ms)) for op, n, ms, _ in rows] == [
        (op, saved["nodes"][op], round(ms, 2)) for op, ms in sorted(saved["per_op_ms"].items(), key=lambda kv: -kv[1])
    ]
    assert total == ["kernels total", str(sum(kernels.values())), f"{saved['kernel_total_ms']:.2f}", "100.0%"]
    assert wall[-2:] == ["(wall)", f"{saved['run_ms']:.2f}"]


@pytest.mark.gpu
def test_tensorrt_bench_reports_cuda_event_times(tmp_path: Path) -> None:
    write_toy_onnx_dir(tmp_path / "onnx", frames=FRAMES, size=SIZE)
    build_engines(tmp_path / "onnx", tmp_path / "trt", backend="tensorrt", progress=False)
    out = StringIO()
    report = run_bench(tmp_path / "trt", **SHORT, out=out)
    text = out.getvalue()
    for title in ("Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency", "Total GPU Compute Time"):
        assert text.count(f"{title}: ") == 4
    assert report.gate.device and all(b.trace.device for b in report.buckets)
    assert report.ceiling_note and "tensorrt" in report.ceiling_note


def test_a_drifting_machine_flags_the_dynamic_ratio() -> None:
    """The interleaved static full calls repeat one computation, so their spread is the machine's: above trtexec's
    2.5 % the dynamic workload is reported unstable; the dynamic calls' own spread (the bucket mix) does not count."""
    from vared2.bench.dynamic import DynamicResult, WorkloadResult

    def workload(latency: list[float]) -> WorkloadResult:
        return WorkloadResult(latency, [1.0] * len(latency), [], [0] * len(latency))

    mixed = [50.0, 200.0] * 10  # the mix of buckets: wide, but not drift
    steady = DynamicResult("d", 20, workload(mixed), workload([200.0, 201.0] * 10), 2.0)
    drifting = DynamicResult("d", 20, workload(mixed), workload([200.0] * 10 + [300.0] * 10), 2.0)
    assert not steady.drifted and drifting.drifted
    assert drifting.to_dict(["full"], [50.0])["drifted"] is True


# `vared2 bench ...` in a fresh process, recording every ONNX Runtime session it creates (file, and whether it
# has its own threads) and this process's shared pool size; the real sessions run unchanged.
OBSERVED_BENCH = """
import json, sys
from pathlib import Path
import onnxruntime as ort
from vared2.cli import main
from vared2.runtime import thread_pool

sessions = []

class Observed(ort.InferenceSession):
    def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs):
        super().__init__(path_or_bytes, sess_options, *args, **kwargs)
        name = Path(path_or_bytes).name if isinstance(path_or_bytes, str) else "<bytes>"
        sessions.append([name, self.get_session_options().use_per_session_threads])

ort.InferenceSession = Observed
sys.argv = ["vared2", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"sessions": sessions, "pool_threads": thread_pool._threads}))
sys.exit(code)
"""


def test_bench_on_a_shared_thread_pool_says_so_everywhere(engines: Path, tmp_path: Path) -> None:
    """`--shared-thread-pool` (in its own process: the pool belongs to the process) times every engine and the
    ceilings on it — every session the bench opens runs on the process's pool of 2 threads, none on its own —
    and the header, the JSON settings and the latency table record it."""
    out = tmp_path / "bench.json"
    table = tmp_path / "latency.json"
    args = [sys.executable, "-c", OBSERVED_BENCH, "bench", str(engines), "--warmup", "10", "--iterations", "3"]
    args += ["--duration", "0.05", "--threads", "2", "--shared-thread-pool", "--json", str(out)]
    run = subprocess.run([*args, "--latency-table", str(table)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "threads 2, one shared thread pool" in run.stdout and "Conv-only graph medians" in run.stdout
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["pool_threads"] == 2
    # the gate and the three buckets (Runtime.open), the three conv-only graphs, the gate and its stem alone
    files = ["gate.onnx", "bucket_0.onnx", "bucket_1.onnx", "bucket_2.onnx", "conv_only_0.onnx", "conv_only_1.onnx"]
    files += ["conv_only_2.onnx", "gate.onnx", "stem_only.onnx"]
    assert sorted(name for name, _ in found["sessions"]) == sorted(files)
    assert [name for name, per_session in found["sessions"] if per_session] == []
    assert json.loads(out.read_text())["settings"]["shared_thread_pool"] is True
    assert json.loads(table.read_text())["shared_thread_pool"] is True
