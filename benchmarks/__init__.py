"""Benchmarks: `make bench` runs every ``bench_*.py`` module here (or `python -m benchmarks
NAME...` for some). Each compares axon against a standard tool moving the same bytes in the
same run and prints ratios."""
