"""Checkpoint → ``gate.onnx`` + one ``bucket_<id>.onnx`` per bucket, and the parity check (DESIGN.md §4)."""
