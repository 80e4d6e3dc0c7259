"""Scrape-time collectors describe() their metrics, so a name registered twice fails at
registration (as prometheus_client's own metrics do), and a real node's whole catalogue
registers cleanly, each name with one owner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from engine.app import start_exchange
from engine.config import Config
from engine.core.domain import Instrument
from engine.gateways.http_context import CTX
from telemetry.catalogue import CATALOGUE, CLUSTER_ONLY, TRACING_ONLY
from telemetry.collectors import (
    CatalogueCollector,
    DataDiskCollector,
    StandaloneRoleCollector,
)
from telemetry.metrics import SCRAPE_COLLECTORS, SCRAPE_TIME, ExchangeMetrics
from telemetry.runtime import BuildInfo


def test_registering_a_collector_twice_fails_at_registration(tmp_path):
    registry = CollectorRegistry()
    registry.register(DataDiskCollector(tmp_path))
    with pytest.raises(ValueError, match=r"Duplicated timeseries.*loom_data_disk_free_bytes"):
        registry.register(DataDiskCollector(tmp_path))


def test_two_owners_of_one_name_clash_whichever_registers_second():
    registry = CollectorRegistry()
    registry.register(StandaloneRoleCollector())
    role = CATALOGUE["loom_cluster_role"]
    with pytest.raises(ValueError, match=r"Duplicated timeseries.*loom_cluster_role"):
        Counter(role.name, role.help, registry=registry)  # a direct metric taking a collector's name
    metrics = ExchangeMetrics(process=False)
    with pytest.raises(ValueError, match=r"Duplicated timeseries.*loom_commands"):

        class Rogue(CatalogueCollector):  # a collector taking a direct metric's name
            METRICS = ("loom_commands",)

            def collect(self):
                return iter(())

        metrics.registry.register(Rogue())


def test_every_collector_describes_only_catalogue_metrics_and_nothing_twice():
    for collector in SCRAPE_COLLECTORS:
        assert collector.METRICS, collector
        assert len(set(collector.METRICS)) == len(collector.METRICS), collector
        assert set(collector.METRICS) <= set(CATALOGUE), collector
    described = {f.name for f in BuildInfo("1", "r").describe()}
    assert described == {"loom_build_info"}


def test_the_direct_metrics_and_the_collectors_share_out_the_catalogue():
    """ExchangeMetrics builds what no collector names; together they are the catalogue."""
    metrics = ExchangeMetrics(process=False)
    assert set(metrics.m).isdisjoint(SCRAPE_TIME)
    assert set(metrics.m) | SCRAPE_TIME == set(CATALOGUE)


async def _registry_of_a_live_node(data_dir: Path):
    config = Config(
        data_dir=data_dir,
        http_port=0,
        fix_port=0,
        binary_port=0,
        instruments=[Instrument("BTC-USD", tick_size=1, lot_size=1, min_qty=1, max_qty=1000)],
        api_keys={"alice-key-0123456789abcdef": "alice"},
        admin_key="admin-key-0123456789abcdef",
    )
    running = await start_exchange(config)
    try:
        registry = running.http_runner.app[CTX].metrics.registry
        owners = dict(registry._collector_to_names)  # registry internals: what each registered
        scraped = {c: {f.name for f in c.collect()} for c in owners if isinstance(c, CatalogueCollector)}
        described = {c: {f.name for f in c.describe()} for c in scraped}
        names = {n for c in owners for n in owners[c]}
        return names, scraped, described
    finally:
        await running.stop()


def test_a_live_node_registers_the_whole_catalogue_and_collects_only_what_it_described(tmp_path):
    names, scraped, described = asyncio.run(_registry_of_a_live_node(tmp_path))
    standalone = set(CATALOGUE) - (CLUSTER_ONLY - {"loom_cluster_role"}) - TRACING_ONLY
    assert standalone <= names, sorted(standalone - names)
    assert len(scraped) >= 8  # every kind of scrape-time collector a standalone node has
    for collector, collected in scraped.items():
        assert collected, collector
        assert collected <= described[collector], (type(collector).__name__, collected - described[collector])
    # A second copy of any registered collector is refused by name.
    registry = CollectorRegistry()
    for collector in scraped:
        registry.register(collector)
    for collector in scraped:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(collector)
