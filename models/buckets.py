"""Policy buckets (DESIGN.md §2): one joint ``(pt, pc)`` policy per residual stage, and the ordered table of them.

A bucket is what one inference engine serves, so the table is part of the model config: the gate has one
logit per bucket and the exporter writes one graph per bucket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vared2.formats.errors import InputError, InputTypeError

Policy = tuple[int, int]
"""``(pt, pc)``: compute every ``2**pt``-th output frame and about ``2**-pc`` of the output channels."""

NUM_STAGES = 4
BACKBONES = ("r3d_18", "mc3_18", "r2plus1d_18")

_STAGE = re.compile(r"t(\d+)c(\d+)")


class BucketError(InputError, KeyError):
    """An unknown bucket name or index. Both a ``KeyError`` (lookup) and a ``ValueError`` (bad value)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


#: The largest pt or pc (beyond any real network's frames or channels; 2**pt and 2**pc are computed from them).
MAX_REDUCTION = 16


@dataclass(frozen=True)
class Bucket:
    """One ``(pt, pc)`` per residual stage, written ``t1c1/t1c1/t0c1/t0c0``."""

    policies: tuple[Policy, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.policies, tuple) or len(self.policies) != NUM_STAGES:
            raise InputError(f"a bucket needs one (pt, pc) per stage ({NUM_STAGES}), got {self.policies!r}")
        for policy in self.policies:
            ok = isinstance(policy, tuple) and len(policy) == 2
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_REDUCTION for v in policy)
            if not ok:  # the bound: 2**pt and 2**pc size tensors; a typo must not allocate for minutes
                raise InputError(
                    f"a policy is a pair of ints (pt, pc) in 0..{MAX_REDUCTION} (at most a {2**MAX_REDUCTION}× "
                    f"reduction), got {policy!r}"
                )

    @property
    def name(self) -> str:
        return "/".join(f"t{pt}c{pc}" for pt, pc in self.policies)

    @property
    def is_full(self) -> bool:
        return all(policy == (0, 0) for policy in self.policies)

    @property
    def short_name(self) -> str:
        """``full``, or the largest temporal and channel reduction of any stage (``c1``, ``t1``, ``t1c2``): what the
        docs and the bench call the default buckets, accepted wherever a table has one bucket of that name."""
        if self.is_full:
            return "full"
        pt = max(policy[0] for policy in self.policies)
        pc = max(policy[1] for policy in self.policies)
        return (f"t{pt}" if pt else "") + (f"c{pc}" if pc else "")

    @classmethod
    def parse(cls, name: str) -> Bucket:
        """``"t1c1/t1c1/t0c1/t0c0"`` → Bucket; a clear ValueError for anything else."""
        if not isinstance(name, str):
            raise InputTypeError(f"a bucket name is a str like 't1c1/t1c1/t0c1/t0c0', got {type(name).__name__}")
        parts = name.split("/")
        matches = [_STAGE.fullmatch(part) for part in parts]
        if len(parts) != NUM_STAGES or not all(matches):
            raise InputError(
                f"bad bucket name {name!r}: expected {NUM_STAGES} stages 't<pt>c<pc>' joined by '/', "
                "e.g. 't1c1/t1c1/t0c1/t0c0'"
            )
        return cls(tuple((int(m.group(1)), int(m.group(2))) for m in matches if m))

    def __str__(self) -> str:
        return self.name


FULL = Bucket(((0, 0),) * NUM_STAGES)


