"""The leader lease on a real 3-node JetStream cluster: acquire, renew, expire, steal after
expiry (never before), step down; and the fencing of a deposed leader's journal writes."""

from __future__ import annotations

import time

import pytest
from journal_contract import make_batches
from natsproc import unique_stream

from engine.cluster.journal import FencedError, NatsJournal
from engine.cluster.lease import Lease

TTL = 0.6


@pytest.fixture
def pair(nats_link):
    bucket = "lease_" + unique_stream()[0]
    a = Lease(nats_link, "a", "http://a", bucket=bucket, ttl=TTL)
    b = Lease(nats_link, "b", "http://b", bucket=bucket, ttl=TTL)
    return nats_link, a, b


def test_acquire_renew_and_nobody_steals_a_live_lease(pair):
    link, a, b = pair
    link.call(a.observe(try_acquire=True))
    assert a.held and a.epoch > 0
    link.call(b.observe(try_acquire=True))
    assert not b.held
    assert (b.view.holder, b.view.url, b.view.epoch) == ("a", "http://a", a.epoch)
    # Renewing for longer than a TTL keeps b out: every renewal is a new revision.
    first_revision = a.revision
    started = time.monotonic()
    while time.monotonic() - started < 2 * TTL:
        link.call(a.renew())
        link.call(b.observe(try_acquire=True))
        assert not b.held
        time.sleep(TTL / 4)
    assert a.held and a.revision > first_revision and a.renewals["ok"] >= 4
    assert a.renewals["failed"] == 0
    assert b.view.epoch == a.epoch  # the epoch names the acquisition, not the renewal


def test_expired_lease_is_taken_and_the_old_holder_learns_on_renew(pair):
    link, a, b = pair
    lost = []
    a.on_lost = lost.append
    link.call(a.observe(try_acquire=True))
    epoch_a = a.epoch
    # a stops renewing: b takes over once the revision has stood still for a TTL of b's own
    # clock, and never before (a manual clock, so "before" does not depend on this VM's speed).
    now = [0.0]
    b.clock = lambda: now[0]
    link.call(b.observe(try_acquire=True))
    now[0] = TTL * 0.99
    link.call(b.observe(try_acquire=True))
    assert not b.held  # the revision has stood still for less than a TTL
    now[0] = TTL
    link.call(b.observe(try_acquire=True))
    assert b.held
    assert b.epoch > epoch_a
    assert b.leader_changes == 2  # a, then b
    link.call(a.renew())
    assert not a.held and lost and a.renewals["failed"] == 1


def test_step_down_hands_over_at_once(pair):
    link, a, b = pair
    link.call(a.observe(try_acquire=True))
    link.call(a.release())
    assert not a.held
    link.call(b.observe(try_acquire=True))  # no TTL to wait: the key is gone
    assert b.held and b.view.holder == "b"
    link.call(b.release(hold_off=0))
    link.call(a.observe(try_acquire=True))
    assert not a.held, "a stepped down and holds off for a while"


def test_a_deposed_leaders_append_is_fenced(nats_link):
    names = unique_stream()
    old = NatsJournal(nats_link, *names)
    batches = make_batches([2, 3, 1])
    old.append(batches[0])
    # A new leader opens the stream, catches up and writes its epoch marker...
    new = NatsJournal(nats_link, *names)
    assert new.last_seq == 2
    nats_link.call(new.write_marker(b'{"node": "new"}'))
    # ...after which the old leader can append nothing, not even the next seqs.
    with pytest.raises(FencedError):
        old.append(batches[1])
    assert old.fenced == 1 and old.last_seq == 2
    new.append(batches[1])
    with pytest.raises(FencedError):
        old.append(batches[1])
    assert [c.seq for c in NatsJournal(nats_link, *names).read()] == [1, 2, 3, 4, 5]
