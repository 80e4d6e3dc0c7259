"""Loom Exchange telemetry (built out by later issues)."""
