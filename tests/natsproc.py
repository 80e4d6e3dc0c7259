"""A real 3-node nats-server JetStream cluster on loopback for the HA tests (started once
per test session: free ports, stores under tmp, `sync_interval: always`, readiness polled
on /healthz?js-enabled-only=true), plus a fresh stream name per use so tests never share
journal state."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter

import pytest

from engine.cluster.drill import http
from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster
from engine.core.commands import NewOrder
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash

_names = itertools.count(1)


def unique_stream() -> tuple[str, str]:
    """(stream name, subject prefix) not used before in this test session."""
    tag = f"{uuid.uuid4().hex[:8]}{next(_names)}"
    return f"T{tag}", f"loom.t{tag}"


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory):
    with LocalNatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def nats_link(nats_cluster):
    link = NatsLink(nats_cluster.urls, "tests")
    yield link
    link.close()


def read_commands(journal: NatsJournal, within: float = 60.0) -> list:
    """Every command of the stream, read again from the start while a read times out: right
    after a server is lost, creating the reader's consumer waits for JetStream to elect a
    new meta leader (seen: over the link's 10 s under load)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return list(journal.read())
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def assert_stream_is_the_record(
    link: NatsLink, stream: str, prefix: str, base: str, acked
) -> tuple[dict, NatsJournal]:
    """The stream holds every command once in seq order, each acknowledged order exactly
    once, and the node at `base` is exactly its replay. Returns (the node's verified
    status, the journal)."""
    verified = http("GET", base + "/v1/admin/cluster?verify=1")[1]
    journal = NatsJournal(link, stream, prefix)
    commands = read_commands(journal)
    assert [c.seq for c in commands] == list(range(1, len(commands) + 1))
    assert commands[-1].seq == verified["applied_seq"]
    counts = Counter(c.client_order_id for c in commands if type(c) is NewOrder)
    assert all(counts[clid] == 1 for clid in acked), [c for c in acked if counts[c] != 1]
    engine = MatchingEngine([])
    for cmd in commands:
        engine.apply(cmd)
    assert state_hash(engine) == verified["state_hash"]
    return verified, journal
