"""/metrics in the text format (telemetry/exposition.py): for a fixed state the page is byte for
byte what prometheus_client's generate_latest writes, whether the renderer's cached series
prefixes are fresh, reused or evicted; and the open-order counts read from the books are the
accounts' own counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

import telemetry.exposition as exposition
from engine.app import start_exchange
from engine.config import Config
from engine.core.commands import Cancel, NewOrder
from engine.core.domain import Instrument
from engine.gateways.http_context import CTX
from telemetry.exposition import OpenMetricsRenderer, TextRenderer, render_families

SYMBOLS = ("AAA-USD", "BBB-USD")
BUY, SELL, LIMIT = 1, 2, 2


class Frozen:
    """One collected state, served to both renderers (live values move between two collects)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


def _config(data_dir: Path) -> Config:
    return Config(
        data_dir=data_dir,
        http_port=0,
        fix_port=0,
        binary_port=0,
        instruments=[Instrument(s, tick_size=1, lot_size=1, min_qty=1, max_qty=1000) for s in SYMBOLS],
        api_keys={"alice-key-0123456789abcdef": "alice", "bob-key-0123456789abcdef0": "bob"},
        admin_key="admin-key-0123456789abcdef",
    )


async def _scrapes_of_a_traded_node(data_dir: Path):
    """Orders resting on both sides of two books, partly filled and some cancelled; then the
    node's collected families (twice, one renderer: the second render reuses its cache), the
    per-symbol open orders counted from the accounts, and the loom_open_orders lines."""
    running = await start_exchange(_config(data_dir))
    try:
        ctx = running.http_runner.app[CTX]
        orders = []
        for i in range(60):
            symbol = SYMBOLS[i % 2]
            side = BUY if i % 4 < 2 else SELL
            price = 100 + i % 7 if side == BUY else 110 + i % 5
            account = "bob" if i % 3 == 0 else "alice"
            orders.append(NewOrder(account, f"r{i}", symbol, side, LIMIT, price, 4 + i % 3))
        await ctx.service.submit(orders)
        # Crossing orders: fills (full and partial) take some resting orders out of the books.
        await ctx.service.submit([NewOrder("bob", "x1", "AAA-USD", SELL, LIMIT, 101, 30)])
        await ctx.service.submit([NewOrder("alice", "x2", "BBB-USD", BUY, LIMIT, 111, 9)])
        await ctx.service.submit([Cancel("alice", client_order_id=f"r{i}") for i in (1, 4, 5, 8)])
        engine = ctx.service.node.engine
        walked = dict.fromkeys(SYMBOLS, 0)
        for account in engine.accounts.values():
            for order in account.open.values():
                walked[order.symbol] += 1
        renderer = TextRenderer(ctx.metrics.registry)
        first = list(ctx.metrics.registry.collect())
        return first, renderer, walked
    finally:
        await running.stop()


def test_a_scrape_is_generate_latests_text_for_the_same_state(tmp_path):
    families, renderer, _walked = asyncio.run(_scrapes_of_a_traded_node(tmp_path))
    expected = generate_latest(Frozen(families))
    assert b"loom_open_orders" in expected and b"loom_stage_duration_seconds_bucket" in expected
    assert render_families(families, renderer) == expected  # fresh: every prefix built
    assert render_families(families, renderer) == expected  # cached: every prefix reused
    om = OpenMetricsRenderer(Frozen(families))
    expected_om = openmetrics_latest(Frozen(families))
    assert b"loom_orders_total{" in expected_om and expected_om.endswith(b"# EOF\n")
    assert om.render() == expected_om
    assert om.render() == expected_om


def test_open_orders_counted_from_the_books_match_the_accounts(tmp_path):
    families, _renderer, walked = asyncio.run(_scrapes_of_a_traded_node(tmp_path))
    (open_orders,) = [f for f in families if f.name == "loom_open_orders"]
    counted = {s.labels["symbol"]: s.value for s in open_orders.samples}
    assert counted == walked
    assert 0 < walked["AAA-USD"] < 30 and 0 < walked["BBB-USD"] < 30  # fills and cancels took some


def _registry():
    registry = CollectorRegistry()
    gauge = Gauge("demo_level", "A gauge.\nTwo lines, a \\ too.", ["symbol"], registry=registry)
    counter = Counter("demo_events", "A counter.", ["kind", "reason"], registry=registry)
    hist = Histogram("demo_seconds", "A histogram.", ["stage"], registry=registry, buckets=(0.001, 0.1))
    return registry, gauge, counter, hist


def test_changed_values_and_label_sets_render_as_generate_latest_does():
    registry, gauge, counter, hist = _registry()
    renderer = TextRenderer(registry)
    gauge.labels("A").set(1)
    counter.labels("x", "y").inc()
    hist.labels("match").observe(0.01)

    om = OpenMetricsRenderer(registry)

    def same() -> None:
        families = list(registry.collect())
        assert render_families(families, renderer) == generate_latest(Frozen(families))
        om.registry = Frozen(families)
        assert om.render() == openmetrics_latest(Frozen(families))

    same()
    counter.labels("x", "y").inc(2, exemplar={"trace_id": "abc"})  # OpenMetrics writes exemplars
    hist.labels("match").observe(0.05, exemplar={"trace_id": "def"})
    same()
    gauge.labels("A").set(2.5e9)  # a value changes under a cached prefix
    counter.labels("x", "y").inc(3)
    hist.labels("match").observe(5)
    same()
    gauge.labels('quo"te\\back\nline').set(-1)  # a new label set, with every escaped character
    counter.labels("x", "z").inc()
    gauge.remove("A")  # and one gone
    same()
    assert b'symbol="quo\\"te\\\\back\\nline"' in renderer.render()


def test_the_prefix_cache_is_bounded_and_starts_over_when_full(monkeypatch):
    monkeypatch.setattr(exposition, "MAX_CACHED", 10)
    registry, gauge, _counter, _hist = _registry()
    renderer = TextRenderer(registry)
    for i in range(25):  # churning label values: each scrape brings new ones
        gauge.labels(f"S{i}").set(i)
        families = list(registry.collect())
        assert render_families(families, renderer) == generate_latest(Frozen(families))
        assert len(renderer._prefix) <= 10


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/plain"),
        ("text/plain", "text/plain"),
        ("application/openmetrics-text", "application/openmetrics-text"),
    ],
)
def test_the_metrics_route_serves_the_renderers_text(tmp_path, accept, content_type):
    """The route renders with the node's renderer of the format asked for (its cache kept
    between scrapes)."""

    async def scrape():
        from aiohttp import ClientSession

        running = await start_exchange(_config(tmp_path))
        try:
            url = f"http://127.0.0.1:{running.ports['http']}/metrics"
            headers = {"Accept": accept} if accept else {}
            async with ClientSession() as session:
                for _ in range(2):
                    async with session.get(url, headers=headers) as resp:
                        assert resp.status == 200
                        assert resp.headers["Content-Type"].startswith(content_type)
                        text = await resp.text()
            metrics = running.http_runner.app[CTX].metrics
            renderer = metrics.openmetrics if "openmetrics" in content_type else metrics.text
            cached = len(renderer._prefix)
            return text, cached
        finally:
            await running.stop()

    text, cached = asyncio.run(scrape())
    assert "# TYPE loom_open_orders gauge" in text
    assert 'loom_open_orders{symbol="AAA-USD"} 0.0' in text
    if "openmetrics" in content_type:
        assert "# TYPE loom_orders counter" in text and text.endswith("# EOF\n")
    else:
        assert "# TYPE loom_orders_total counter" in text
    assert cached > 100  # every series of the page, kept for the next scrape
