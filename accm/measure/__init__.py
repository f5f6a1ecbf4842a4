"""Measurement: accuracy harness, latency benchmarks, FLOPs tables, device roofline."""
