"""Evaluation: metrics, benchmarks, judges and reports."""
