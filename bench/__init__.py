"""Benchmarks for `make bench`: each module's `run()` returns `Figure`s; the
harness prints one table and writes bench/results/latest.json."""
