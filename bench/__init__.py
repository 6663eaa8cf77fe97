"""trtexec-style latency and throughput measurement, per bucket and end to end (DESIGN.md §7).

``run_bench(engine_dir, ...)`` is ``vared2 bench``; ``measure`` and ``summary_lines`` time anything trtexec-style
(the reference script times a plain torchvision export with them). Imports only the runtime and the manifest:
it runs where the runtime runs (``onnx`` for the ceiling and ``matplotlib`` for ``--plot`` are imported lazily).
"""

from .report import BenchReport, BucketResult, write_json, write_latency_table, write_plot
from .run import run_bench
from .stats import Stats, coefficient_of_variance, median, parse_percentiles, percentile, percentile_index
from .timing import Trace, instability_warning, measure, summary_lines

__all__ = [
    "BenchReport",
    "BucketResult",
    "Stats",
    "Trace",
    "coefficient_of_variance",
    "instability_warning",
    "measure",
    "median",
    "parse_percentiles",
    "percentile",
    "percentile_index",
    "run_bench",
    "summary_lines",
    "write_json",
    "write_latency_table",
    "write_plot",
]
