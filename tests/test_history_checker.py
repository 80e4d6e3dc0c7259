"""The chaos history checker (engine/chaos/history.py) on a real journal (FileJournal in a
tmp dir): a true history passes, and each kind of lie is reported as a contradiction
naming the operation and what the journal says, so the chaos test's "0 contradictions"
means something."""

from __future__ import annotations

import pytest

from engine.chaos.history import (
    CONNECT_FAILED,
    CONNECTION_LOST,
    FAILED,
    OK,
    TIMEOUT,
    UNKNOWN,
    History,
    JournalView,
    Placement,
    check,
    classify,
)
from engine.core.commands import ListInstrument, NewOrder
from engine.core.domain import Instrument, OrderType, Side
from engine.journal.segments import FileJournal

SYMBOL = "BTC-USD"


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (201, "", OK),
        (503, "OVERLOADED", FAILED),
        (503, "NOT_LEADER", FAILED),
        (503, "SHUTTING_DOWN", FAILED),
        (503, "JOURNAL_WRITE_FAILED", FAILED),  # the claim the chaos test puts to the proof
        (504, "OUTCOME_UNKNOWN", UNKNOWN),
        (422, "PRICE_OUTSIDE_BAND", FAILED),  # the core's rejection: journaled, never placed
        (409, "DUPLICATE_CLIENT_ORDER_ID", FAILED),
        (429, "RATE_LIMITED", FAILED),
        (500, "INTERNAL", UNKNOWN),
        (502, "", UNKNOWN),  # a proxy's: nothing is promised
        (0, TIMEOUT, UNKNOWN),
        (0, CONNECTION_LOST, UNKNOWN),
        (0, CONNECT_FAILED, FAILED),  # no connection: the request never left
    ],
)
def test_answers_are_classified_by_the_table(status, code, outcome):
    assert classify(status, code) == outcome


def order(seq: int, clid: str, price: int = 100, account: str = "alice") -> NewOrder:
    return NewOrder(account, clid, SYMBOL, Side.BUY, OrderType.LIMIT, price, 1, seq=seq, ts=seq)


@pytest.fixture
def journal(tmp_path):
    """seq 1 lists the symbol; o1..o3 are placed (order ids 1..3); o4 is journaled but
    rejected by the core (price 0); nothing else."""
    j = FileJournal(tmp_path / "journal")
    j.append([ListInstrument(Instrument(SYMBOL), seq=1, ts=1)])
    j.append([order(2, "o1"), order(3, "o2")])
    j.append([order(4, "o3"), order(5, "o4", price=0)])
    j.close()
    return FileJournal(tmp_path / "journal", read_only=True)


def run(*ops) -> History:
    """A history of (client order id, outcome, answer, order id)."""
    history = History()
    for t, (clid, outcome, answer, order_id) in enumerate(ops, 1):
        op = history.invoke("alice", clid, "http://node", float(t))
        history.complete(op, outcome, answer, t + 0.5, order_id)
    return history


TRUTH = [
    ("o1", OK, "201", 1),
    ("o2", UNKNOWN, TIMEOUT, 0),  # landed
    ("o3", OK, "201", 3),
    ("o4", FAILED, "422 INVALID_PRICE", 0),  # journaled, rejected by the core: not placed
    ("o5", FAILED, "503 NOT_LEADER", 0),
    ("o6", UNKNOWN, CONNECTION_LOST, 0),  # never landed
]


def test_a_true_history_has_no_contradiction(journal):
    view = JournalView.replay(journal.read())
    result = check(run(*TRUTH), view)
    assert result.valid, [str(c) for c in result.contradictions]
    assert result.counts == {
        "ops": 6,
        OK: 2,
        FAILED: 2,
        UNKNOWN: 2,
        "unknown_present": 1,
        "unknown_absent": 1,
        "journal_orders": 3,
        "journaled_more_than_once": 0,
    }
    assert result.answers["201"] == 2 and view.commands == 5


def test_an_acked_order_missing_from_the_journal_is_a_contradiction(journal):
    lie = run(*TRUTH, ("o7", OK, "201", 7))
    (found,) = check(lie, JournalView.replay(journal.read())).contradictions
    assert found.problem == "acked order missing"
    assert found.op["client_order_id"] == "o7" and found.op["answer"] == "201"
    assert found.journal == "the journal holds no such order"


