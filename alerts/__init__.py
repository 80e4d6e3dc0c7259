"""Loom Exchange alerts (built out by later issues)."""
