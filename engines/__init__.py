"""One engine per bucket and one for the gate, per backend; the manifest schema (DESIGN.md §5)."""
