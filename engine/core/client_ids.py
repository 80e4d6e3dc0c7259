"""Client order ids: which ones an account still holds, and forgetting the rest.

A client order id stays taken while its order is open and while the order is among the
venue's newest CLIENT_ORDER_ID_WINDOW order ids: long enough for a client to resend or look
up an order after a lost answer or a failover (seconds at this node's peak of ~10,000
orders/s, hours at hundreds a second), short enough that the table stays bounded (it kept
every id ever accepted: ~130 bytes each, most of a 3-minute soak's 185 MB of growth). A rule
of the core, not a setting: a replay must decide every duplicate as the live node did.

`AccountOrders.by_clid` maps each id to its order id and `live_clid` applies the rule, so
what the table holds physically never changes an answer: forgetting is memory, not state.
`ClientIdExpiry` forgets. Its cost per order depends neither on how many accounts the venue
has nor on how many orders rest: a pass looks only at the ids that left the window since the
last one (a queue in registration order), and an id whose order still rests is set aside and
looked at again only when the set-aside ids have doubled. The pass it replaced walked every
account's table every 1,024 orders and moved each resting order's id to the back of its
table once per window: with 10,000 accounts the order path ran at less than half its rate
with 100 (BENCHMARKS.md, "Session 12: forgetting client order ids").

Pure like the rest of the core: no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from engine.core.book import RestingOrder

CLIENT_ORDER_ID_WINDOW = 100_000
CLIENT_ORDER_ID_PRUNE_EVERY = 1024  # orders between two passes over the ids that left it


class AccountOrders:
    """Per-account index: open orders by id, and the client order ids accepted (duplicate
    detection, so a client may resend safely after a failover). `by_clid` may still hold ids
    past their window: every reader asks `live_clid`. `name` is the account's one string
    object, which its resting orders share (see `Market.symbol` in engine/core/matcher.py)."""

    __slots__ = ("name", "open", "by_clid")

    def __init__(self, name: str) -> None:
        self.name = name
        self.open: dict[int, RestingOrder] = {}
        self.by_clid: dict[str, int] = {}

    def live_clid(self, clid: str, next_order_id: int) -> int | None:
        """The order id a client order id still names, else None (never used, or its order
        finished and left the window)."""
        oid = self.by_clid.get(clid)
        if oid is None or oid in self.open or oid >= next_order_id - CLIENT_ORDER_ID_WINDOW:
            return oid
        return None

    def live_clids(self, next_order_id: int) -> dict[str, int]:
        """Every client order id still taken (in the dict's order)."""
        lo = next_order_id - CLIENT_ORDER_ID_WINDOW
        open_ = self.open
        return {c: o for c, o in self.by_clid.items() if o >= lo or o in open_}


class Registrations:
    """Registrations (account index, client order id), oldest first, in two parallel deques:
    nothing allocated per order, so queueing one gives the cyclic collector no new object to
    track (a tuple per order made it collect every few hundred orders: ~5% of a replay). The
    order id is the table's: an id that a newer order took since waits with that order."""

    __slots__ = ("accounts", "clids")

    def __init__(self) -> None:
        self.accounts: deque[AccountOrders] = deque()
        self.clids: deque[str] = deque()

    def append(self, acct: AccountOrders, clid: str) -> None:
        """Off the order path, which appends to the two deques itself."""
        self.accounts.append(acct)
        self.clids.append(clid)

    def clear(self) -> None:
        self.accounts.clear()
        self.clids.clear()

    def __len__(self) -> int:
        return len(self.clids)

    def entries(self) -> set[tuple[str, str]]:
        return {(acct.name, clid) for acct, clid in zip(self.accounts, self.clids, strict=True)}


class ClientIdExpiry:
    """Forgets the client order ids that are free again (derived: never exported or hashed;
    `rebuild` makes it anew from the accounts after a restore).

    The order path appends each registration to `queue` (order id order, but for an amend's
    new id, which carries its order's older id and is simply looked at late). `prune` runs
    every CLIENT_ORDER_ID_PRUNE_EVERY orders."""

    __slots__ = ("queue", "parked", "sweep_left", "sweep_at")

    def __init__(self) -> None:
        self.queue = Registrations()
        # Ids whose order was still open when their window passed: looked at again in a sweep
        # once there are twice as many as the last sweep kept (amortized O(1) per id set
        # aside), a slice per pass so that no pass stalls the order path.
        self.parked = Registrations()
        self.sweep_left = 0  # ids of the sweep under way still to look at
        self.sweep_at = 0  # set by the first pass (the constants are read there, not here)

    def prune(self, next_order_id: int) -> int:
        """One pass; returns the order id at which the next one is due."""
        due = next_order_id - 1 + CLIENT_ORDER_ID_PRUNE_EVERY  # the order id of the next pass
        lo = next_order_id - CLIENT_ORDER_ID_WINDOW
        budget = 4 * CLIENT_ORDER_ID_PRUNE_EVERY  # bounds a pass after a restore or a burst
        accounts, clids = self.queue.accounts, self.queue.clids
        parked = self.parked
        parked_accounts, parked_clids = parked.accounts, parked.clids
        # Taken off first (one probe for the common case, an id to forget), put back when it
        # stays: the table's order means nothing since ids are queued here.
        while clids and budget:
            acct = accounts.popleft()
            clid = clids.popleft()
            oid = acct.by_clid.pop(clid, None)
            if oid is None:  # forgotten already (an id queued twice)
                budget -= 1
                continue
            if oid >= lo:  # in the window, and so is what follows
                acct.by_clid[clid] = oid
                accounts.appendleft(acct)
                clids.appendleft(clid)
                break
            budget -= 1
            if oid in acct.open:
                acct.by_clid[clid] = oid
                parked_accounts.append(acct)
                parked_clids.append(clid)
        if not self.sweep_left:
            if len(parked) < self.sweep_at:
                return due
            self.sweep_left = len(parked)
        n = min(self.sweep_left, 4 * CLIENT_ORDER_ID_PRUNE_EVERY)
        for _ in range(n):  # looked up, not taken off: here most ids stay (their orders rest)
            acct = parked_accounts.popleft()
            clid = parked_clids.popleft()
            oid = acct.by_clid.get(clid)
            if oid is None or oid >= lo:
                continue  # forgotten, or taken by a newer order (queued with it)
            if oid in acct.open:
                parked_accounts.append(acct)
                parked_clids.append(clid)
            else:
                del acct.by_clid[clid]
        self.sweep_left -= n
        if not self.sweep_left:
            self.sweep_at = max(2 * len(parked), CLIENT_ORDER_ID_PRUNE_EVERY)
        return due

    def rebuild(self, accounts: Iterable[AccountOrders]) -> None:
        """Every id the accounts hold, queued in order id order (a restored engine)."""
        self.parked.clear()
        self.sweep_left = self.sweep_at = 0
        self.queue.clear()  # the same deques: the engine holds them for the order path
        held = [(oid, acct, clid) for acct in accounts for clid, oid in acct.by_clid.items()]
        held.sort(key=_oid)
        for _, acct, clid in held:
            self.queue.append(acct, clid)

    def held(self) -> set[tuple[str, str]]:
        """(account, client order id) of every registration it will look at again: the
        invariant checker asks that every id the tables hold is among them (else it would
        never be forgotten)."""
        return self.queue.entries() | self.parked.entries()


def _oid(held: tuple[int, AccountOrders, str]) -> int:
    return held[0]
