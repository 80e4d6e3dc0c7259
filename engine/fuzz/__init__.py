"""Fuzz campaigns against the gateways (`loom fuzz`, tests/test_fuzz.py)."""
