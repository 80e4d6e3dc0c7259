"""Clients that follow a cluster's leader: binary (binary.py) and REST (rest.py), sharing what
each answer means and the failover figures (ledger.py)."""