def test_an_ack_naming_another_order_id_is_a_contradiction(journal):
    lie = run(("o1", OK, "201", 2), *TRUTH[1:])
    (found,) = check(lie, JournalView.replay(journal.read())).contradictions
    assert found.problem == "acked as order 2, journaled as another"
    assert found.journal == "the journal holds order 1 at seq 2"


def test_a_refused_order_in_the_journal_is_a_contradiction(journal):
    lie = run(("o1", FAILED, "503 JOURNAL_WRITE_FAILED", 0), *TRUTH[1:])
    lie.faults.append({"fault": "pause-nats", "target": "nats n1", "start": 0.9, "end": 1.2})
    lie.faults.append({"fault": "kill-leader", "target": "loom a", "start": 3.0, "end": 4.0})
    (found,) = check(lie, JournalView.replay(journal.read())).contradictions
    assert found.problem == "refused order present"
    assert found.op["answer"] == "503 JOURNAL_WRITE_FAILED"
    assert found.journal == "the journal holds order 1 at seq 2"
    assert found.faults == ["pause-nats nats n1"]  # the fault it overlapped, not the later one
    assert str(found) == (
        "refused order present: new alice/o1 answered '503 JOURNAL_WRITE_FAILED': "
        "the journal holds order 1 at seq 2 [during pause-nats nats n1]"
    )


def test_an_order_placed_twice_is_a_contradiction(journal):
    """The core refuses a second order with a used client order id, so only a broken core
    (or a journal stitched from two histories) places one twice: shown on a view holding
    a second placement."""
    view = JournalView.replay(journal.read())
    view.placements[("alice", "o1")].append(Placement(9, 8))
    view.placements[("alice", "o2")].append(Placement(10, 9))
    found = check(run(*TRUTH), view).contradictions
    assert [(c.problem, c.op["client_order_id"]) for c in found] == [
        ("placed more than once", "o1"),
        ("placed more than once", "o2"),  # unknown, and resolved as placed twice
    ]
    assert found[0].journal == "the journal holds order 1 at seq 2, order 8 at seq 9"


def test_a_client_order_id_placed_twice_without_an_op_is_a_contradiction(journal):
    view = JournalView.replay(journal.read())
    view.placements[("alice", "o9")] = [Placement(9, 8), Placement(10, 9)]
    (found,) = check(run(*TRUTH), view).contradictions
    assert found.problem == "placed more than once (alice/o9)" and found.op is None


def test_an_order_nobody_sent_is_a_contradiction(tmp_path, journal):
    """The drill's account is its client's alone: an order placed for it that the history
    never sent was made up."""
    history = run(*TRUTH[:3])  # o4..o6 never sent; only o4 is in the journal, and rejected
    assert check(history, JournalView.replay(journal.read())).valid
    more = FileJournal(tmp_path / "more")
    more.append([ListInstrument(Instrument(SYMBOL), seq=1, ts=1)])
    more.append([order(2, "o1"), order(3, "o2"), order(4, "o3")])
    more.append([order(5, "x1"), order(6, "x1", account="bob")])
    (found,) = check(history, JournalView.replay(more.read())).contradictions
    assert found.problem == "placed but never sent (alice/x1)"  # bob is not the history's
    assert found.journal == "the journal holds order 4 at seq 5"


def test_a_command_journaled_twice_is_counted(tmp_path):
    """A second NewOrder with a used client order id is the core's DUPLICATE rejection:
    not a contradiction (the order is placed once), but counted."""
    j = FileJournal(tmp_path / "j")
    j.append([ListInstrument(Instrument(SYMBOL), seq=1, ts=1), order(2, "o1"), order(3, "o1")])
    view = JournalView.replay(j.read())
    assert view.placements[("alice", "o1")] == [
        Placement(2, 1),
        Placement(3, 0, "DUPLICATE_CLIENT_ORDER_ID"),
    ]
    result = check(run(("o1", OK, "201", 1)), view)
    assert result.valid and result.counts["journaled_more_than_once"] == 1


def test_pending_operations_become_unknown():
    history = History()
    history.invoke("alice", "o1", "http://node", 1.0)
    history.close_pending(2.0)
    assert history.ops[0].outcome == UNKNOWN and history.ops[0].answer == "never answered"


def test_a_history_that_reuses_a_client_order_id_is_refused(journal):
    with pytest.raises(ValueError, match="'o1' of alice sent twice"):
        check(run(*TRUTH, ("o1", OK, "201", 1)), JournalView.replay(journal.read()))
