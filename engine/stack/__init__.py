"""`loom stack`: the whole watching loop on a bare machine, from real binaries on loopback.

exchange (or 3 nats-servers + 2 nodes) -> Prometheus (the project's rules, exemplars) ->
Alertmanager (the project's routing) -> the pager sink (every notification, JSON lines) and
the exchange's own runbook automation endpoint. Everything lives under one directory:

    <dir>/state.json          pids (with their start times), ports, URLs, the options of `up`
    <dir>/<component>/        each component's config, data and log

Modules: procs (spawn, identify, stop process groups), binaries, configs (Prometheus and
Alertmanager configuration), pager_sink, layout (the directory and its state file), nodes (the
exchange or the cluster), control (up/status/down), drill (incidents and their pages), cli.
"""
