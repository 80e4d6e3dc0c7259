"""`loom bench telemetry`: the cost of observability, measured side by side.

The same workload goes through a real node and its asyncio service (journal with
fdatasync, group commit of 512) three times per round, once per mode, each round starting
with the next mode. In every mode the
order store and market data listen, as in `loom run` (they are the exchange's read
models, there with or without telemetry), so the figures are telemetry's own cost:
- off: no metrics, no trace ids, no trace export;
- metrics only: the metrics fed and scraped, no trace export;
- on:  metrics fed every batch and scraped (Prometheus text) once a second, and order
       traces sampled (default: the export default of `loom run`) and shipped to the span
       worker, which builds the spans on the other core (OTEL_TRACES_EXPORTER=none, so no
       collector is needed). Every order is traceable by id either way (derived trace ids).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from engine import progress
from engine.bench.workload import INSTRUMENT, generate
from engine.core.order_store import OrderStore
from engine.exchange import ExchangeNode, NodeConfig
from engine.market_data import MarketData
from engine.service import ExchangeService


async def _run(
    commands: list,
    telemetry: bool,
    batch: int,
    sampling: str,
    traces: bool = True,
    surveillance: bool = False,
) -> tuple[float, dict]:
    """Orders/s of one run; with `surveillance`, the desk listens and its budgeted worker runs
    as in `loom run` (engine/bench/surveillance_cost.py --e2e compares)."""
    from telemetry.collectors import ExchangeCollector
    from telemetry.metrics import ExchangeMetrics
    from telemetry.observer import MetricsObserver
    from telemetry.order_traces import OrderTraceRecorder
    from telemetry.tracing import Sampler, TraceShipper

    tmp = Path(tempfile.mkdtemp(prefix="loom-telemetry-"))
    node = ExchangeNode(NodeConfig(tmp, (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0))
    metrics = ExchangeMetrics() if telemetry else None
    service = ExchangeService(node, observer=MetricsObserver(metrics) if metrics else None)
    service.add_event_listener(OrderStore().on_events)
    service.add_event_listener(MarketData(node.engine).on_events)
    shipper = None
    if telemetry:
        service.add_event_listener(metrics.on_events)
        metrics.registry.register(ExchangeCollector(service, {}))
    if telemetry and traces:
        shipper = TraceShipper(Sampler("all"), {**os.environ, "OTEL_TRACES_EXPORTER": "none"})
        service.add_observer(OrderTraceRecorder(shipper, node.trace_id_of, Sampler(sampling)))
    desk = worker = None
    if surveillance:
        from engine.surveillance_desk import SurveillanceDesk

        desk = SurveillanceDesk()
        service.add_event_listener(desk.on_events)
        worker = asyncio.create_task(desk.run())
    service.start()
    extra: dict = {}
    try:
        # Warm-up, untimed in both modes: the first tenth of the orders, and (with
        # telemetry) until the span worker has started and imported the SDK.
        warm = (len(commands) // 10) // batch * batch
        for i in range(0, warm, batch):
            await service.submit([c.__copy__() for c in commands[i : i + batch]])
        if shipper is not None:
            deadline = time.monotonic() + 30
            while not shipper.worker_ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        gc.collect()
        started = time.perf_counter()
        next_scrape = started + 1.0
        for i in range(warm, len(commands), batch):
            # Fresh command objects each run: the service stamps them in place.
            await service.submit([c.__copy__() for c in commands[i : i + batch]])
            if telemetry and time.perf_counter() >= next_scrape:
                metrics.text.render()  # as /metrics renders it
                next_scrape += 1.0
        elapsed = time.perf_counter() - started
        timed = len(commands) - warm
        if desk is not None:  # how far the worker got within its budget while the orders ran
            extra = {**desk.backlog(), "busy_share": round(desk.busy_s / elapsed, 3)}
            worker.cancel()
        await service.stop()
        if shipper is not None:
            shipper.close()
            extra = {**shipper.stats(), **extra}
    finally:
        node.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return timed / elapsed, extra


def run_telemetry_bench(
    orders: int = 200_000, rounds: int = 3, batch: int = 512, seed: int = 1, sampling: str = ""
) -> dict:
    from telemetry.order_traces import DEFAULT_EXPORT_SAMPLING

    sampling = sampling or DEFAULT_EXPORT_SAMPLING
    commands = generate(orders, seed, "deep").commands
    off, metrics_only, on = [], [], []
    shipped = {}
    modes = [
        (off, dict(telemetry=False)),
        (metrics_only, dict(telemetry=True, traces=False)),
        (on, dict(telemetry=True, traces=True)),
    ]
    progress.phase("telemetry bench: runs (off, metrics only, on)", 3 * rounds)
    for r in range(rounds):
        # Each round starts with the next mode: a fixed order would give one mode the
        # same place every round (a disk or cache that drifts within a round biases it).
        for runs, kwargs in modes[r % 3 :] + modes[: r % 3]:
            rate, extra = asyncio.run(_run(commands, batch=batch, sampling=sampling, **kwargs))
            runs.append(rate)
            progress.advance()
            if kwargs.get("traces"):
                shipped = extra
    off_rate, on_rate = statistics.median(off), statistics.median(on)
    metrics_rate = statistics.median(metrics_only)
    return {
        "bench": "telemetry",
        "orders": len(commands),
        "batch": batch,
        "off_orders_per_s": round(off_rate),
        "on_orders_per_s": round(on_rate),
        "off_runs": [round(r) for r in off],
        "on_runs": [round(r) for r in on],
        "sampling": sampling,
        "ratio": round(on_rate / off_rate, 3),
        "overhead_pct": round((1 - on_rate / off_rate) * 100, 1),
        "metrics_only_orders_per_s": round(metrics_rate),
        "metrics_only_runs": [round(r) for r in metrics_only],
        "tracing_ratio": round(on_rate / metrics_rate, 3),
        "tracing_overhead_pct": round((1 - on_rate / metrics_rate) * 100, 1),
        "traces_shipped": shipped.get("shipped", 0),
        "traces_dropped": shipped.get("dropped", 0),
    }


def format_telemetry(r: dict) -> str:
    return (
        f"telemetry bench: {r['orders']:,} orders through a durable node, batches of {r['batch']}, "
        "the order store and market data listening in every mode\n"
        f"  off {r['off_orders_per_s']:,} orders/s {r['off_runs']}\n"
        f"  on  {r['on_orders_per_s']:,} orders/s {r['on_runs']} "
        f"(metrics fed and scraped, spans exported for sampling {r['sampling']})\n"
        f"  metrics only {r['metrics_only_orders_per_s']:,} orders/s {r['metrics_only_runs']}\n"
        f"  ratio on/off {r['ratio']} ({r['overhead_pct']}% overhead); tracing on top of metrics "
        f"{r['tracing_ratio']} ({r['tracing_overhead_pct']}%); traces shipped "
        f"{r['traces_shipped']:,}, dropped {r['traces_dropped']:,} in the last run"
    )
