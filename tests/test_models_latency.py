"""Fitting the gate to a device's measured latency (``vared2.formats.latency``, ``vared2 fit-gate``): the table
is read with clear errors, its costs replace GFLOPs in the fit, and the refit checkpoint records them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vared2.cli import cli
from vared2.formats.latency import LATENCY_TABLE_FORMAT, latency_costs
from vared2.models import load, r2plus1d_18
from vared2.models.calibrate import fit_gate
from vared2.models.evaluate import Evaluation

FRAMES, SIZE = 4, 32


def write_table(path: Path, milliseconds: dict[str, object], **fields: object) -> Path:
    table = {"format": LATENCY_TABLE_FORMAT, "version": 1, "unit": "ms", "engine": "toy", "threads": 2}
    path.write_text(json.dumps(table | fields | {"buckets": milliseconds}))
    return path


def test_latency_costs_are_fractions_of_the_full_bucket_in_the_models_order(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.json", {"b": 2.0, "full": 8.0, "a": 6.0, "other model": 1.0})
    assert latency_costs(table, ["full", "a", "b"]) == [1.0, 0.75, 0.25]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"t\.json: no such file"),
        ("{not json", r"t\.json: not readable as JSON"),
        ("[" * 100_000 + "]" * 100_000, r"t\.json: not readable as JSON"),  # nesting beyond the parser's recursion
        ({"format": "something else", "version": 1, "buckets": {}}, r"t\.json: field 'format' must be"),
        ({"format": LATENCY_TABLE_FORMAT, "version": 7, "buckets": {}}, r"t\.json: version 7, this vared2 reads 1"),
        ({"format": LATENCY_TABLE_FORMAT, "version": 1, "buckets": [1, 2]}, r"t\.json: field 'buckets' must map"),
        ({"format": LATENCY_TABLE_FORMAT, "version": 1, "buckets": {"full": 1.0}}, r"no latency for bucket\(s\) a"),
        ({"format": LATENCY_TABLE_FORMAT, "version": 1, "buckets": {"full": 1.0, "a": -2}}, r"bucket a: expected a"),
        ({"format": LATENCY_TABLE_FORMAT, "version": 1, "buckets": {"full": 1.0, "a": "3"}}, r"bucket a: expected a"),
        ({"format": LATENCY_TABLE_FORMAT, "version": 1, "buckets": {"full": 5e-324, "a": 2}}, r"a: 2 ms .* not a"),
    ],
)
def test_a_bad_latency_table_is_a_clear_error(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        latency_costs(path, ["full", "a"])


def test_the_fit_prices_buckets_by_the_costs_it_is_given() -> None:
    """The same model and clips: priced by GFLOPs the cheap buckets carry the target; priced by a (hypothetical)
    device on which every reduced bucket is slower than the full one, the best bucket is always the full one."""
    torch.manual_seed(0)
    model = r2plus1d_18(width=0.125, frames=FRAMES, size=SIZE, num_classes=3).eval()
    clips, labels = torch.randn(16, 3, FRAMES, SIZE, SIZE), torch.randint(0, 3, (16,))
    by_flops = fit_gate(model, clips, labels, 0.6, steps=20)
    assert by_flops.oracle_ratio < 0.7
    slower = [1.0] + [1.5] * (len(model.buckets) - 1)
    by_latency = fit_gate(model, clips, labels, 0.6, steps=20, costs=slower)
    assert by_latency.oracle_ratio == 1.0 and by_latency.gate_agreement == 1.0  # the gate learnt: always full
    with pytest.raises(ValueError, match="2 costs for 6 buckets"):
        fit_gate(model, clips, labels, 0.6, steps=1, costs=[1.0, 0.5])


def test_fit_gate_from_the_command_line_records_the_latency_it_priced(tmp_path: Path) -> None:
    runner = CliRunner()
    data, ckpt, out = tmp_path / "data", tmp_path / "ckpt", tmp_path / "refit"
    result = runner.invoke(cli, ["synth", "--out", str(data), "--clips", "24", "--frames", "8", "--size", "40"])
    assert result.exit_code == 0, result.output
    args = ["train", "--data", str(data), "--out", str(ckpt), "--width", "0.125", "--frames", str(FRAMES)]
    result = runner.invoke(cli, [*args, "--size", str(SIZE), "--epochs", "1", "--warmup-epochs", "1"])
    assert result.exit_code == 0, result.output
    names = [bucket.name for bucket in load(ckpt).buckets]
    # a device on which every reduced bucket is slower than the full one: the best bucket is always the full one
    table = write_table(tmp_path / "latency.json", {name: 4.0 if i == 0 else 5.0 for i, name in enumerate(names)})
    refit = ["fit-gate", str(ckpt), "--data", str(data), "--target-ratio", "0.6"]
    result = runner.invoke(cli, [*refit, "--out", str(out), "--latency-table", str(table)])
    assert result.exit_code == 0, result.output
    assert "of the full bucket's latency" in result.output
    fit = load(out).config.provenance["gate_fit"]
    assert fit["cost"] == "latency" and fit["latency_table"] == str(table) and fit["engine"] == "toy"
    assert fit["costs"] == {name: 1.0 if i == 0 else 1.25 for i, name in enumerate(names)}
    assert fit["oracle_ratio"] == 1.0 and fit["target_ratio"] == 0.6
    assert fit["full_share"] == 1.0 and "the full bucket gets 100.0%" in result.output
    assert "warning" not in result.output
    # priced by GFLOPs at a target only the cheapest bucket meets, the full bucket gets no clip: said
    cheap = ["fit-gate", str(ckpt), "--data", str(data), "--target-ratio", "0.01", "--out", str(tmp_path / "cheap")]
    result = runner.invoke(cli, cheap)
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "cheap").config.provenance["gate_fit"]["full_share"] == 0.0
    assert "warning: the fitted gate sends no training clip to the full bucket" in result.output
    # evaluate prices the choices it made by the same table: the histogram times each bucket's cost
    report = tmp_path / "eval.json"
    args_eval = ["evaluate", str(ckpt), "--data", str(data), "--latency-table", str(table), "--json", str(report)]
    result = runner.invoke(cli, args_eval)
    assert result.exit_code == 0, result.output
    evaluation = json.loads(report.read_text())
    costs = [1.0] + [1.25] * (len(names) - 1)
    expected = sum(c * n for c, n in zip(costs, evaluation["histogram"], strict=True)) / evaluation["samples"]
    assert evaluation["latency_ratio"] == pytest.approx(expected) and evaluation["latency_table"] == str(table)
    assert f"of full by {table}" in result.output

    write_table(table, {names[0]: 4.0})  # measured on some other model's engines
    result = runner.invoke(cli, [*refit, "--out", str(tmp_path / "bad"), "--latency-table", str(table)])
    assert result.exit_code == 2 and f"latency table {table}: no latency for bucket(s) {names[1]}" in result.output
    assert not (tmp_path / "bad").exists()
    result = runner.invoke(cli, [*refit, "--out", str(ckpt)])
    assert result.exit_code == 2 and "the same directory as the checkpoint" in result.output
    # training checks the table before it trains, and only prices a gate fit with it
    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "c2"), "--latency-table", str(table), "--epochs", "1"])
    assert result.exit_code == 2 and "add --fit-gate" in result.output and not (tmp_path / "c2").exists()


def test_an_evaluation_prices_its_bucket_choices_by_latency() -> None:
    evaluation = Evaluation(10, 0.9, 0.2, 0.3, 0.66, ["full", "a", "b"], [2, 3, 5])
    priced = evaluation.with_latency([1.0, 0.8, 0.5], "t.json")
    assert priced.latency_ratio == pytest.approx((2 * 1.0 + 3 * 0.8 + 5 * 0.5) / 10)
    assert "mean latency 0.690 of full by t.json (31.0% less)" in priced.table()
    assert evaluation.latency_ratio is None and "latency" not in evaluation.table()
    with pytest.raises(ValueError, match="2 latency costs for 3 buckets"):
        evaluation.with_latency([1.0, 0.5], "t.json")
