"""Benchmarks of the provider and its local server; run them with ``bash scripts/bench.sh``."""
