"""Reproducible benchmarks for LLM Observatory (``make bench``, ``make bench-peer``).

Never run as timed tests; docs/PERFORMANCE.md describes the method and the results.
"""
