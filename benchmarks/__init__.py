"""Benchmarks: a generator of large nsys-schema traces and the analysis speed benchmark."""
