"""Bucket names, the bucket table's rules and lookups, and the default tables per backbone and frame count."""

from __future__ import annotations

import pytest

from vared2.models import Bucket, BucketTable, DynamicConv3d, default_buckets, r2plus1d_18, r3d_18
from vared2.models.buckets import BucketError, stage_frames, table_from_names
from vared2.models.video_resnet import mc3_18

FULL = "t0c0/t0c0/t0c0/t0c0"


def test_bucket_name_round_trip() -> None:
    bucket = Bucket.parse("t1c1/t1c1/t0c1/t0c0")
    assert bucket.policies == ((1, 1), (1, 1), (0, 1), (0, 0))
    assert bucket.name == "t1c1/t1c1/t0c1/t0c0" and not bucket.is_full
    assert Bucket.parse(FULL).is_full
    assert Bucket.parse("t12c3/t0c0/t0c0/t0c0").policies[0] == (12, 3)


@pytest.mark.parametrize("name", ["", "t1c1/t1c1/t0c1", "t1c1/t1c1/t0c1/t0c0/t0c0", "t1c1/t1/t0c1/t0c0", "T1C1/x/y/z"])
def test_bad_bucket_names(name: str) -> None:
    with pytest.raises(ValueError, match="expected 4 stages"):
        Bucket.parse(name)


def test_bad_policies() -> None:
    with pytest.raises(ValueError, match=r"pair of ints \(pt, pc\) in 0\.\.16"):
        Bucket(((0, 0), (0, 0), (0, 0), (-1, 0)))
    with pytest.raises(ValueError, match=r"in 0\.\.16 .*got \(9999999999, 0\)"):  # was minutes of 2**pt
        Bucket.parse("t9999999999c0/t0c0/t0c0/t0c0")
    with pytest.raises(ValueError, match="one \\(pt, pc\\) per stage"):
        Bucket(((0, 0),))


def test_table_rules() -> None:
    with pytest.raises(ValueError, match="bucket 0 must be the full bucket"):
        BucketTable(["t0c1/t0c1/t0c1/t0c1", FULL])
    with pytest.raises(ValueError, match=r"unique.*t0c1/t0c1/t0c1/t0c1"):
        BucketTable([FULL, "t0c1/t0c1/t0c1/t0c1", "t0c1/t0c1/t0c1/t0c1"])
    with pytest.raises(ValueError, match="at least the full bucket"):
        BucketTable([])


def test_short_names() -> None:
    """``full``, else the largest reduction of any stage; a table accepts one where it names a single bucket."""
    assert [b.short_name for b in default_buckets("r2plus1d_18", 8)] == ["full", "c1", "c2", "t1", "t1c1", "t1c2"]
    assert Bucket.parse("t1c0/t0c0/t0c2/t0c0").short_name == "t1c2"
    table = default_buckets("r2plus1d_18", 8)
    assert [table.index(short) for short in ("full", "c1", "c2", "t1", "t1c1", "t1c2")] == list(range(6))
    assert "t1c2" in table and "t2" not in table
    # Two buckets share the short name t1c1: the lookup refuses to guess and lists both.
    ambiguous = BucketTable([FULL, "t1c1/t1c1/t0c1/t0c0", "t1c1/t1c1/t1c1/t0c1"])
    with pytest.raises(KeyError, match=r"'t1c1' is ambiguous.*1=t1c1/t1c1/t0c1/t0c0, 2=t1c1/t1c1/t1c1/t0c1"):
        ambiguous.index("t1c1")
    assert ambiguous.index("t1c1/t1c1/t1c1/t0c1") == 2 and "t1c1" not in ambiguous


