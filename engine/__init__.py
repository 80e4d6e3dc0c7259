"""Loom Exchange: an order-matching venue that operators can see into."""

__version__ = "0.1.0"
