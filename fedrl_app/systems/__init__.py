"""Simulated client systems: per-partition link, compute and availability profiles, and the virtual clock."""
