"""Benchmarks: scripts that produce the README's tables and plots."""
