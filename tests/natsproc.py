"""A real 3-node nats-server JetStream cluster on loopback for the HA tests (started once
per test session: free ports, stores under tmp, `sync_interval: always`, readiness polled
on /healthz?js-enabled-only=true), plus a fresh stream name per use so tests never share
journal state."""

from __future__ import annotations

import itertools
import uuid

import pytest

from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster

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
