"""Agents: the learning controllers that clients run beside their task."""