class BucketTable:
    """An immutable, ordered sequence of distinct buckets; bucket 0 is the full model."""

    def __init__(self, buckets: Iterable[Bucket | str]) -> None:
        items = tuple(b if isinstance(b, Bucket) else Bucket.parse(b) for b in buckets)
        if not items:
            raise InputError("a bucket table needs at least the full bucket")
        if not items[0].is_full:
            raise InputError(f"bucket 0 must be the full bucket {FULL.name}, got {items[0].name}")
        names = [b.name for b in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"bucket names must be unique, repeated: {', '.join(duplicates)}")
        self._buckets = items

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self._buckets)

    def __len__(self) -> int:
        return len(self._buckets)

    def __iter__(self) -> Iterator[Bucket]:
        return iter(self._buckets)

    def __getitem__(self, key: int | str) -> Bucket:
        return self._buckets[self.index(key)]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, Bucket):
            return key in self._buckets
        if not isinstance(key, str):
            return False
        try:
            self.index(key)
        except BucketError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketTable) and self._buckets == other._buckets

    def __hash__(self) -> int:
        return hash(self._buckets)

    def __repr__(self) -> str:
        return f"BucketTable({list(self.names)!r})"

    def index(self, key: int | str | Bucket) -> int:
        """Position of a bucket given by index, name or Bucket; BucketError (KeyError and ValueError) if absent."""
        if isinstance(key, Bucket):
            key = key.name
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise InputTypeError(f"a bucket is selected by index (int) or name (str), got {type(key).__name__}")
        if isinstance(key, int):
            if 0 <= key < len(self._buckets):
                return key
            raise BucketError(f"bucket index {key} out of range 0..{len(self) - 1}; buckets: {self._listing()}")
        if key in self.names:
            return self.names.index(key)
        matches = [i for i, bucket in enumerate(self._buckets) if bucket.short_name == key]
        if len(matches) == 1:
            return matches[0]
        if matches:
            named = ", ".join(f"{i}={self.names[i]}" for i in matches)
            raise BucketError(f"bucket {key!r} is ambiguous in this table ({named}); give the full name or the index")
        raise BucketError(f"unknown bucket {key!r}; buckets: {self._listing()}")

    def levels(self, stage: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The ``pt`` values and the ``pc`` values used for ``stage`` (0 always included): what its layers need."""
        t_levels = sorted({0} | {b.policies[stage][0] for b in self._buckets})
        c_levels = sorted({0} | {b.policies[stage][1] for b in self._buckets})
        return tuple(t_levels), tuple(c_levels)

    def to_json(self) -> list[str]:
        return list(self.names)

    @classmethod
    def from_json(cls, data: object) -> BucketTable:
        if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise InputError(f"a bucket table is a JSON list of bucket names, got {data!r}")
        return cls(data)

    def _listing(self) -> str:
        return ", ".join(f"{i}={bucket.name} ({bucket.short_name})" for i, bucket in enumerate(self._buckets))


def conv_frames(frames_in: int, kernel: int, stride: int, padding: int) -> int:
    """Output frames of a convolution along time (dilation 1)."""
    return (frames_in + 2 * padding - kernel) // stride + 1


def stage_frames(backbone: str, frames: int) -> list[list[int]]:
    """For each residual stage, the output frame counts of its dynamic convolutions (for ``frames`` input frames).

    In r2plus1d the spatial half of the first block's ``Conv2Plus1D`` still runs at the previous stage's frame
    count; the temporal half does the temporal striding.
    """
    if backbone not in BACKBONES:
        raise InputError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    if frames < 1:
        raise InputError(f"frames must be >= 1, got {frames}")
    t = frames  # every stem keeps the frame count (temporal kernel 3, padding 1, stride 1 — or kernel 1)
    result = []
    for stage in range(NUM_STAGES):
        stride = 1 if stage == 0 or backbone == "mc3_18" else 2
        t_out = conv_frames(t, 3, stride, 1)
        result.append([t, t_out] if backbone == "r2plus1d_18" else [t_out])
        t = t_out
    return result


def default_buckets(backbone: str, frames: int) -> BucketTable:
    """full, c1, c2, t1, t1c1, t1c2 — temporal reduction (R=2) only in stages whose every dynamic conv has an even
    output frame count; buckets that would repeat an earlier one (no stage allows R=2) are left out."""
    allows_t1 = [all(t % 2 == 0 for t in ts) for ts in stage_frames(backbone, frames)]
    buckets: list[Bucket] = []
    for want_t in (0, 1):
        for pc in (0, 1, 2):
            policies = tuple((1 if want_t and ok else 0, pc) for ok in allows_t1)
            bucket = Bucket(policies)
            if bucket not in buckets:
                buckets.append(bucket)
    return BucketTable(buckets)


def table_from_names(names: Iterable[str], default: BucketTable) -> BucketTable:
    """A bucket table from names, each a full name (``t1c0/t1c0/t1c0/t0c0``) or a short name of ``default`` (the
    backbone's own table: ``full``, ``t1``, ``t1c2``, …), so ``full,t1,t1c2`` picks three of the default buckets.

    What ``vared2 train --buckets`` takes; an unknown name is a ValueError naming it and listing the short names."""
    buckets = []
    for name in names:
        try:
            buckets.append(Bucket.parse(name))
            continue
        except ValueError:
            pass
        try:
            buckets.append(default[name])
        except BucketError:
            short = ", ".join(bucket.short_name for bucket in default)
            raise InputError(
                f"bucket {name!r}: neither a bucket name like 't1c1/t1c1/t0c1/t0c0' nor one of this backbone's "
                f"default buckets ({short})"
            ) from None
    return BucketTable(buckets)
