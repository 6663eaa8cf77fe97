"""The ONNX Runtime builder's even/odd split of temporal convolutions that read ϕt (``vared2.engines.ort_phases``):
it applies exactly where ϕt (R = 2) → ReLU → a temporal convolution with an even stride, and every bucket keeps its
outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from ort_levels import LEVELS, run_at_level
from tiny_buckets import export_tiny

from vared2.engines.ort_frames import skip_unread_frames
from vared2.engines.ort_graph import SPECIALIZED_DOMAIN
from vared2.engines.ort_phases import PHASES, split_temporal_phases
from vared2.engines.ort_specialize import specialize
from vared2.models import mc3_18, r2plus1d_18, r3d_18


def _phase_splits(model: onnx.ModelProto) -> int:
    return sum(n.domain == SPECIALIZED_DOMAIN and n.op_type.startswith(PHASES) for n in model.graph.node)


@pytest.mark.parametrize("build", [r2plus1d_18, mc3_18, r3d_18])
def test_buckets_split_where_phi_t_feeds_a_temporal_conv(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """r(2+1)d: both Conv2Plus1D of every block of a stage with R = 2 and all channels (ϕs between ϕt and the
    temporal conv is not split), with stride 2 and, where the stage starts by halving time, 4. mc3/r3d have no
    temporal-only convolutions."""
    model, exported, features = export_tiny(build, tmp_path / "onnx")
    for bucket, path in zip(model.buckets, exported.buckets, strict=True):
        source = onnx.load(str(path))
        split = split_temporal_phases(skip_unread_frames(source))
        stages = [pt == 1 and pc == 0 for pt, pc in bucket.policies]
        expected = 4 * sum(stages) if build is r2plus1d_18 else 0  # two blocks, two Conv2Plus1D each
        assert _phase_splits(split) == expected, bucket.name
        top_convs = sum(n.op_type == "Conv" for n in split.graph.node)
        assert top_convs == sum(n.op_type == "Conv" for n in source.graph.node) + expected  # each conv in two
        reference = run_at_level(source, {"features": features}, "extended")[0]
        for graph in (split, specialize(split)):
            for level in LEVELS:
                got = run_at_level(graph, {"features": features}, level)[0]
                np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)


def test_a_graph_without_the_chain_is_unchanged(tmp_path: Path) -> None:
    _, exported, _ = export_tiny(r2plus1d_18, tmp_path / "onnx")
    full = onnx.load(str(exported.buckets[0]))
    assert split_temporal_phases(full) == full
