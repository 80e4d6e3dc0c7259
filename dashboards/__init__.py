"""Loom Exchange dashboards (built out by later issues)."""
