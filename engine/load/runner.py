"""Open-loop load: orders are sent on a fixed schedule (order i at start + i/rate) whether or
not earlier ones were answered, and latency is measured from the *scheduled* send time, so
a stall in the server shows up as latency instead of silently lowering the offered rate
(coordinated omission)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine import progress
from engine.bench.stats import percentile_us

MID = 100_000
SYMBOL = "LOAD-USD"


@dataclass(frozen=True, slots=True)
class LoadOrder:
    index: int
    client_order_id: str
    side: str  # "buy" | "sell"
    price: int
    qty: int
    tif: str  # "gtc" | "ioc"


# Orders one run may send: each run's binary client_refs are base + 1 .. base + RUN_REFS.
RUN_REFS = 10**9
_RUN_IDS = 18_000_000_000  # RUN_IDS * RUN_REFS stays below 2**64 (client_ref is a u64)


@dataclass(frozen=True, slots=True)
class LoadRun:
    """One run's own client order ids. FIX (tests/test_cli_defects.py): the binary driver sent
    client_ref = order index, so a second `loom load --port` against the same node resent the
    first run's ids and nearly every order came back DUPLICATE_CLIENT_ORDER_ID (a client order
    id stays taken while its order is among the venue's newest 100,000). A random run number (one in 1.8e10)
    now prefixes the text ids and offsets the binary refs."""

    number: int

    @classmethod
    def new(cls) -> LoadRun:
        return cls(1 + secrets.randbelow(_RUN_IDS - 1))

    @property
    def prefix(self) -> str:  # REST, WebSocket and FIX: client order id "<prefix>-<index>"
        return f"L{self.number}"

    def client_ref(self, index: int) -> int:  # binary: never 0 (no id)
        return self.number * RUN_REFS + index + 1

    def index_of_ref(self, client_ref: int) -> int:
        return client_ref - self.number * RUN_REFS - 1


def make_order(run: str, i: int) -> LoadOrder:
    """Deterministic flow: 45% passive buys, 45% passive sells, 10% IOC orders that cross."""
    k = (i * 2654435761) % 100  # cheap scramble of the index, reproducible
    qty = 1 + (i * 7) % 100
    if k < 10:
        side = "buy" if k % 2 else "sell"
        price = MID + 60 if side == "buy" else MID - 60
        return LoadOrder(i, f"{run}-{i}", side, price, qty, "ioc")
    side = "buy" if k < 55 else "sell"
    offset = 1 + (i * 13) % 50
    price = MID - offset if side == "buy" else MID + offset
    return LoadOrder(i, f"{run}-{i}", side, price, qty, "gtc")


class OrderBatch(Sequence[LoadOrder]):
    """The orders due in one send, `first` onwards, each built only when read: a driver that
    holds most of a batch back (backpressure, its in-flight bound) builds none of those.
    Measured (py-spy of `loom load --protocol binary --rate 200000 --hold --max-in-flight
    5000`): building every due order was about two thirds of the generator's CPU, most of
    them then held, on a machine whose other core was the node's."""

    __slots__ = ("first", "make", "n", "prefix")  # not `count`: Sequence.count is a method

    def __init__(self, make: Callable[[str, int], LoadOrder], prefix: str, first: int, count: int) -> None:
        self.make, self.prefix, self.first, self.n = make, prefix, first, count

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):  # type: ignore[override]  # an int k only (drivers read order k when they send it)
        if not 0 <= k < self.n:
            raise IndexError(k)
        return self.make(self.prefix, self.first + k)

    def __iter__(self) -> Iterator[LoadOrder]:
        make, prefix = self.make, self.prefix
        return (make(prefix, i) for i in range(self.first, self.first + self.n))


class Driver(Protocol):
    hold: bool  # keep back orders due on a connection the server is pushing back on

    async def connect(self, on_ack) -> None: ...

    def send(self, orders: Sequence[LoadOrder]) -> int | None:
        """Send (or, with hold, keep back) the orders; returns how many were held. A driver
        that holds reads `orders[k]` only for the orders it sends (OrderBatch builds on read)."""

    async def close(self) -> None: ...


