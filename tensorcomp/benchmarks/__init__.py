"""Benchmarks shipped with the package (run them with ``tensorcomp bench NAME``)."""
