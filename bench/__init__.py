"""trtexec-style latency and throughput measurement, per bucket and end to end (DESIGN.md §7)."""
