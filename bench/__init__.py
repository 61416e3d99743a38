"""Benchmarks that print numbers: `python -m bench.throughput`. Never run by the tests' timing."""
