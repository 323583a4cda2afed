"""Benchmark scripts: `python -m bench.<name>` prints figures (timings are never asserted in tests)."""
