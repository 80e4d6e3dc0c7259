"""Chaos testing as Jepsen does it: clients record every operation (invoked, then ok, failed
or unknown), faults are injected while they run, and a checker compares the history with
the final journal.

    history.py  the operation history, the answer -> outcome table, the checker
    client.py   a thin REST client that records every order it sends into a history
    faults.py   the faults: SIGKILL/SIGSTOP of the leader and of NATS servers
    drill.py    the drill (`loom chaos`): a local cluster, the client, faults, the check
"""
