"""Benchmarks (`make bench`): figures go to bench/results/latest.json and bench/RESULTS.md."""