def test_table_lookup_and_json() -> None:
    table = BucketTable([FULL, "t1c0/t1c0/t0c0/t0c0", Bucket.parse("t0c1/t0c1/t0c1/t0c1")])
    assert len(table) == 3 and table[0].is_full
    assert table.index("t1c0/t1c0/t0c0/t0c0") == 1 and table.index(2) == 2
    assert table["t0c1/t0c1/t0c1/t0c1"] is table[2]
    assert table.index(table[1]) == 1
    assert "t1c0/t1c0/t0c0/t0c0" in table and "t2c0/t0c0/t0c0/t0c0" not in table
    assert table.levels(0) == ((0, 1), (0, 1)) and table.levels(3) == ((0,), (0, 1))
    with pytest.raises(
        KeyError, match=r"unknown bucket 'nope'.*0=t0c0/t0c0/t0c0/t0c0 \(full\), 1=t1c0/t1c0/t0c0/t0c0 \(t1\)"
    ):
        table.index("nope")
    with pytest.raises(ValueError, match=r"out of range 0..2"):
        table.index(3)
    with pytest.raises(BucketError):
        table[-1]
    with pytest.raises(TypeError):
        table.index(1.0)
    assert BucketTable.from_json(table.to_json()) == table
    assert table.to_json() == [FULL, "t1c0/t1c0/t0c0/t0c0", "t0c1/t0c1/t0c1/t0c1"]
    with pytest.raises(ValueError, match="list of bucket names"):
        BucketTable.from_json({"buckets": []})


def test_default_tables() -> None:
    assert default_buckets("r2plus1d_18", 8).names == (
        FULL,
        "t0c1/t0c1/t0c1/t0c1",
        "t0c2/t0c2/t0c2/t0c2",
        "t1c0/t1c0/t1c0/t0c0",  # layer4 has 1 frame at 8 input frames
        "t1c1/t1c1/t1c1/t0c1",
        "t1c2/t1c2/t1c2/t0c2",
    )
    assert default_buckets("r3d_18", 16)[3].name == "t1c0/t1c0/t1c0/t1c0"
    assert default_buckets("mc3_18", 8)[5].name == "t1c2/t1c2/t1c2/t1c2"  # mc3 keeps 8 frames throughout
    # One frame: no temporal reduction anywhere, so the t buckets would repeat the c buckets.
    assert default_buckets("r2plus1d_18", 1).names == (FULL, "t0c1/t0c1/t0c1/t0c1", "t0c2/t0c2/t0c2/t0c2")
    # Six frames: r2plus1d's layer3 spatial conv still runs at layer2's 3 frames, so only layer1 may use R=2.
    assert default_buckets("r2plus1d_18", 6)[3].name == "t1c0/t0c0/t0c0/t0c0"
    assert default_buckets("r3d_18", 6)[3].name == "t1c0/t0c0/t1c0/t0c0"
    with pytest.raises(ValueError, match="unknown backbone"):
        default_buckets("resnet50", 8)


@pytest.mark.parametrize("frames", [4, 6, 8, 16])
@pytest.mark.parametrize("builder", [r3d_18, mc3_18, r2plus1d_18])
def test_stage_frames_match_the_built_layers(builder: object, frames: int) -> None:
    """The analytic frame counts behind the default tables are those the model's layers are built with."""
    model = builder(frames=frames, size=16, width=0.125, num_classes=3)  # type: ignore[operator]
    backbone = model.config.backbone
    expected = stage_frames(backbone, frames)
    seen: list[set[int]] = [set(), set(), set(), set()]
    for _, stage, conv, _ in model.gated_layers():
        assert isinstance(conv, DynamicConv3d)
        seen[stage].add(conv.frames_out)
    assert seen == [set(ts) for ts in expected]
    assert model.buckets == default_buckets(backbone, frames)


def test_a_table_from_full_and_short_names() -> None:
    default = default_buckets("r2plus1d_18", 8)
    table = table_from_names(["full", "t1", "t1c2/t1c2/t1c2/t0c2", "t1c0/t1c0/t0c0/t0c0"], default)
    assert table.names == (FULL, "t1c0/t1c0/t1c0/t0c0", "t1c2/t1c2/t1c2/t0c2", "t1c0/t1c0/t0c0/t0c0")
    with pytest.raises(ValueError, match=r"bucket 't3'.*full, c1, c2, t1, t1c1, t1c2"):
        table_from_names(["full", "t3"], default)
    with pytest.raises(ValueError, match="bucket 0 must be the full bucket"):
        table_from_names(["t1", "full"], default)
    with pytest.raises(ValueError, match="unique"):
        table_from_names(["full", "t1", "t1c0/t1c0/t1c0/t0c0"], default)
