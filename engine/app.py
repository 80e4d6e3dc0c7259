"""`loom run`: the embedded single-node exchange serving every gateway.

Start-up is recovery (snapshot + journal replay), then the listeners; shutdown drains:
stop accepting, commit what is queued, close the listeners, take a final snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from engine.access_log import AccessLog
from engine.auth import Accounts
from engine.automation import RunbookAutomation
from engine.config import Config
from engine.console import say
from engine.core.order_store import OrderStore
from engine.endpoints import banner, url_host
from engine.exchange import ExchangeNode, NodeConfig
from engine.fdbudget import compute_budget, describe, per_ip_cap
from engine.gateways.admission import IDLE_TIMEOUT, Admission, http_refusal
from engine.gateways.http_app import build_app
from engine.gateways.http_context import SESSIONS, GatewayContext
from engine.gateways.http_errors import QuietAppRunner
from engine.gateways.http_limits import LIMITS, HttpLimits, body_deadline
from engine.gateways.http_shed import PipelineShed
from engine.gateways.listener import Listener, listen
from engine.gateways.preauth_limit import PerIpLimit
from engine.gc_policy import YoungPasses, settle_after_start_up
from engine.ledger_index import LedgerIndex
from engine.logfmt import fields
from engine.market_data import MarketData
from engine.order_index import FinishedOrders
from engine.order_lookup import OrderLookups, SourceSpec
from engine.overload import TEXT_RECEIVE_BUFFER, limit_receive_buffers
from engine.risk_admin import KillSwitchActions
from engine.routing import ExecutionRouter
from engine.service import ExchangeService
from engine.surveillance_desk import SurveillanceDesk
from telemetry.collectors import (
    AdmissionCollector,
    ClusterCollector,
    DataDiskCollector,
    ExchangeCollector,
    FixSessionsCollector,
    LedgerCollector,
    MarketDataCollector,
    RiskCollector,
    StandaloneRoleCollector,
    SurveillanceCollector,
    TraceExportCollector,
)
from telemetry.metrics import MAIN_LOOP, ExchangeMetrics
from telemetry.observer import MetricsObserver
from telemetry.order_traces import DEFAULT_EXPORT_SAMPLING, OrderTraceRecorder
from telemetry.runtime import BuildInfo, GcPauses, LoopLagProbe
from telemetry.tracing import Sampler, TraceShipper

log = logging.getLogger("loom.app")


@dataclass
class RunningExchange:
    """Everything a started node holds; `stop()` shuts it down in order."""

    config: Config
    node: ExchangeNode
    service: ExchangeService
    order_store: OrderStore
    market_data: MarketData
    router: ExecutionRouter
    accounts: Accounts
    http_runner: web.AppRunner
    ports: dict[str, int] = field(default_factory=dict)
    servers: list[tuple[Listener, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    shipper: TraceShipper | None = None
    cluster: object | None = None  # engine.cluster.member.ClusterMember in cluster mode
    lookups: OrderLookups | None = None
    probes: list[LoopLagProbe] = field(default_factory=list)
    gc_pauses: GcPauses | None = None
    metrics_runner: web.AppRunner | None = None  # /metrics on its own listener (metrics_port)

    async def stop(self) -> None:
        self.service.accepting = False
        for probe in self.probes:
            probe.stop()
        if self.gc_pauses is not None:
            self.gc_pauses.remove()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.service.stop()  # commits whatever was queued
        except Exception:  # a dead commit loop: still close the listeners and the data dir
            log.exception("the commit loop had failed; closing without a final snapshot")
            for _server, stop in self.servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stop(), 5)
            await self.http_runner.cleanup()
            if self.metrics_runner is not None:
                await self.metrics_runner.cleanup()
            self.node.close()
            raise
        if self.cluster is not None:  # hand the lease over now rather than on expiry
            await self.cluster.stop()
        for _server, stop in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stop(), 5)
        await self.http_runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.lookups is not None:
            await self.lookups.close()
        await self.market_data.close()
        if self.shipper is not None:
            self.shipper.close()
        if self.order_store.index is not None:
            self.order_store.index.close()
        try:
            if self.node.engine.last_seq > self.node.last_snapshot_seq:
                written = self.node.take_snapshot()
                log.info("final snapshot at seq %d", written.seq, extra=fields(seq=written.seq))
        finally:
            self.node.close()


def _fix_session_count(server) -> int:
    from engine.gateways.fix.server import fix_gateway

    try:
        return len(fix_gateway(server).sessions)
    except KeyError:  # stopped
        return 0


def _fix_session_states(server) -> dict[str, int]:
    from engine.gateways.fix.server import fix_gateway, session_states

    try:
        return fix_gateway(server).session_states()
    except KeyError:  # stopped
        return dict.fromkeys(session_states(), 0)


# The journal thread needs the GIL back the moment its fdatasync returns; CPython's default
# 5 ms switch interval would add up to 5 ms to an acknowledgement under load (the same holds
# for a surveillance worker holding the GIL: it must let go within this).
GIL_SWITCH_INTERVAL_S = 0.0005


async def start_exchange(cfg: Config) -> RunningExchange:
    journal = lease = replicated = positions = None
    if cfg.cluster:
        # The replicated journal replaces the local one; instruments are listed by whichever
        # node first leads (a standby never writes).
        from engine.cluster.setup import connect_cluster

        journal, lease, replicated, positions = await asyncio.to_thread(connect_cluster, cfg)
    node = ExchangeNode(
        NodeConfig(
            cfg.data_dir,
            () if cfg.cluster else tuple(cfg.instruments),
            () if cfg.cluster else tuple(cfg.assets),
            None if cfg.cluster else cfg.credit_checks,
            fee_account=cfg.fee_account,
            snapshot_every_commands=cfg.snapshot_every_commands,
            snapshot_every_s=cfg.snapshot_every_s,
            keep_snapshots=cfg.keep_snapshots,
            snapshot_writer=cfg.snapshot_writer,
            fsync=cfg.fsync,
            journal_retention=cfg.journal_retention,
        ),
        journal=journal,
        replicated=replicated,
    )
    rec = node.recovered
    loop_module = type(asyncio.get_running_loop()).__module__.split(".")[0]
    log.info("event loop: %s", f"uvloop {_uvloop_version()}" if loop_module == "uvloop" else "asyncio")
    log.info(
        "recovered to seq %d (%s snapshot %d, %d commands replayed, state hash %s) in %.2f s",
        node.engine.last_seq,
        rec.snapshot_source or "no",
        rec.snapshot_seq,
        rec.replayed_commands,
        rec.state_hash[:16],
        rec.duration_s,
    )
    metrics = ExchangeMetrics()
    listed = node.engine.instruments
    fee_assets = {s: i.quote for s, i in listed.items() if i.has_assets}
    metrics.money_labels(sorted(node.engine.books), sorted(node.engine.ledger.assets), fee_assets)
    service = ExchangeService(
        node, observer=MetricsObserver(metrics), max_queued_commands=cfg.max_queued_commands
    )
    # Not in the data dir: the file grows with the window (~141 MB at 1M orders), and on the
    # data disk that bounded growth read as "filling up" to LoomDataDiskFillingUp, which is
    # about the journal (the stack drill's alert stayed active after every recovery).
    index_file = (
        Path(tempfile.gettempdir()) / f"loom-finished-orders-{os.getpid()}"
        if cfg.lookup_index == "file"
        else None
    )
    index = FinishedOrders(cfg.lookup_window_orders, lambda: node.engine.next_order_id, index_file)
    order_store = OrderStore(index=index)
    order_store.seed_open_orders(node.engine)  # orders that survived a restart stay queryable
    order_store.derive_trace_id = node.derived_trace_id
    market_data = MarketData(node.engine, observer=service.observer, candle_days=cfg.md_candle_days)
    market_data.batch_time = lambda: service.durable_at  # fan-out lag from the durable point
    market_data.max_queued, market_data.send_buffer_bytes = cfg.md_max_queued, cfg.md_send_buffer_bytes
    market_data.book_max_rate = cfg.md_book_max_rate
    router = ExecutionRouter()
    # Off the order path: the commit loop appends, a budgeted worker thread analyses.
    surveillance = (
        SurveillanceDesk(cfg.account_owners, cpu_share=cfg.surveillance_cpu_share)
        if cfg.surveillance
        else None
    )
    ledger = LedgerIndex(cfg.ledger_entries_per_account)
    ledger.seed(node.engine.ledger)  # the transfers before this start, until the read-back below
    ledger.engine = lambda: service.node.engine  # settlement entries count back from its totals
    service.add_event_listener(ledger.on_events)  # ledger entries and balances pushes
    service.add_listener(router.on_batch)  # execution reports: every event, in sequence order
    for listener in (order_store.on_events, market_data.on_events, metrics.on_events):
        service.add_event_listener(listener)  # one shared walk of the batch's events
    if surveillance is not None:
        service.add_event_listener(surveillance.on_events)
    sessions: dict[str, Callable[[], int]] = {}
    metrics.registry.register(ExchangeCollector(service, sessions))
    metrics.registry.register(DataDiskCollector(node.config.data_dir))
    metrics.registry.register(RiskCollector(lambda: service.node.engine, surveillance))
    if surveillance is not None:
        metrics.registry.register(
            SurveillanceCollector(surveillance, lambda: service.node.engine.instruments)
        )
    metrics.registry.register(LedgerCollector(lambda: service.node.engine))
    metrics.registry.register(MarketDataCollector(market_data))
    metrics.registry.register(BuildInfo())
    gc_pauses = GcPauses()
    metrics.registry.register(gc_pauses)
    member = None
    if cfg.cluster:
        from engine.cluster.member import ClusterMember
        from engine.cluster.retention import Retention

        member = ClusterMember(
            cfg.node_id,
            service,
            journal,
            lease,
            tuple(cfg.instruments),
            tuple(cfg.assets),
            cfg.credit_checks,
            cfg.fee_account,
        )
        member.retention = Retention(
            journal,
            replicated,
            member.leading,
            keep_commands=cfg.retention_keep_commands,
            keep_snapshots=cfg.retention_keep_snapshots,
            positions=positions,
        )
        member.positions = positions
        node.on_snapshot = member.retention.on_snapshot
        collector = ClusterCollector(member)
        journal.on_publish = collector.publish_seconds.observe
        metrics.registry.register(collector)
        # The durable market data to NATS, one subject per symbol, for `loom marketdata`.
        from engine.marketdata_nats import MarketDataPublisher

        MarketDataPublisher(
            market_data, member.link, cfg.cluster_stream, member.leading, order_store.recent_trades
        ).start()
    else:
        metrics.registry.register(StandaloneRoleCollector())
    automation = RunbookAutomation(
        node.take_snapshot_async,
        os.environ.get("LOOM_AUTOMATION_TOKEN") or cfg.admin_key,
        metrics=metrics,
        actions=member.automation_actions() if member is not None else None,
    )
    KillSwitchActions(service, surveillance).register(automation)
    accounts = Accounts(cfg.api_keys, cfg.admin_key, cfg.ops_keys)
    service.start()
    spec = SourceSpec(str(cfg.data_dir), tuple(cfg.cluster), cfg.cluster_stream, cfg.node_id)
    lookups = OrderLookups(spec, index, lambda: node.engine)
    lookups.start_rebuild()  # finished orders from before this start, read back in the background
    lookups.start_ledger_rebuild(ledger)  # and the ledger entries (trades, fees) likewise
    market_data.start_read_back(spec)  # candles from before this start, likewise
    ctx = GatewayContext(
        service,
        order_store,
        market_data,
        router,
        accounts,
        cfg.rate_limit,
        cfg.rate_burst,
        node.take_snapshot_async,
        metrics=metrics,
        automation=automation,
        cluster=member,
        surveillance=surveillance,
        lookups=lookups,
        ledger=ledger,
        access=AccessLog(cfg.access_log_sample),
        preauth=PerIpLimit(cfg.preauth_rate_limit, cfg.preauth_rate_burst),
    )
    own_metrics_port = cfg.metrics_port >= 0
    admissions = _admissions(cfg)
    metrics.registry.register(AdmissionCollector(list(admissions.values())))
    app = build_app(ctx, serve_metrics=not own_metrics_port)
    sessions["websocket"] = lambda: len(app[SESSIONS])
    limits = app[LIMITS] = HttpLimits(cfg.admission, admissions["http"])
    app.middlewares.append(body_deadline(limits))
    # keepalive_timeout: the idle and request-head deadline (engine/gateways/http_limits.py);
    # the quiet runner answers malformed HTTP in the JSON error format (http_errors.py).
    runner = QuietAppRunner(
        app,
        observer=service.observer,
        shed=PipelineShed(service),
        access_log=None,
        keepalive_timeout=cfg.admission.http_idle_s,
    )
    await runner.setup()
    # The listener is built here rather than by a web.TCPSite: admission wraps aiohttp's
    # protocol factory, so a refused connection never gets a request handler, and one that
    # has sent nothing yet gets none either (built on its first bytes; closed silent after
    # http_idle_s, as aiohttp's keep-alive timer would).
    http_server = await listen(
        admissions["http"].lazy_gate(
            lambda _opened: runner.server(), cfg.admission.http_idle_s, IDLE_TIMEOUT
        ),
        cfg.host,
        cfg.http_port,
        admissions["http"],
    )
    limit_receive_buffers(http_server, TEXT_RECEIVE_BUFFER)  # a paused session's client feels it at once
    running = RunningExchange(cfg, node, service, order_store, market_data, router, accounts, runner)
    if surveillance is not None:
        running.tasks.append(asyncio.create_task(surveillance.run(), name="surveillance"))
    running.servers.append((http_server, lambda s=http_server: _stop_listening(s)))
    running.lookups = lookups
    running.ports["http"] = http_server.sockets[0].getsockname()[1]
    if own_metrics_port:
        from engine.gateways.metrics_listener import start_metrics_listener

        running.metrics_runner, running.ports["metrics"] = await start_metrics_listener(
            ctx, cfg.metrics_host or cfg.host, cfg.metrics_port
        )
    if cfg.binary_port >= 0:
        from engine.gateways.binary.server import binary_sessions, start_binary_server, stop_binary_server

        server = await start_binary_server(
            service,
            router,
            accounts,
            cfg.host,
            cfg.binary_port,
            cfg.binary_rate_limit,
            cfg.binary_rate_burst,
            login_s=cfg.admission.login_timeout_s,
            idle_s=cfg.admission.session_idle_s,
            admission=admissions["binary"],
        )
        running.servers.append((server, lambda s=server: stop_binary_server(s)))
        sessions["binary"] = lambda s=server: len(binary_sessions(s))
        running.ports["binary"] = server.sockets[0].getsockname()[1]
    if cfg.fix_port >= 0:
        from engine.gateways.fix.server import start_fix_server, stop_fix_server
        from engine.gateways.fix.session import SessionConfig

        server = await start_fix_server(
            service,
            router,
            order_store,
            accounts,
            cfg.host,
            cfg.fix_port,
            cfg.data_dir / "fix",
            config=SessionConfig(
                rate=cfg.binary_rate_limit,
                burst=cfg.binary_rate_burst,
                logon_timeout=cfg.admission.login_timeout_s,
            ),
            access=ctx.access,
            admission=admissions["fix"],
            comp_ids=cfg.fix_comp_ids,
            max_comp_ids=cfg.fix_max_comp_ids,
        )
        running.servers.append((server, lambda s=server: stop_fix_server(s)))
        sessions["fix"] = lambda s=server: _fix_session_count(s)
        metrics.registry.register(FixSessionsCollector(lambda s=server: _fix_session_states(s)))
        running.ports["fix"] = server.sockets[0].getsockname()[1]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        # Spans are built and exported by a child process; this one only writes records.
        # Started once the listeners are bound: the spans name their address and ports.
        sampling = os.environ.get("LOOM_TRACE_SAMPLING", DEFAULT_EXPORT_SAMPLING)
        running.shipper = TraceShipper(Sampler("all"), _trace_env(cfg, running.ports))
        service.add_observer(OrderTraceRecorder(running.shipper, node.trace_id_of, Sampler(sampling)))
        metrics.registry.register(TraceExportCollector(running.shipper))
        log.info("exporting order traces (sampling %s)", sampling)
    if member is not None:  # once every listener is bound: the lease advertises them all
        running.cluster = member
        member.start(
            f"http://{cfg.host}:{running.ports['http']}",
            {
                name: f"{cfg.host}:{port}"
                for name, port in running.ports.items()
                if name not in ("http", "metrics")
            },
        )
    if cfg.demo:
        from engine.demo import run_demo_flow

        flow = (
            _demo_while_leading(service, cfg.demo_rate)
            if cfg.cluster
            else run_demo_flow(service, cfg.demo_rate, accounts=tuple(sorted(set(cfg.api_keys.values()))))
        )
        running.tasks.append(asyncio.create_task(flow, name="demo"))
    # Start-up objects are long-lived: keep them out of every future collection; full
    # collections rarer (a flood's held connections are what they would walk).
    settle_after_start_up()
    running.gc_pauses = gc_pauses.install()  # after the start-up collection: pauses in service
    # Young collections on a clock: a steady state's count hovers while its young generation
    # fills, then one pass walks it all (engine/gc_policy.py).
    running.tasks.append(asyncio.create_task(YoungPasses().run(), name="gc-young-passes"))
    loops = [(MAIN_LOOP, asyncio.get_running_loop())]
    if member is not None:  # the lease renews on the NATS thread's own loop: watch it too
        loops.append(("nats", member.link.loop))
    for name, loop in loops:
        probe = LoopLagProbe(loop, metrics.loop_lag(name))
        probe.start()
        running.probes.append(probe)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return running


def _admissions(cfg: Config) -> dict[str, Admission]:
    """Each listener's admission, its caps derived from the descriptor budget (which raises
    the soft RLIMIT_NOFILE first) unless [admission] sets them."""
    from engine.gateways.binary import protocol as bp
    from engine.gateways.fix.server import refusal_logout

    refusals = {
        "http": http_refusal,
        "binary": lambda text: bp.encode_error(bp.ErrorCode.TOO_MANY_CONNECTIONS, text[: bp.TEXT_BYTES]),
        "fix": refusal_logout,
    }
    enabled = ["http"] + [name for name in ("binary", "fix") if getattr(cfg, f"{name}_port") >= 0]
    settings = cfg.admission
    budget = compute_budget(enabled, settings.reserve_fds, settings.max_connections)
    log.info(describe(budget))
    return {
        name: Admission(
            name,
            cap,
            per_ip_cap(settings.max_connections_per_ip, cap),
            refusals[name],
            settings.summary_every_s,
            refusal_rate=settings.refusal_rate,
            backoff_s=settings.refusal_backoff_s,
        )
        for name, cap in budget.caps.items()
    }


async def _stop_listening(server: Listener) -> None:
    server.close()  # its connections are aiohttp's: the runner's cleanup closes them


def _trace_env(cfg: Config, ports: dict[str, int]) -> dict[str, str]:
    """The trace worker's environment: the resource attributes (service.version,
    service.instance.id: the node id, else host:port; deployment.environment) and the
    listeners its receive spans name (telemetry/trace_worker.py reads them)."""
    from engine import __version__

    env = dict(os.environ)
    env.update(
        LOOM_SERVICE_VERSION=__version__,
        LOOM_SERVICE_INSTANCE_ID=cfg.node_id or f"{cfg.host}:{ports['http']}",
        LOOM_DEPLOYMENT_ENVIRONMENT=cfg.environment,
        LOOM_SERVER_ADDRESS=cfg.host,
    )
    env.update({f"LOOM_SERVER_PORT_{name.upper()}": str(port) for name, port in ports.items()})
    return env


async def _demo_while_leading(service: ExchangeService, rate: int) -> None:
    """The demo traders of a cluster node: they trade while this node leads."""
    from engine.demo import run_demo_flow
    from engine.service import ServiceStopped

    while True:
        while not service.accepting or not service.node.engine.instruments:
            await asyncio.sleep(0.1)
        with contextlib.suppress(ServiceStopped):
            await run_demo_flow(service, rate)


async def serve(cfg: Config) -> int:
    """Run until SIGINT/SIGTERM, then drain. Console lines go through `say`: a stdout whose
    reader is gone must not stop the drain (engine/console.py)."""
    running = await start_exchange(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ports = ", ".join(f"{name} {port}" for name, port in running.ports.items())
    say(f"loom: ready on {cfg.host} ({ports}); data in {cfg.data_dir}")
    for line in banner(cfg.host, running.ports, cfg.demo, cfg.journal_retention):
        say(line)
    if cfg.cluster:
        say(f"loom: cluster node {cfg.node_id} on {','.join(cfg.cluster)} (standby until it holds the lease)")
    if cfg.demo:
        keys = ", ".join(f"{account}={key}" for key, account in sorted(cfg.api_keys.items()))
        ops = ", ".join(sorted(cfg.ops_keys))
        say(f"loom: demo accounts: {keys}; admin key {cfg.admin_key}; ops (read-only) key {ops}")
        say(f"loom: try  curl http://{url_host(cfg.host)}:{running.ports['http']}/v1/book/BTC-USD")
    started = time.monotonic()
    await stop.wait()
    say(f"loom: shutting down after {time.monotonic() - started:.0f} s")
    await running.stop()
    say(f"loom: stopped at seq {running.node.engine.last_seq}")
    return 0


def _uvloop_version() -> str:
    import uvloop

    return uvloop.__version__
