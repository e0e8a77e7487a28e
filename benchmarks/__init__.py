"""Benchmarks: one script per figure, each printing what it measured next to its baseline."""
