"""Many client sessions over every protocol as one load-generator driver, and the check of
every answer against the node's journal.

Each protocol's driver (engine.load) keeps its own connections and reports answers by the
order's index, so a composite only has to route each order to one of them."""

from __future__ import annotations

import asyncio
import json
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


def client_sessions(split: Sessions) -> Sessions:
    """One session per client, the protocols interleaved (rest, ws, fix, binary, rest, ...):
    with `client_accounts`, each its own account, as a thousand independent traders are.
    The node reports every event of an account to each of the account's live sessions
    (engine/routing.py): 250 FIX sessions sharing one account turned each order into 250
    execution reports, each written to a FIX message store, which is what failed the
    concurrency suite at full size (30 journaled orders/s, REST answers lost)."""
    out: Sessions = []
    for i in range(max(n for _, n in split)):
        out += [(protocol, 1) for protocol, n in split if i < n]
    return out


def client_accounts(n: int) -> dict[str, str]:
    """API key -> account name for `n` suite clients."""
    return {f"suite-client-{i:05d}-key-0000": f"client-{i:05d}" for i in range(n)}


def _key_of(i: int, keys: Sequence[str]) -> str:
    """Sub-driver i's API key: they take turns over the accounts."""
    return keys[i % len(keys)]


def mixed_driver(
    host: str, ports: dict, sessions: Sessions, run: LoadRun, accounts: dict[str, str] = LOAD_ACCOUNTS
) -> tuple[MixedDriver, list]:
    """The composite and, per sub-driver, (protocol, account) in routing order; the
    sub-drivers take turns over `accounts` (API key -> name; default the two load accounts)."""
    from engine.load.cli import _driver
    from engine.load.fix_driver import FixDriver

    keys = list(accounts)
    drivers, who = [], []
    for i, (protocol, n) in enumerate(sessions):
        if n <= 0:
            raise ValueError(f"{protocol}: {n} sessions")
        key = _key_of(i, keys)
        if protocol == "fix":  # SenderCompIDs bound in the node's config (spawned_suite_node)
            comp_ids = suite_comp_ids(accounts[key], n)
            drivers.append(FixDriver(host, ports["fix"], key, n, comp_ids=comp_ids, account=accounts[key]))
        else:
            drivers.append(_driver(protocol, host, ports, key, n, run))
        who.append((protocol, accounts[key]))
    return MixedDriver(drivers), who


def client_order_id(protocol: str, run: LoadRun, order: LoadOrder) -> str:
    """The client order id the journal holds for this order as the protocol sent it."""
    return client_order_id_of(run.client_ref(order.index)) if protocol == "binary" else order.client_order_id


def history_of(
    answers: list, sent: int, who: list, route: Callable[[int], int], run: LoadRun, make
) -> History:
    """Every sent order as a chaos-history operation: acked (with its order id) is ok, a
    refusal or an admission-control shed is failed, no answer is unknown."""
    history = History()
    now = time.monotonic()
    for i in range(sent):
        protocol, account = who[route(i)]
        order = make(run.prefix, i)
        op = history.invoke(account, client_order_id(protocol, run, order), protocol, now)
        answer = answers[i]
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
    accounts: dict[str, str] = LOAD_ACCOUNTS,
    tick_s: float = 0.0,
) -> tuple[dict, History, dict]:
    """Offer `orders` orders at `rate` over the mixed sessions; (the load report, the history,
    the answer counts by protocol). `tick_s`: the generator's send tick (run_open_loop)."""
    from engine.load.runner import LoadStats, make_order, run_open_loop

    make = make or make_order
    run = LoadRun.new()
    driver, who = mixed_driver(info["host"], info, sessions, run, accounts)
    duration = (orders + 0.5) / rate  # the runner sends int(rate * duration) orders
    stats = LoadStats("mixed", rate, duration)
    stats.keep_answers = True
    report = await run_open_loop(
        driver, "mixed", rate, duration, run, drain_s, samples=samples, stats=stats, make=make, tick_s=tick_s
    )
    route = lambda i: i % len(driver.drivers)  # noqa: E731 (MixedDriver's default routing)
    answers = stats.answers or []  # reserved by run_open_loop (keep_answers)
    history = history_of(answers, stats.sent, who, route, run, make)
    by_protocol: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            protocol = who[route(i)][0]
            by_protocol[protocol] = by_protocol.get(protocol, 0) + 1
    return report, history, by_protocol


def spawned_suite_node(sessions: Sessions, accounts: dict[str, str] = LOAD_ACCOUNTS):
    """A throwaway `loom run` for a suite: the two load accounts, `accounts` too when they
    are others (`client_accounts`), and the FIX SenderCompIDs of the FIX sessions bound."""
    keys = list(accounts)
    fix: dict[str, int] = {}  # account -> its FIX sessions
    for i, (protocol, n) in enumerate(sessions):
        if protocol == "fix":
            name = accounts[_key_of(i, keys)]
            fix[name] = max(fix.get(name, 0), n)
    text = _config_text(fix_sessions=max(fix.values(), default=0) if accounts is LOAD_ACCOUNTS else 0)
    if accounts is not LOAD_ACCOUNTS:
        for key, name in accounts.items():
            text += f'[[accounts]]\nname = "{name}"\napi_key = "{key}"\n'
            if fix.get(name):
                text += f"fix_comp_ids = {json.dumps(suite_comp_ids(name, fix[name]))}\n"
    # A thousand sessions log on one after another on a loaded machine, for longer than the
    # idle deadlines: the first ones must still be open when the orders start.
    patient = "[admission]\nsession_idle_s = 600\nhttp_idle_s = 600\n"
    return spawned_exchange(timeout=120, config_text=text + patient)


def run_sync(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
