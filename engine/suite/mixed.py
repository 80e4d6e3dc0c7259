"""Many client sessions over every protocol as one load-generator driver, and the check of
every answer against the node's journal.

Each protocol's driver (engine.load) keeps its own connections and reports answers by the
order's index, so a composite only has to route each order to one of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.chaos.history import FAILED, OK, UNKNOWN, History, JournalView, check
from engine.gateways.binary.protocol import client_order_id_of
from engine.load.runner import LoadOrder, LoadRun
from engine.load.spawn import LOAD_ACCOUNTS, _config_text, spawned_exchange, suite_comp_ids

PROTOCOLS = ("rest", "ws", "fix", "binary")
KEYS = list(LOAD_ACCOUNTS)  # two trading accounts: the protocols alternate between them


class MixedDriver:
    """Sub-drivers behind one Driver: order i goes to `route(order)` (default: round robin)."""

    def __init__(self, drivers: Sequence, route: Callable[[LoadOrder], int] | None = None) -> None:
        self.drivers = list(drivers)
        self.route = route or (lambda o: o.index % len(self.drivers))
        self.hold = False

    async def connect(self, on_ack) -> None:
        # One at a time: a thousand logons at once would measure the accept queue, not the node.
        for d in self.drivers:
            await d.connect(on_ack)

    def send(self, orders: list[LoadOrder]) -> int:
        per: dict[int, list[LoadOrder]] = {}
        for o in orders:
            per.setdefault(self.route(o), []).append(o)
        return sum(self.drivers[d].send(batch) or 0 for d, batch in per.items())

    async def close(self) -> None:
        for d in self.drivers:
            await d.close()


Sessions = list[tuple[str, int]]  # (protocol, connections) per sub-driver, in routing order


def split_sessions(sessions: int, protocols: Sequence[str] = PROTOCOLS) -> Sessions:
    """`sessions` connections shared as evenly as possible between the protocols."""
    if sessions < len(protocols):
        raise ValueError(f"{sessions} sessions cannot cover the {len(protocols)} protocols")
    base, extra = divmod(sessions, len(protocols))
    return [(p, base + (i < extra)) for i, p in enumerate(protocols)]


def mixed_driver(host: str, ports: dict, sessions: Sessions, run: LoadRun) -> tuple[MixedDriver, list]:
    """The composite and, per sub-driver, (protocol, account) in routing order; the
    sub-drivers alternate between the two load accounts."""
    from engine.load.cli import _driver

    drivers, who = [], []
    for i, (protocol, n) in enumerate(sessions):
        if n <= 0:
            raise ValueError(f"{protocol}: {n} sessions")
        key = KEYS[i % len(KEYS)]
        if protocol == "fix":  # SenderCompIDs bound in the node's config (spawned_suite_node)
            from engine.load.fix_driver import FixDriver

            comp_ids = suite_comp_ids(LOAD_ACCOUNTS[key], n)
            drivers.append(FixDriver(host, ports["fix"], key, n, comp_ids=comp_ids))
        else:
            drivers.append(_driver(protocol, host, ports, key, n, run))
        who.append((protocol, LOAD_ACCOUNTS[key]))
    return MixedDriver(drivers), who


def client_order_id(protocol: str, run: LoadRun, order: LoadOrder) -> str:
    """The client order id the journal holds for this order as the protocol sent it."""
    return client_order_id_of(run.client_ref(order.index)) if protocol == "binary" else order.client_order_id


def history_of(
    answers: dict, sent: int, who: list, route: Callable[[int], int], run: LoadRun, make
) -> History:
    """Every sent order as a chaos-history operation: acked (with its order id) is ok, a
    refusal or an admission-control shed is failed, no answer is unknown."""
    history = History()
    now = time.monotonic()
    for i in range(sent):
        protocol, account = who[route(i)]
        order = make(run.prefix, i)
        op = history.invoke(account, client_order_id(protocol, run, order), protocol, now)
        answer = answers.get(i)
        if answer is None:
            history.complete(op, UNKNOWN, "never answered", now)
            continue
        ok, overloaded, reason, order_id = answer
        outcome = OK if ok else FAILED
        text = f"{protocol} ack" if ok else f"{protocol} {'OVERLOADED' if overloaded else reason}"
        history.complete(op, outcome, text, now, order_id)
    return history


def check_against_journal(history: History, data_dir: Path) -> dict:
    """The history checked against the node's journal (read-only: the node may still run),
    replayed through the core; the figures and the first contradictions."""
    from engine.journal.segments import FileJournal

    journal = FileJournal(data_dir / "journal", read_only=True)
    try:
        view = JournalView.replay(journal.read())
    finally:
        journal.close()
    result = check(history, view).to_json()
    return {
        "counts": result["counts"],
        "contradictions": len(result["contradictions"]),
        "contradiction_examples": [c["text"] for c in result["contradictions"][:10]],
        "journal_commands": view.commands,
    }


async def run_mixed(
    info: dict,
    sessions: Sessions,
    orders: int,
    rate: float,
    drain_s: float,
    make=None,
    samples: dict | None = None,
) -> tuple[dict, History, dict]:
    """Offer `orders` orders at `rate` over the mixed sessions; (the load report, the history,
    the answer counts by protocol)."""
    from engine.load.runner import LoadStats, make_order, run_open_loop

    make = make or make_order
    run = LoadRun.new()
    driver, who = mixed_driver(info["host"], info, sessions, run)
    duration = (orders + 0.5) / rate  # the runner sends int(rate * duration) orders
    stats = LoadStats("mixed", rate, duration)
    stats.answers = {}
    report = await run_open_loop(
        driver, "mixed", rate, duration, run, drain_s, samples=samples, stats=stats, make=make
    )
    route = lambda i: i % len(driver.drivers)  # noqa: E731 (MixedDriver's default routing)
    history = history_of(stats.answers, stats.sent, who, route, run, make)
    by_protocol: dict[str, int] = {}
    for i in stats.answers:
        by_protocol[who[route(i)][0]] = by_protocol.get(who[route(i)][0], 0) + 1
    return report, history, by_protocol


def spawned_suite_node(sessions: Sessions):
    """A throwaway `loom run` for a suite, its FIX SenderCompIDs bound for the FIX sessions."""
    fix = max([n for protocol, n in sessions if protocol == "fix"], default=0)
    # A thousand sessions log on one after another on a loaded machine, for longer than the
    # idle deadlines: the first ones must still be open when the orders start.
    patient = "[admission]\nsession_idle_s = 600\nhttp_idle_s = 600\n"
    return spawned_exchange(timeout=120, config_text=_config_text(fix_sessions=fix) + patient)


def run_sync(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
