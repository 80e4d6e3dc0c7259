"""Commands: what a client asks of the core. The sequencer stamps `seq` and `ts` before a
command reaches the core; the core never reads a clock.

Commands are mutable only so the sequencer can stamp them in place without a copy. Field
*types* are enforced where commands are decoded from the wire (msgspec typed decoding);
the core validates *values* and answers bad ones with an OrderRejected event.
The tagged, array-like encoding is the journal's record layout: new fields go at the end
with a default, so older records still decode.
"""

from __future__ import annotations

import msgspec

from engine.core.domain import Asset, Instrument, RiskLimits, SelfTradePrevention, TimeInForce


class NewOrder(msgspec.Struct, tag="N", array_like=True, gc=False):
    account: str
    client_order_id: str
    symbol: str
    side: int  # Side
    order_type: int  # OrderType
    price: int  # price units; 0 for market orders
    qty: int
    tif: int = TimeInForce.GTC
    post_only: bool = False
    stp: int = SelfTradePrevention.CANCEL_NEWEST
    seq: int = 0
    ts: int = 0  # nanoseconds since the epoch, stamped by the sequencer
    # W3C trace id (32 hex) given by the gateway: journaled with the order, so its trace
    # can be found again after a restart or a failover. The core only carries it.
    trace_id: str = ""
    trace_parent: str = ""  # the caller's span id (16 hex) when it sent a traceparent


class Cancel(msgspec.Struct, tag="C", array_like=True, gc=False):
    """Cancel by exchange order id, or by client order id when order_id is 0."""

    account: str
    order_id: int = 0
    client_order_id: str = ""
    seq: int = 0
    ts: int = 0


class Amend(msgspec.Struct, tag="A", array_like=True, gc=False):
    """Change price and/or total quantity (0 = unchanged). Quantity down at the same price
    keeps time priority; a price change or quantity up loses it. `new_client_order_id`
    renames the order (FIX cancel/replace), "" keeps the current one."""

    account: str
    order_id: int = 0
    client_order_id: str = ""
    new_qty: int = 0
    new_price: int = 0
    new_client_order_id: str = ""
    seq: int = 0
    ts: int = 0


class CancelAll(msgspec.Struct, tag="X", array_like=True, gc=False):
    """Cancel every open order of the account, or only those in `symbol` when given."""

    account: str
    symbol: str = ""
    seq: int = 0
    ts: int = 0


class ListInstrument(msgspec.Struct, tag="I", array_like=True, gc=False):
    """Open a symbol for trading. Sequenced and journaled like any command, so a replay
    never depends on the configuration file of the day. Listing an identical instrument
    again is a no-op; a different spec for a listed symbol is refused."""

    instrument: Instrument
    seq: int = 0
    ts: int = 0


class SetRiskLimits(msgspec.Struct, tag="RL", array_like=True, gc=False):
    """Replace the limits of one scope (RiskScope) and target ("" for the venue, else a
    symbol or an account). All-zero limits remove the entry."""

    scope: int
    target: str
    limits: RiskLimits
    seq: int = 0
    ts: int = 0
    requested_by: str = ""  # who asked (the gateway fills it from the key): the audit trail


class SetKillSwitch(msgspec.Struct, tag="K", array_like=True, gc=False):
    """Engage or release a kill switch. Engaging refuses new orders and amends in its scope
    and, with `cancel_orders`, cancels the resting orders there (CancelReason.KILL_SWITCH)."""

    scope: int
    target: str
    engaged: bool
    reason: str = ""
    cancel_orders: bool = True
    seq: int = 0
    ts: int = 0
    requested_by: str = ""  # who asked (the gateway fills it from the key): the audit trail


class SetTradingHalt(msgspec.Struct, tag="H", array_like=True, gc=False):
    """Halt or resume trading in a symbol: new orders and amends are refused, cancels pass."""

    symbol: str
    halted: bool
    reason: str = ""
    seq: int = 0
    ts: int = 0
    requested_by: str = ""  # who asked (the gateway fills it from the key): the audit trail


