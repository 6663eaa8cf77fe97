"""The latency table (``vared2 bench --latency-table`` writes it): each bucket engine's median latency on one device,
read back as the per-bucket cost fractions the gate fit prices buckets by (``vared2.models.calibrate.fit_gate``), so
the gate meets a *time* budget on that device; FLOPs are only a proxy for it (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, InputNotFoundError

#: What ``vared2 bench --latency-table`` writes (``vared2.bench.report.BenchReport.latency_table``).
LATENCY_TABLE_FORMAT = "vared2-latency-table"
LATENCY_TABLE_VERSION = 1


class LatencyTableError(InputError):
    """A latency table that is not one vared2 wrote, or lacks what the model needs. Names the file and field."""


def read_latency_table(path: Path | str) -> dict[str, Any]:
    """The parsed table; a ``ValueError`` naming the file and what was expected if it is not one."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputNotFoundError(
            f"latency table {path}: no such file (write one with `vared2 bench --latency-table`)"
        ) from None
    except (OSError, ValueError, RecursionError) as err:  # bad JSON or UTF-8, a 5000-digit number, deep nesting
        raise LatencyTableError(f"latency table {path}: not readable as JSON ({err})") from None
    if not isinstance(table, dict) or table.get("format") != LATENCY_TABLE_FORMAT:
        raise LatencyTableError(f"latency table {path}: field 'format' must be {LATENCY_TABLE_FORMAT!r}")
    if table.get("version") != LATENCY_TABLE_VERSION:
        raise LatencyTableError(
            f"latency table {path}: version {table.get('version')!r}, this vared2 reads {LATENCY_TABLE_VERSION}"
        )
    if not isinstance(table.get("buckets"), dict):
        raise LatencyTableError(f"latency table {path}: field 'buckets' must map bucket names to milliseconds")
    return table


def latency_costs(path: Path | str, bucket_names: Sequence[str]) -> list[float]:
    """Each bucket's latency as a fraction of the full bucket's (``bucket_names[0]``), in ``bucket_names`` order,
    from the table at ``path``."""
    return bucket_costs(read_latency_table(path), bucket_names, path)


def bucket_costs(table: dict[str, Any], bucket_names: Sequence[str], path: Path | str) -> list[float]:
    """``latency_costs`` of a table already read from ``path`` (named in the errors).

    Every bucket of the model must be in the table with a positive, finite latency; extra entries are ignored."""
    measured: dict[str, Any] = table["buckets"]
    missing = [name for name in bucket_names if name not in measured]
    if missing:
        raise LatencyTableError(
            f"latency table {path}: no latency for bucket(s) {', '.join(missing)} of this model "
            f"(the table has {', '.join(measured) or 'none'}; was it measured on this model's engines?)"
        )
    for name in bucket_names:
        value = measured[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise LatencyTableError(
                f"latency table {path}: bucket {name}: expected a positive number of ms, got {value!r}"
            )
    full = float(measured[bucket_names[0]])
    costs = [float(measured[name]) / full for name in bucket_names]
    for name, cost in zip(bucket_names, costs, strict=True):
        if not math.isfinite(cost):  # a subnormal full latency: every ratio overflows
            raise LatencyTableError(
                f"latency table {path}: bucket {name}: {measured[name]!r} ms against {bucket_names[0]}'s "
                f"{measured[bucket_names[0]]!r} ms is not a usable ratio"
            )
    return costs
