"""`loom suite concurrency|stress|soak|dr`: the seed's four load suites as commands (issue 16),
built from the load generator (engine.load), the history checker (engine.chaos.history) and
the cluster drill (engine.cluster.drill)."""
