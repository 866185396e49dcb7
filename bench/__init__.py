"""Benchmarks of trainfarm against bare baselines on the same real services: `python -m bench.run`."""
