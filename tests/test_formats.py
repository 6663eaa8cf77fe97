"""The torch-free formats layer on its own: the weights file's one writer and reader, the session loader's
options, and the format errors' types (``InputError``, so ``ValueError``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vared2.formats.errors import InputError
from vared2.formats.export_spec import ExportSpecError, read_export_spec
from vared2.formats.latency import LatencyTableError, latency_costs
from vared2.formats.manifest import ManifestError
from vared2.formats.sessions import LEVELS, SharedWeights, check_level, session_options
from vared2.formats.weights import HEADER, MAGIC, WeightsFileError, read_index, write_weights


def test_a_short_weights_file_is_named_by_its_reader(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"VRD2")
    with pytest.raises(WeightsFileError, match=r"weights\.bin: too short for a vared2 weights file \(4 bytes\)"):
        read_index(tmp_path / "weights.bin")


def test_the_weights_file_round_trips_through_its_one_writer_and_reader(tmp_path: Path) -> None:
    """Every dtype the index allows, written by ``write_weights`` and read back by ``read_index`` and the
    runtime's ``SharedWeights`` bit for bit, at the offsets the writer reported."""
    rng = np.random.default_rng(3)
    arrays = {
        "f32": rng.standard_normal((5, 7)).astype(np.float32),
        "f16": rng.standard_normal((33,)).astype(np.float16),
        "f64": rng.standard_normal((2, 3, 4)),
        "i8": rng.integers(-128, 128, (17,), dtype=np.int8),
        "u8": rng.integers(0, 256, (4, 4), dtype=np.uint8),
        "i16": rng.integers(-999, 999, (9,), dtype=np.int16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (6,), dtype=np.int32),
        "i64": rng.integers(-(2**62), 2**62, (3, 2), dtype=np.int64),
        "b": rng.integers(0, 2, (11,)).astype(bool),
        "be": rng.standard_normal((8,)).astype(">f4"),  # big-endian input is stored little-endian
    }
    second = {"f32": arrays["f32"][:2], "u8": arrays["i8"].view(np.uint8)}
    path = tmp_path / "weights.bin"
    where, stats = write_weights(
        {"a.onnx": list(arrays.items()), "b.onnx": list(second.items())},
        path,
        alignment=128,
    )
    # b's f32 is a prefix of a's under the same name; b's u8 has i8's bytes under another name: both stored once.
    assert stats.distinct_tensors == len(arrays)
    index = read_index(path)
    assert index.alignment == 128 and set(index.models) == {"a.onnx", "b.onnx"}
    raw = path.read_bytes()
    weights = SharedWeights(path)
    for file, names in index.models.items():
        for name, k in names.items():
            view = index.tensors[k]
            assert (view.offset, view.length) == where[(file, name)]
            assert view.offset % 128 == 0
            expected = (arrays if file == "a.onnx" else second)[name]
            stored = np.frombuffer(raw[view.offset : view.offset + view.length], np.dtype(view.dtype).newbyteorder("<"))
            np.testing.assert_array_equal(stored.reshape(view.shape), expected)
            np.testing.assert_array_equal(weights.array(file, name), expected)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ([1, 2], r"the index must be a JSON object, got list"),
        ({"alignment": 0}, r"index\.alignment must be a positive integer, got 0"),
        ({"alignment": 64, "tensors": ["x"]}, r"index\.tensors\[0\]\.dtype: expected one of .*, got 'x'"),
        ({"alignment": 64, "tensors": [{"dtype": "float32"}]}, r"index\.tensors\[0\]: expected integer offset"),
        (
            {"alignment": 64, "tensors": [{"dtype": "float32", "offset": 64, "length": 8, "shape": [3]}]},
            r"index\.tensors\[0\]: length 8 does not match float32\[3\]",
        ),
        ({"alignment": 64, "tensors": {}}, r"index\.tensors must be a list and index\.models an object"),
        ({"alignment": 64, "tensors": [], "models": {"a.onnx": 3}}, r"index\.models\['a\.onnx'\]: expected an object"),
        ({"alignment": 64, "tensors": [], "models": {"a.onnx": {"w": 0}}}, r"\['w'\]: no tensor view 0"),
    ],
)
def test_a_damaged_weights_index_is_named_field_by_field(tmp_path: Path, index: object, message: str) -> None:
    text = json.dumps(index).encode()
    (tmp_path / "weights.bin").write_bytes(HEADER.pack(MAGIC, len(text)) + text + bytes(256))
    with pytest.raises(WeightsFileError, match=message) as caught:
        read_index(tmp_path / "weights.bin")
    assert str(caught.value).startswith(str(tmp_path / "weights.bin"))


def test_session_options_name_a_bad_level_and_set_the_runtimes_defaults() -> None:
    assert set(LEVELS) == {"disabled", "basic", "extended", "all"}
    with pytest.raises(InputError, match=r"optimization: expected one of disabled, basic, extended, all, got 'max'"):
        check_level("max")
    options = session_options("extended", 3, {"session.intra_op.allow_spinning": "0"})
    assert options.graph_optimization_level == LEVELS["extended"]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_format_errors_are_input_errors_and_value_errors(tmp_path: Path) -> None:
    (tmp_path / "export.json").write_text('{"format": "other"}')
    (tmp_path / "t.json").write_text('{"format": "other"}')
    for error, call in [
        (ExportSpecError, lambda: read_export_spec(tmp_path)),
        (LatencyTableError, lambda: latency_costs(tmp_path / "t.json", ["full"])),
    ]:
        with pytest.raises(error) as caught:
            call()
        assert isinstance(caught.value, InputError) and isinstance(caught.value, ValueError)
    assert issubclass(ManifestError, InputError) and issubclass(WeightsFileError, ValueError)
