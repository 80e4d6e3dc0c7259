"""The chaos test: two `loom run --cluster` nodes on a 3-server NATS cluster of their own, a
REST client recording every order it sends (invoked, then ok, failed or unknown), faults
injected one after another while it sends, and the history checked against the stream
replayed through the core (engine/chaos/). Acknowledged orders are there exactly once as
acknowledged, refused ones are absent, unknown ones are resolved; the replay's state hash
is the leader's. `loom chaos --faults N` runs the same drill for longer.

The faults are split in two tests: SIGKILL of the leader, and the faults that leave an
append's fate open (SIGSTOP of the leader, SIGSTOP of the stream's nats-server beyond the
publish timeout, SIGKILL of that server). Before issue 11's fix the node answered the
latter JOURNAL_WRITE_FAILED, "nothing was done", for batches that then landed (63 false
answers in 100 faults); now it finds out before answering, or answers OUTCOME_UNKNOWN.
"""

from __future__ import annotations

import pytest

from engine.chaos.drill import run_chaos
from engine.cluster.natsserver import LocalNatsCluster


class Contradictions(AssertionError):
    """The history holds answers the journal proves false (and only that: a drill that
    breaks, or a replay whose state differs from the leader's, fails as itself)."""


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    with LocalNatsCluster(tmp_path_factory.mktemp("chaos-nats")) as cluster:
        yield cluster


def drill(nats, tmp_path, kinds: tuple[str, ...], faults: int) -> dict:
    result = run_chaos(faults=faults, kinds=kinds, workdir=tmp_path, nats=nats)
    counts = result["counts"]
    print(
        f"\nchaos {result['fault_kinds']} in {result['seconds']} s: {counts}, "
        f"{len(result['contradictions'])} contradictions\n"
        f"answers {result['answers']}\nfaults {result['fault_log']}"
    )
    assert result["faults"] == faults and set(result["fault_kinds"]) == set(kinds)
    assert counts["ok"] > 0 and counts["journal_orders"] >= counts["ok"]
    assert result["state_hash_matches"], "the replayed stream is not the leader's state"
    if result["contradictions"]:
        listed = "\n".join(c["text"] for c in result["contradictions"])
        raise Contradictions(f"{len(result['contradictions'])} contradictions:\n{listed}")
    return result


def test_no_answer_is_contradicted_across_leader_kills(nats, tmp_path):
    result = drill(nats, tmp_path, ("kill-leader",), faults=10)
    # The kills cut requests off mid-flight: outcomes the checker had to resolve.
    assert result["counts"]["unknown"] > 0


def test_no_answer_is_contradicted_when_appends_have_unknown_fates(nats, tmp_path):
    kinds = ("pause-nats", "pause-leader", "kill-nats", "pause-nats", "pause-leader")
    drill(nats, tmp_path, kinds, faults=len(kinds) * 2)
