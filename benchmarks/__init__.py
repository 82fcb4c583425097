"""Benchmarks (not tests): ``python -m benchmarks [name ...]`` runs ``bench_<name>.main()``."""