class ListAsset(msgspec.Struct, tag="LA", array_like=True, gc=False):
    """Make an asset known to the ledger (engine/core/balances.py). Like ListInstrument:
    journaled, an identical listing again is a no-op, a different scale is refused."""

    asset: Asset
    seq: int = 0
    ts: int = 0


class Transfer(msgspec.Struct, tag="T", array_like=True, gc=False):
    """Money in or out of an account: a deposit or withdrawal (amount > 0) or an
    adjustment (signed, non-zero). Idempotent by `transfer_id`: a repeat answers with the
    original result. `requested_by` names who asked (the gateway fills it from the key);
    the sequencer's `ts` is when: together the audit record."""

    transfer_id: str
    account: str
    asset: str
    kind: int  # TransferKind
    amount: int
    requested_by: str = ""
    seq: int = 0
    ts: int = 0


class SetCreditChecks(msgspec.Struct, tag="CC", array_like=True, gc=False):
    """Turn the venue's credit checks on or off (journaled, so a replay sees the same), and
    name the account fees accrue to (required: a record without one was journaled before
    settlement and is replayed as the no-op it was then). Turning them on reserves
    for every resting order of an instrument with assets (cancelling those the account
    cannot cover); turning them off releases every reservation (engine/core/settlement.py)."""

    enabled: bool
    seq: int = 0
    ts: int = 0
    fee_account: str = ""  # "": a record from before settlement


RiskCommand = SetRiskLimits | SetKillSwitch | SetTradingHalt
AccountCommand = ListAsset | Transfer | SetCreditChecks
Command = (
    NewOrder
    | Cancel
    | Amend
    | CancelAll
    | ListInstrument
    | SetRiskLimits
    | SetKillSwitch
    | SetTradingHalt
    | ListAsset
    | Transfer
    | SetCreditChecks
)


# -- as replay reads them ------------------------------------------------------------------
#
# A replay builds no events, and the fields after `ts` of new orders and cancels (the trace
# ids) only ever go into events (`ts` is read by the core's throttles). Replay decodes journal
# records into these prefixes of `NewOrder` and `Cancel` (msgspec ignores the trailing
# items of an array-like struct), which saves building and freeing those values for most
# of a journal's commands. A prefix must stay exactly the leading fields of its command
# (tests/test_replay_silent.py checks it): a new field that changes state goes before
# nothing, it is appended, so it must be appended here too.


class ReplayNewOrder(msgspec.Struct, tag="N", array_like=True, gc=False):
    """A journaled `NewOrder` up to `ts`."""

    account: str
    client_order_id: str
    symbol: str
    side: int
    order_type: int
    price: int
    qty: int
    tif: int = TimeInForce.GTC
    post_only: bool = False
    stp: int = SelfTradePrevention.CANCEL_NEWEST
    seq: int = 0
    ts: int = 0  # the core's throttles read it (engine/core/throttles.py)

    def full(self) -> NewOrder:
        """The `NewOrder` for `MatchingEngine.apply` (trace ids left out)."""
        return NewOrder(*msgspec.structs.astuple(self))


class ReplayCancel(msgspec.Struct, tag="C", array_like=True, gc=False):
    """A journaled `Cancel` up to `ts`."""

    account: str
    order_id: int = 0
    client_order_id: str = ""
    seq: int = 0
    ts: int = 0

    def full(self) -> Cancel:
        return Cancel(*msgspec.structs.astuple(self))


ReplayCommand = (
    ReplayNewOrder
    | ReplayCancel
    | Amend
    | CancelAll
    | ListInstrument
    | SetRiskLimits
    | SetKillSwitch
    | SetTradingHalt
    | ListAsset
    | Transfer
    | SetCreditChecks
)
