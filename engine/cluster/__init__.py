"""High availability: the replicated journal (journal.py), the leader lease (lease.py), a
node's role and transitions (member.py), the NATS connection they share (link.py), opening
them from the configuration (setup.py), a local nats-server cluster (natsserver.py) and the
failover drill that the end-to-end test and `loom bench failover` run (drill.py)."""