@dataclass
class LoadStats:
    protocol: str
    offered_rate: float
    duration_s: float
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)  # the venue's reject code
    overloaded: int = 0  # refused by admission control (REST/WS OVERLOADED, binary 603, FIX Text)
    errors: int = 0
    held: int = 0  # kept back while the server pushed back (hold): never sent, never answered
    # Order i is scheduled at start_ns + i * interval_ns: computed on its answer, not stored
    # per order (the generator's own CPU is part of what it measures on a shared machine).
    start_ns: int = 0
    interval_ns: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)  # acked and rejected (journaled) orders
    answered_ns: list[int] = field(default_factory=list)  # when each of them was answered
    overload_latencies_ns: list[int] = field(default_factory=list)
    first_ack_ns: int = 0
    last_ack_ns: int = 0
    # Each order's answer by index, (ok, overloaded, reason, order id), None while unanswered,
    # when kept (keep_answers: the suites check every one against the journal: engine.suite.ledger).
    keep_answers: bool = False
    answers: list[tuple[bool, bool, str | None, int] | None] | None = None

    def reserve_answers(self, total: int) -> None:
        """Room for every order's answer, made before the first send. Grown as answers came
        (a dict), the store was rebuilt whole on the event loop each time it doubled: 81 ms
        at 2.8M answers and 156 ms at 5.6M (CPython 3.11), a client stall that every answer
        then due waited out, and the soak's last window's ack p99 (session 10: 43.9 ms
        against 10-15 elsewhere at 30,000/s, the rebuild at 93.2 s of 100)."""
        self.answers = [None] * total if self.keep_answers else None

    def on_ack(
        self,
        index: int,
        ok: bool,
        now_ns: int | None = None,
        overloaded: bool = False,
        reason: str | None = None,
        order_id: int = 0,  # the venue's order id of an ack, where the protocol's answer carries it
    ) -> None:
        now = now_ns if now_ns is not None else time.perf_counter_ns()
        if self.answers is not None and 0 <= index < len(self.answers):  # one of this run's orders
            self.answers[index] = (ok, overloaded, reason, order_id)
        if overloaded:  # shed: not journaled, so not in the order-to-ack figures
            self.overloaded += 1
            self.overload_latencies_ns.append(now - self.scheduled(index))
        else:
            if ok:
                self.acked += 1
            else:
                self.rejected += 1
                self.rejected_by_reason[reason or "UNKNOWN"] += 1
            self.latencies_ns.append(now - self.scheduled(index))
            self.answered_ns.append(now)
        if not self.first_ack_ns:
            self.first_ack_ns = now
        self.last_ack_ns = now

    def scheduled(self, index: int) -> int:
        """When order `index` was due to be sent (perf_counter_ns)."""
        return self.start_ns + int(index * self.interval_ns)

    def report(self, elapsed_s: float) -> dict:
        lat = sorted(self.latencies_ns)
        shed = sorted(self.overload_latencies_ns)
        processed = self.acked + self.rejected
        answered = processed + self.overloaded + self.held
        return {
            "protocol": self.protocol,
            "offered_rate": round(self.offered_rate),
            # Orders the exchange journaled (acked or rejected) per second; refusals apart.
            "achieved_rate": round(processed / elapsed_s) if elapsed_s else 0,
            "duration_s": round(elapsed_s, 3),
            "sent": self.sent,
            "acked": self.acked,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason.most_common()),
            "overloaded": self.overloaded,
            "overloaded_p50_us": percentile_us(shed, 50),
            "held": self.held,
            "errors": self.errors + (self.sent - answered),
            "p50_us": percentile_us(lat, 50),
            "p99_us": percentile_us(lat, 99),
            "p999_us": percentile_us(lat, 99.9),
            "max_us": round(lat[-1] / 1000, 1) if lat else 0.0,
        }


