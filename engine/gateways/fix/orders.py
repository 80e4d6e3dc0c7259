"""The application layer of a FIX session: NewOrderSingle (D), OrderCancelRequest (F)
and OrderCancelReplaceRequest (G) become engine commands for the logged-on account, and
the account's durable events become ExecutionReports (8) and OrderCancelRejects (9).

Replies are built from the router's event stream, not from `submit()`'s result. An event
is tied to the request that caused it by its sequence number: the sequencer stamps `seq`
on the command object itself before any event is routed, so a command in flight carries
the seq its events will carry. (A batch the journal refused carries seq 0; those
rejections are matched on their content instead.) Events of orders this session never
saw (placed before it connected, or by another session of the account) start from the
order store's view of the order.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.core.commands import Amend, Cancel, NewOrder
from engine.core.domain import CancelReason, OrderType, RejectReason, RequestKind, Side, TimeInForce
from engine.core.events import OrderAccepted, OrderAmended, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.core.order_store import CANCELLED, FILLED
from engine.gateways.fix.codec import utc_timestamp_ns
from engine.gateways.fix.tags import (
    BusinessRejectReason,
    CxlRejReason,
    CxlRejResponseTo,
    ExecType,
    MsgType,
    OrdRejReason,
    OrdStatus,
    SessionRejectReason,
    Tag,
    tag_name,
)
from engine.reason_texts import cancel_code, reject_code, reject_text

COMM_TYPE_ABSOLUTE = "3"  # FIX CommType 3: the Commission (12) is an absolute amount
log = logging.getLogger("loom.fix")

Reply = tuple[str, list[tuple[int, object]]]
OrderLookup = Callable[[int], Any]

_NUMBER = re.compile(r"(-?)([0-9]*)(?:\.([0-9]*))?")
_MAX_UNITS = 10**15  # far beyond any real price or quantity, well inside 64 bits
_SIDES = {"1": Side.BUY, "2": Side.SELL}
_ORD_TYPES = {"1": OrderType.MARKET, "2": OrderType.LIMIT}
_TIFS = {"1": TimeInForce.GTC, "3": TimeInForce.IOC, "4": TimeInForce.FOK}
_POST_ONLY = "6"  # ExecInst: participate, don't initiate
R = RejectReason

_ORD_REJ = {
    R.UNKNOWN_SYMBOL: OrdRejReason.UNKNOWN_SYMBOL,
    R.DUPLICATE_CLIENT_ORDER_ID: OrdRejReason.DUPLICATE_ORDER,
    R.INVALID_QUANTITY: OrdRejReason.INCORRECT_QUANTITY,
    R.QUANTITY_OFF_LOT: OrdRejReason.INCORRECT_QUANTITY,
    R.QUANTITY_BELOW_MIN: OrdRejReason.INCORRECT_QUANTITY,
    R.QUANTITY_ABOVE_MAX: OrdRejReason.INCORRECT_QUANTITY,
    R.MARKET_ORDER_WITH_PRICE: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    R.INVALID_SIDE: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    R.INVALID_ORDER_TYPE: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    R.INVALID_TIME_IN_FORCE: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    R.POST_ONLY_NOT_LIMIT_GTC: OrdRejReason.UNSUPPORTED_ORDER_CHARACTERISTIC,
    R.POST_ONLY_WOULD_CROSS: OrdRejReason.EXCHANGE_OPTION,
    R.INVALID_ACCOUNT: OrdRejReason.UNKNOWN_ACCOUNT,
    **dict.fromkeys(
        (R.KILL_SWITCH_VENUE, R.KILL_SWITCH_SYMBOL, R.KILL_SWITCH_ACCOUNT, R.INSTRUMENT_HALTED),
        OrdRejReason.EXCHANGE_CLOSED,
    ),
    **dict.fromkeys(
        (
            R.ORDER_QUANTITY_LIMIT,
            R.ORDER_NOTIONAL_LIMIT,
            R.PRICE_OUTSIDE_BAND,
            R.OPEN_ORDERS_LIMIT,
            R.OPEN_NOTIONAL_LIMIT,
            R.ORDER_RATE_LIMIT,
            R.CANCEL_RATIO_LIMIT,
        ),
        OrdRejReason.ORDER_EXCEEDS_LIMIT,
    ),
}
_CXL_REJ = {
    R.UNKNOWN_ORDER: CxlRejReason.UNKNOWN_ORDER,
    R.ORDER_NOT_OPEN: CxlRejReason.TOO_LATE_TO_CANCEL,
    R.DUPLICATE_CLIENT_ORDER_ID: CxlRejReason.DUPLICATE_CLORDID,
}


class FieldProblem(Exception):
    """A malformed field: answered with a session-level Reject (3)."""

    def __init__(self, tag: int, reason: SessionRejectReason, text: str) -> None:
        super().__init__(text)
        self.tag, self.reason, self.text = tag, reason, text


class BusinessProblem(Exception):
    """A well-formed message the gateway will not act on: BusinessMessageReject (j)."""

    def __init__(self, reason: BusinessRejectReason, text: str, ref_id: str = "") -> None:
        super().__init__(text)
        self.reason, self.text, self.ref_id = reason, text, ref_id


@dataclass(slots=True)
class _Order:
    order_id: int
    clid: str
    symbol: str
    side: int
    ord_type: int
    tif: int
    price: int
    qty: int
    cum_qty: int = 0
    notional: int = 0  # sum of price * qty over the fills, for AvgPx
    leaves: int = 0

    @property
    def status(self) -> OrdStatus:
        if self.leaves == 0 and self.cum_qty:
            return OrdStatus.FILLED
        return OrdStatus.PARTIALLY_FILLED if self.cum_qty else OrdStatus.NEW


@dataclass(slots=True, eq=False)
class _Request:
    kind: RequestKind
    cmd: NewOrder | Cancel | Amend
    clid: str  # the request's ClOrdID (11)
    orig_clid: str = ""  # OrigClOrdID (41) of a cancel or replace
    side: int = 0  # Side (54) of a cancel or replace, for reports on orders we never saw
    answered: bool = False


# -- field parsing ----------------------------------------------------------------------


def _once(msg, tag: int) -> str | None:
    value = msg.get(tag)
    if value is not None and msg.count(tag) > 1:
        raise FieldProblem(
            tag, SessionRejectReason.TAG_APPEARS_MORE_THAN_ONCE, f"{tag_name(tag)} appears more than once"
        )
    return value


def _required(msg, tag: int) -> str:
    value = _once(msg, tag)
    if value is None:
        raise FieldProblem(
            tag, SessionRejectReason.REQUIRED_TAG_MISSING, f"Required tag missing: {tag_name(tag)}"
        )
    return value


def _choice(msg, tag: int, table: dict[str, int], default: int | None = None) -> int:
    value = _once(msg, tag) if default is not None else _required(msg, tag)
    if value is None:
        return default  # type: ignore[return-value]
    if value not in table:
        allowed = ", ".join(f"{k} ({v.name})" for k, v in table.items())  # type: ignore[attr-defined]
        raise FieldProblem(
            tag,
            SessionRejectReason.VALUE_INCORRECT,
            f"{tag_name(tag)} value {value!r} is not supported; use {allowed}",
        )
    return table[value]


def _whole(msg, tag: int, required: bool) -> int | None:
    """A whole number of price or quantity units: "100", "100." and "100.00" are fine,
    "100.5" is not (prices and quantities are integers in the wire's units)."""
    value = _required(msg, tag) if required else _once(msg, tag)
    if value is None:
        return None
    m = _NUMBER.fullmatch(value)
    if m is None or not (m.group(2) or m.group(3)):
        raise FieldProblem(
            tag, SessionRejectReason.INCORRECT_DATA_FORMAT, f"{tag_name(tag)} is not a number: {value!r}"
        )
    sign, whole, frac = m.groups()
    if frac and frac.strip("0"):
        raise FieldProblem(
            tag,
            SessionRejectReason.VALUE_INCORRECT,
            f"{tag_name(tag)} must be a whole number of units (prices and quantities are integers), "
            f"got {value!r}",
        )
    number = int(whole or "0")
    if number > _MAX_UNITS:
        raise FieldProblem(
            tag, SessionRejectReason.VALUE_INCORRECT, f"{tag_name(tag)} is out of range: {value!r}"
        )
    return -number if sign else number


def _clean(text: str) -> str:
    """A value safe to put on the wire (orders from other gateways may carry anything)."""
    if text.isascii() and "\x01" not in text:
        return text
    return text.replace("\x01", " ").encode("latin-1", "replace").decode("latin-1")


def _avg_px(notional: int, qty: int) -> str:
    if not qty:
        return "0"
    whole, rest = divmod(notional, qty)
    if not rest:
        return str(whole)
    return format((Decimal(notional) / Decimal(qty)).quantize(Decimal("0.00000001")).normalize(), "f")


def _reason_text(reason: int) -> str:
    return f"{reject_code(reason)}: {reject_text(reason)}"


class OrderFlow:
    def __init__(
        self,
        account: str,
        order_lookup: OrderLookup | None = None,
        exec_id_salt: str = "",
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.account = account
        self._clock_ns = clock_ns
        self._lookup = order_lookup
        self._salt = exec_id_salt
        self._counter = 0
        self.orders: dict[int, _Order] = {}  # open orders this session has seen
        self.by_clid: dict[str, int] = {}
        self._queued: list[_Request] = []  # parsed, not yet handed to the exchange
        # Submitted, batch not yet settled, by id(cmd). Up to MAX_IN_FLIGHT of them under
        # load: every lookup below is by key, never a scan (a passive fill of an order from
        # an earlier batch matches none of them, and scanning cost O(in flight) per event).
        self._inflight: dict[int, _Request] = {}
        self._by_seq: dict[int, _Request] = {}  # the in-flight requests whose seq is known
        self._unsequenced: list[_Request] = []  # in flight, not yet looked at for a seq

    @property
    def busy(self) -> bool:
        return bool(self._queued or self._inflight)

    # -- inbound ---------------------------------------------------------------------

    def _check_account(self, msg, clid: str) -> None:
        account = _once(msg, Tag.Account)
        if account is not None and account != self.account:
            raise BusinessProblem(
                BusinessRejectReason.NOT_AUTHORIZED,
                f"Account (1) {account!r} is not this session's account; orders trade for the "
                f"account of the logon ({self.account})",
                clid,
            )

    def new_order(self, msg) -> None:
        clid = _required(msg, Tag.ClOrdID)
        self._check_account(msg, clid)
        symbol = _required(msg, Tag.Symbol)
        side = _choice(msg, Tag.Side, _SIDES)
        ord_type = _choice(msg, Tag.OrdType, _ORD_TYPES)
        qty = _whole(msg, Tag.OrderQty, required=True)
        price = _whole(msg, Tag.Price, required=ord_type == OrderType.LIMIT) or 0
        tif = _choice(msg, Tag.TimeInForce, _TIFS, default=TimeInForce.GTC)
        post_only = _POST_ONLY in (_once(msg, Tag.ExecInst) or "").split()
        cmd = NewOrder(self.account, clid, symbol, int(side), int(ord_type), price, qty, int(tif), post_only)
        self._queued.append(_Request(RequestKind.NEW, cmd, clid))

    def _target(self, msg) -> tuple[int, str]:
        """(order id, OrigClOrdID) named by a cancel or replace: OrderID (37) when it is one
        of ours, else the OrigClOrdID (41), resolved to an order id when this session knows
        the order."""
        orig = _once(msg, Tag.OrigClOrdID)
        oid_text = _once(msg, Tag.OrderID)
        if oid_text is not None and oid_text.isascii() and oid_text.isdigit() and len(oid_text) < 19:
            return int(oid_text), orig or ""
        if orig is None:
            raise FieldProblem(
                Tag.OrigClOrdID,
                SessionRejectReason.REQUIRED_TAG_MISSING,
                "Required tag missing: OrigClOrdID(41) (or an OrderID(37) issued by this exchange)",
            )
        return self.by_clid.get(orig, 0), orig

    def cancel(self, msg) -> None:
        clid = _required(msg, Tag.ClOrdID)
        self._check_account(msg, clid)
        side = _choice(msg, Tag.Side, _SIDES)
        order_id, orig = self._target(msg)
        cmd = Cancel(self.account, order_id, "" if order_id else orig)
        self._queued.append(_Request(RequestKind.CANCEL, cmd, clid, orig, int(side)))

    def replace(self, msg) -> None:
        clid = _required(msg, Tag.ClOrdID)
        self._check_account(msg, clid)
        side = _choice(msg, Tag.Side, _SIDES)
        order_id, orig = self._target(msg)
        qty = _whole(msg, Tag.OrderQty, required=False)
        price = _whole(msg, Tag.Price, required=False)
        # 0 means "unchanged" to the engine; a FIX 0 or below is an invalid value instead.
        new_qty = 0 if qty is None else (qty if qty > 0 else -1)
        new_price = 0 if price is None else (price if price > 0 else -1)
        known = self.orders.get(order_id)
        current = known.clid if known is not None else orig
        cmd = Amend(
            self.account,
            order_id,
            "" if order_id else orig,
            new_qty,
            new_price,
            "" if clid == current else clid,
        )
        self._queued.append(_Request(RequestKind.AMEND, cmd, clid, orig, int(side)))

    @property
    def pending(self) -> int:
        """Orders parsed from the current read and not yet handed to the exchange."""
        return len(self._queued)

    def refuse_last(self, text: str) -> Reply:
        """Answer the request just parsed with a refusal instead of submitting it (the node
        is overloaded): an ExecutionReport rejected for an order, an OrderCancelReject for a
        replace, both with `text`."""
        return self._refusal(self._queued.pop(), 0, R.UNKNOWN_COMMAND, text)

    def take_commands(self) -> list:
        taken, self._queued = self._queued, []
        for r in taken:
            self._inflight[id(r.cmd)] = r
        self._unsequenced.extend(taken)
        return [r.cmd for r in taken]

    def submit_done(self, commands: list, error: BaseException | None = None, text: str = "") -> list[Reply]:
        """The batch holding `commands` is settled (its events were routed, or it failed):
        answer any request that got no event at all (with `text` when given)."""
        inflight, by_seq = self._inflight, self._by_seq
        settled = [r for r in (inflight.pop(id(c), None) for c in commands) if r is not None]
        for r in settled:
            if by_seq.get(r.cmd.seq) is r:
                del by_seq[r.cmd.seq]
        if self._unsequenced:
            self._unsequenced = [r for r in self._unsequenced if id(r.cmd) in inflight]
        why = text or (f"not processed: {error}" if error is not None else "not processed by the exchange")
        return [self._refusal(r, 0, R.UNKNOWN_COMMAND, why) for r in settled if not r.answered]

    # -- outbound --------------------------------------------------------------------

    def _request_for(self, ev) -> _Request | None:
        seq = ev.seq
        if seq:
            r = self._by_seq.get(seq)
            if r is None and self._unsequenced:
                # The sequencer has numbered the requests submitted since the last look.
                waiting = []
                for u in self._unsequenced:
                    if u.cmd.seq:
                        self._by_seq[u.cmd.seq] = u
                    else:
                        waiting.append(u)
                self._unsequenced = waiting
                r = self._by_seq.get(seq)
            if r is not None:
                r.answered = True
            return r
        for r in self._inflight.values():  # a batch the journal refused: seq 0, match on content
            cmd = r.cmd
            if (
                not r.answered
                and ev.request == r.kind
                and ev.client_order_id == cmd.client_order_id
                and ev.order_id == getattr(cmd, "order_id", 0)
            ):
                r.answered = True
                return r
        return None

    def on_event(self, ev) -> list[Reply]:
        kind = type(ev)
        if kind is Trade:
            return self._trade(ev, self._request_for(ev))
        req = self._request_for(ev)
        if kind is OrderAccepted:
            return self._accepted(ev)
        if kind is OrderCancelled:
            return self._cancelled(ev, req)
        if kind is OrderAmended:
            return self._amended(ev, req)
        if kind is OrderDone:
            self._forget(ev.order_id)
            return []
        if kind is OrderRejected:
            if req is None:
                return []  # another session's request: it answers its own client
            return [self._refusal(req, ev.seq, ev.reason, _reason_text(ev.reason), ev.order_id)]
        return []

    def _exec_id(self, seq: int, what: str) -> str:
        if seq:
            return f"{seq}-{what}"
        self._counter += 1
        return f"0-{what}{self._salt}.{self._counter}"

    def _remember(self, order: _Order) -> _Order:
        self.orders[order.order_id] = order
        if order.clid:
            self.by_clid[order.clid] = order.order_id
        return order

    def _forget(self, order_id: int) -> None:
        order = self.orders.pop(order_id, None)
        if order is not None and self.by_clid.get(order.clid) == order_id:
            del self.by_clid[order.clid]

    def _known(self, order_id: int, include: Callable[[Any], bool]) -> _Order | None:
        """This session's state of an order, or one built from the order store with the
        fills that `include` admits (those before the event at hand)."""
        order = self.orders.get(order_id)
        if order is not None or self._lookup is None:
            return order
        view = self._lookup(order_id)
        if view is None or view.account != self.account:
            return None
        fills = [f for f in view.fills if include(f)]
        return self._remember(
            _Order(
                view.order_id,
                view.client_order_id,
                view.symbol,
                view.side,
                view.order_type,
                view.tif,
                view.price,
                view.qty,
                sum(f.qty for f in fills),
                sum(f.qty * f.price for f in fills),
                view.leaves,
            )
        )

    def _report(
        self,
        order: _Order,
        exec_id: str,
        exec_type: ExecType,
        status: OrdStatus,
        ts: int,
        *,
        clid: str | None = None,
        orig_clid: str = "",
        last: tuple[int, int] | None = None,
        commission: int | None = None,
        text: str = "",
        rej_reason: int | None = None,
    ) -> Reply:
        fields: list[tuple[int, object]] = [(Tag.OrderID, order.order_id or "NONE")]
        clid = order.clid if clid is None else clid
        if clid:
            fields.append((Tag.ClOrdID, _clean(clid)))
        if orig_clid:
            fields.append((Tag.OrigClOrdID, _clean(orig_clid)))
        fields += [
            (Tag.ExecID, exec_id),
            (Tag.ExecType, exec_type),
            (Tag.OrdStatus, status),
        ]
        if rej_reason is not None:
            fields.append((Tag.OrdRejReason, rej_reason))
        fields += [
            (Tag.Account, _clean(self.account)),
            (Tag.Symbol, _clean(order.symbol)),
            (Tag.Side, order.side),
            (Tag.OrderQty, order.qty),
            (Tag.OrdType, order.ord_type),
        ]
        if order.ord_type == OrderType.LIMIT and order.price > 0:
            fields.append((Tag.Price, order.price))
        fields.append((Tag.TimeInForce, order.tif))
        if last is not None:
            fields += [(Tag.LastPx, last[0]), (Tag.LastQty, last[1])]
        if commission is not None:  # a fill: its fee, 0 when none (docs/fix.md)
            fields += [(Tag.Commission, commission), (Tag.CommType, COMM_TYPE_ABSOLUTE)]
        fields += [
            (Tag.LeavesQty, order.leaves),
            (Tag.CumQty, order.cum_qty),
            (Tag.AvgPx, _avg_px(order.notional, order.cum_qty)),
            (Tag.TransactTime, utc_timestamp_ns(ts)),
        ]
        if text:
            fields.append((Tag.Text, _clean(text)))
        return MsgType.EXECUTION_REPORT, fields

    def _accepted(self, ev: OrderAccepted) -> list[Reply]:
        order = self._remember(
            _Order(
                ev.order_id,
                ev.client_order_id,
                ev.symbol,
                ev.side,
                ev.order_type,
                ev.tif,
                ev.price,
                ev.qty,
                leaves=ev.qty,
            )
        )
        return [
            self._report(order, self._exec_id(ev.seq, f"N{ev.order_id}"), ExecType.NEW, OrdStatus.NEW, ev.ts)
        ]

    def _trade(self, ev: Trade, _req: _Request | None) -> list[Reply]:
        replies = []
        for order_id, account, leaves, role, fee in (
            (ev.maker_order_id, ev.maker_account, ev.maker_leaves, "M", ev.maker_fee),
            (ev.taker_order_id, ev.taker_account, ev.taker_leaves, "T", ev.taker_fee),
        ):
            if account != self.account:
                continue
            order = self._known(order_id, lambda f, t=ev.trade_id: f.trade_id < t)
            if order is None:  # e.g. the order store was rebuilt without it: no history to report
                log.warning(
                    "FIX %s: no state for order %d, fill %d not reported", account, order_id, ev.trade_id
                )
                continue
            order.cum_qty += ev.qty
            order.notional += ev.qty * ev.price
            order.leaves = leaves
            exec_id = self._exec_id(ev.seq, f"F{ev.trade_id}{role}")
            replies.append(
                self._report(
                    order,
                    exec_id,
                    ExecType.TRADE,
                    order.status,
                    ev.ts,
                    last=(ev.price, ev.qty),
                    commission=fee,
                )
            )
        return replies

    def _cancelled(self, ev: OrderCancelled, req: _Request | None) -> list[Reply]:
        order = self._known(ev.order_id, lambda f, s=ev.seq: f.seq <= s)
        if order is None:
            if req is None or req.kind != RequestKind.CANCEL:
                return []
            # Our own request on an order nobody told us about (the order store starts
            # empty after a restart): answer from the event and the request. Only GTC limit
            # orders rest; the price and the average price of earlier fills are unknown.
            order = _Order(
                ev.order_id,
                req.orig_clid,
                ev.symbol,
                req.side,
                OrderType.LIMIT,
                TimeInForce.GTC,
                0,
                ev.filled_qty + ev.cancelled_qty,
            )
        order.leaves = 0
        order.cum_qty = ev.filled_qty
        clid, orig, text = None, "", ""
        if req is not None and req.kind == RequestKind.CANCEL:
            clid, orig = req.clid, order.clid
        if ev.reason != CancelReason.USER:
            text = cancel_code(ev.reason)
        self._forget(ev.order_id)
        exec_id = self._exec_id(ev.seq, f"C{ev.order_id}")
        return [
            self._report(
                order,
                exec_id,
                ExecType.CANCELED,
                OrdStatus.CANCELED,
                ev.ts,
                clid=clid,
                orig_clid=orig,
                text=text,
            )
        ]

    def _amended(self, ev: OrderAmended, req: _Request | None) -> list[Reply]:
        order = self._known(ev.order_id, lambda f, s=ev.seq: f.seq < s)
        if order is None:
            if req is None or req.kind != RequestKind.AMEND:
                return []
            order = _Order(
                ev.order_id,
                req.orig_clid,
                ev.symbol,
                req.side,
                OrderType.LIMIT,
                TimeInForce.GTC,
                ev.price,
                ev.qty,
                cum_qty=ev.qty - ev.leaves,
            )
        orig = order.clid
        if req is not None and req.kind == RequestKind.AMEND and req.orig_clid:
            orig = req.orig_clid
        if self.by_clid.get(order.clid) == order.order_id:
            del self.by_clid[order.clid]
        order.clid, order.price, order.qty, order.leaves = ev.client_order_id, ev.price, ev.qty, ev.leaves
        self._remember(order)
        exec_id = self._exec_id(ev.seq, f"R{ev.order_id}")
        return [self._report(order, exec_id, ExecType.REPLACED, order.status, ev.ts, orig_clid=orig)]

    def _refusal(self, req: _Request, seq: int, reason: int, text: str, order_id: int = 0) -> Reply:
        if req.kind == RequestKind.NEW:
            cmd = req.cmd
            order = _Order(0, req.clid, cmd.symbol, cmd.side, cmd.order_type, cmd.tif, cmd.price, cmd.qty)
            return self._report(
                order,
                self._exec_id(seq, "J"),
                ExecType.REJECTED,
                OrdStatus.REJECTED,
                cmd.ts or self._clock_ns(),
                text=text,
                rej_reason=_ORD_REJ.get(reason, OrdRejReason.OTHER),
            )
        target = order_id or getattr(req.cmd, "order_id", 0)
        fields: list[tuple[int, object]] = [
            (Tag.OrderID, target or "NONE"),
            (Tag.ClOrdID, _clean(req.clid)),
            (Tag.OrigClOrdID, _clean(req.orig_clid) or "NONE"),
            (Tag.OrdStatus, self._status_of(target)),
            (Tag.Account, _clean(self.account)),
            (
                Tag.CxlRejResponseTo,
                CxlRejResponseTo.CANCEL
                if req.kind == RequestKind.CANCEL
                else CxlRejResponseTo.CANCEL_REPLACE,
            ),
            (Tag.CxlRejReason, _CXL_REJ.get(reason, CxlRejReason.OTHER)),
            (Tag.Text, _clean(text)),
        ]
        return MsgType.ORDER_CANCEL_REJECT, fields

    def _status_of(self, order_id: int) -> OrdStatus:
        order = self.orders.get(order_id)
        if order is not None:
            return order.status
        view = self._lookup(order_id) if self._lookup is not None and order_id else None
        if view is None or view.account != self.account:
            return OrdStatus.REJECTED
        if view.status == FILLED:
            return OrdStatus.FILLED
        if view.status == CANCELLED:
            return OrdStatus.CANCELED
        return OrdStatus.PARTIALLY_FILLED if view.filled else OrdStatus.NEW
