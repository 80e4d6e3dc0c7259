"""`loom top`: a live terminal view of a running node, from what any client may read: its
/metrics (orders/s, order-to-ack p50/p99 over the last interval, the commit backlog, the
best prices and open orders per symbol) and /v1/trades/SYMBOL (the latest trades).

Figures over an interval come from the difference of two scrapes: counters by their rate,
order-to-ack percentiles from the histogram's bucket counts (linear within a bucket, as
Prometheus's histogram_quantile does).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from engine.core.stage_timings import duration_text


@dataclass
class Scrape:
    at: float  # time.monotonic() of the scrape
    counters: dict[str, float] = field(default_factory=dict)  # name -> sum over labels
    gauges: dict[tuple[str, tuple], float] = field(default_factory=dict)  # (name, labels) -> value
    ack_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count, all protocols


def parse(text: str, at: float) -> Scrape:
    scrape = Scrape(at)
    buckets: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "loom_order_to_ack_seconds_bucket":
                buckets[float(s.labels["le"])] += s.value
            elif family.type == "counter" and s.name.endswith("_total"):
                scrape.counters[s.name] = scrape.counters.get(s.name, 0.0) + s.value
            elif family.type == "gauge":
                scrape.gauges[(s.name, tuple(sorted(s.labels.items())))] = s.value
    scrape.ack_buckets = dict(buckets)
    return scrape


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile (seconds) of the observations between two scrapes of a histogram;
    None when there were none."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its lower edge, as Prometheus does
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def figures(before: Scrape, after: Scrape, trades: dict[str, list[dict]]) -> dict:
    """What `loom top` shows, from two scrapes and the latest trades per symbol."""
    dt = max(after.at - before.at, 1e-9)

    def rate(name: str) -> float:
        return (after.counters.get(name, 0.0) - before.counters.get(name, 0.0)) / dt

    def gauge(name: str, **labels: str) -> float | None:
        return after.gauges.get((name, tuple(sorted(labels.items()))))

    symbols = sorted(
        {dict(labels)["symbol"] for (name, labels) in after.gauges if name == "loom_open_orders"}
    )
    p50 = quantile(0.5, before.ack_buckets, after.ack_buckets)
    p99 = quantile(0.99, before.ack_buckets, after.ack_buckets)
    return {
        "interval_s": round(dt, 2),
        "seq": gauge("loom_journal_last_seq"),
        "ready": gauge("loom_ready") == 1,
        "orders_per_s": round(rate("loom_orders_total"), 1),
        "commands_per_s": round(rate("loom_commands_total"), 1),
        "trades_per_s": round(rate("loom_trades_total"), 1),
        "rejects_per_s": round(rate("loom_rejects_total"), 1),
        "ack_p50_us": None if p50 is None else round(p50 * 1e6, 1),
        "ack_p99_us": None if p99 is None else round(p99 * 1e6, 1),
        "commit_backlog": gauge("loom_commit_backlog_commands"),
        "symbols": {
            sym: {
                "bid": gauge("loom_book_best_price", symbol=sym, side="bid"),
                "ask": gauge("loom_book_best_price", symbol=sym, side="ask"),
                "open_orders": gauge("loom_open_orders", symbol=sym),
                "trades": trades.get(sym, []),
            }
            for sym in symbols
        },
    }


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def sample(base: str, trades_per_symbol: int = 5) -> tuple[Scrape, dict[str, list[dict]]]:
    scrape = parse(fetch(f"{base}/metrics"), time.monotonic())
    symbols = {dict(labels)["symbol"] for (name, labels) in scrape.gauges if name == "loom_open_orders"}
    trades = {
        sym: json.loads(fetch(f"{base}/v1/trades/{sym}?limit={trades_per_symbol}"))["trades"]
        for sym in symbols
    }
    return scrape, trades


def _price(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _us(value: float | None) -> str:
    return "-" if value is None else duration_text(value)


def render(f: dict, base: str):
    """A rich renderable of one frame."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        ("loom top ", "bold"),
        f"{base}  seq {f['seq'] or 0:,.0f}  ",
        ("ready" if f["ready"] else "NOT READY", "green" if f["ready"] else "bold red"),
        f"  every {f['interval_s']} s",
    )
    flow = Text(
        f"orders/s {f['orders_per_s']:,.0f}   commands/s {f['commands_per_s']:,.0f}   "
        f"trades/s {f['trades_per_s']:,.0f}   rejects/s {f['rejects_per_s']:,.0f}   "
        f"ack p50 {_us(f['ack_p50_us'])}  p99 {_us(f['ack_p99_us'])}   "
        f"commit backlog {f['commit_backlog'] or 0:,.0f}"
    )
    book = Table(expand=True)
    for name in ("symbol", "bid", "ask", "spread", "open orders"):
        book.add_column(name, no_wrap=True, justify="left" if name == "symbol" else "right")
    # The rest of the width, cut short rather than wrapped: one line per symbol.
    book.add_column("last trades (qty@price)", ratio=1, no_wrap=True, overflow="ellipsis")
    for sym, s in f["symbols"].items():
        spread = s["ask"] - s["bid"] if s["bid"] is not None and s["ask"] is not None else None
        last = "  ".join(f"{t['qty']}@{t['price']:,}" for t in s["trades"][:5])
        book.add_row(sym, _price(s["bid"]), _price(s["ask"]), _price(spread), _price(s["open_orders"]), last)
    return Group(head, flow, book)


def run(base: str, interval: float, once: bool, as_json: bool) -> int:
    """Sample every `interval` s and redraw; with `once`, print one frame (two samples
    `interval` apart) and return."""
    from rich.console import Console
    from rich.live import Live

    base = base.rstrip("/")
    before, _ = sample(base)
    time.sleep(interval)
    after, trades = sample(base)
    frame = figures(before, after, trades)
    if once:
        if as_json:
            print(json.dumps(frame))
        else:
            Console().print(render(frame, base))
        return 0
    with Live(render(frame, base), refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            before, (after, trades) = after, sample(base)
            live.update(render(figures(before, after, trades), base))