async def run_open_loop(
    driver: Driver,
    protocol: str,
    rate: float,
    duration: float,
    run: LoadRun,
    drain_s: float = 10.0,
    latencies_ns: list[int] | None = None,
    samples: dict | None = None,
    stats: LoadStats | None = None,
    make: Callable[[str, int], LoadOrder] = make_order,
    tick_s: float = 0.0,
) -> dict:
    """Offer `rate` orders/s for `duration` s; the report. `latencies_ns`, when given, gets
    every journaled order's latency too (to pool several runs); `samples` gets them as
    "latencies_ns" and their answer times as "answered_s" (since the first send: --plot).
    `stats`: the run's LoadStats to fill (e.g. keeping every answer); `make`: order i's order.
    `tick_s` > 0: sleep at least that long between sends, each sending every order then due,
    instead of spinning on a core (see the loop)."""
    total = int(rate * duration)
    if total > RUN_REFS:
        raise ValueError(f"{total:,} orders in one run: at most {RUN_REFS:,} (lower --rate or --duration)")
    stats = stats if stats is not None else LoadStats(protocol, rate, duration)
    stats.reserve_answers(total)
    await driver.connect(stats.on_ack)
    clock = time.perf_counter_ns
    interval_ns = 1e9 / rate
    progress.phase(f"{protocol} load: orders sent", total)
    cpu_start = time.process_time()
    start = stats.start_ns = clock()
    stats.interval_ns = interval_ns
    sent = 0
    prefix = run.prefix
    # How late each send was for its first order: a generator that keeps up sends within
    # microseconds; late by milliseconds, it (or the CPU it could not get) set the pace.
    late_ns: list[int] = []
    while sent < total:
        now = clock()
        due = min(total, int((now - start) / interval_ns) + 1)
        if due > sent:
            late_ns.append(now - start - int(sent * interval_ns))
            held = driver.send(OrderBatch(make, prefix, sent, due - sent))
            if held:
                stats.held += held
            sent = due
            stats.sent = sent
            progress.update(sent)
        # The event loop's timers are only millisecond-accurate: sleep while the next order
        # is far off, otherwise just yield (reading acks) and look again, so sends are late
        # by microseconds, not by a timer tick (this generator owns a core to do it).
        wait_ns = start + sent * interval_ns - clock()
        if tick_s:
            # A tick instead: orders go out late by up to a tick and a timer's slack, which
            # their latency (from the scheduled time) includes. The spin costs as much CPU
            # as the node's whole order path at 24,000/s (session 9: 40 against 30 µs per
            # ack), and on two cores that CPU is the node's (the soak's tail).
            await asyncio.sleep(max(wait_ns / 1e9, tick_s))
        else:
            await asyncio.sleep((wait_ns - 1_500_000) / 1e9 if wait_ns > 2_000_000 else 0)
    progress.phase(f"{protocol} load: answers", sent)
    deadline = clock() + int(drain_s * 1e9)
    while stats.acked + stats.rejected + stats.overloaded + stats.held < sent and clock() < deadline:
        progress.update(stats.acked + stats.rejected + stats.overloaded + stats.held)
        await asyncio.sleep(0.005)
    elapsed = (max(stats.last_ack_ns, start) - start) / 1e9
    # The generator's CPU over its sending and draining (it yields rather than sleeps between
    # orders less than 2 ms apart, so on an idle core this reads near the wall time).
    cpu_s, wall_s = time.process_time() - cpu_start, (clock() - start) / 1e9
    figures = getattr(driver, "figures", None)  # a leader-following driver's failover figures
    await driver.close()
    report = stats.report(elapsed)
    report["client_cpu_s"] = round(cpu_s, 3)
    report["client_wall_s"] = round(wall_s, 3)
    late_ns.sort()
    report["client_late_p99_ms"] = round(percentile_us(late_ns, 99) / 1000, 2)
    report["client_late_max_ms"] = round(late_ns[-1] / 1e6, 2) if late_ns else 0.0
    report["client_sends"] = len(late_ns)  # the generator's writes: one per order when it spins
    if latencies_ns is not None:
        latencies_ns.extend(stats.latencies_ns)
    if samples is not None:
        samples["latencies_ns"] = stats.latencies_ns
        samples["answered_s"] = [(t - start) / 1e9 for t in stats.answered_ns]
    if figures is not None:
        report["failover"] = figures()
    return report
