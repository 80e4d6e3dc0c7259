"""What a leader-following client knows about each order it placed, by client order id.

Every order is *pending* from its first send until a definite answer: accepted (with its
order id), accepted before (a resend answered DUPLICATE_CLIENT_ORDER_ID: an earlier send
landed and its answer was lost), or refused (any other rejection, which is true: the
command is not in the journal). Answers that promise nothing about the order (the node is
not the leader, is shutting down or overloaded, the journal write failed, the outcome is
unknown) and lost connections leave it pending, to be resent with the same client order id;
the venue's client order id idempotency makes that safe, so nothing is placed twice.

One source of truth for "what does this answer mean" (`classify`), shared by the binary and
REST clients and the load generator, and the failover figures they report: orders resent,
duplicates resolved, the longest gap between two acknowledgements.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from engine.gateways.binary.protocol import GatewayRejectReason
from engine.reason_texts import reject_code


class Answer(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # a resend found the order placed by an earlier send
    REFUSED = "refused"  # definitive: the order is not on the venue
    RESEND = "resend"  # no promise either way: send it again (same client order id)
    ELSEWHERE = "elsewhere"  # this node is not the leader (or is going away): resend to the leader


DUPLICATE_CODE = "DUPLICATE_CLIENT_ORDER_ID"
# Answers that say nothing was done, or that nobody knows yet (OUTCOME_UNKNOWN): resend.
RESEND_CODES = frozenset({"OVERLOADED", "JOURNAL_WRITE_FAILED", "OUTCOME_UNKNOWN", "RATE_LIMITED"})
# Answers of a node that will not take orders: find the leader, then resend.
ELSEWHERE_CODES = frozenset({"NOT_LEADER", "SERVICE_UNAVAILABLE", "SHUTTING_DOWN"})


def reason_name(reason: int) -> str:
    """The name of a binary Rejected reason (gateway 6xx, else the engine's RejectReason), as
    REST and WebSocket spell their error codes."""
    if reason in GatewayRejectReason._value2member_map_:
        return GatewayRejectReason(reason).name
    return reject_code(reason)


def classify(code: str, resent: bool) -> Answer:
    """What a refusal with error code `code` means for an order (sent more than once when
    `resent`). A duplicate on a first send is a refusal (the id was used before this client)."""
    if code in ELSEWHERE_CODES:
        return Answer.ELSEWHERE
    if code in RESEND_CODES:
        return Answer.RESEND
    if code == DUPLICATE_CODE:
        return Answer.DUPLICATE if resent else Answer.REFUSED
    return Answer.REFUSED


@dataclass
class Entry:
    client_order_id: str
    request: object  # what to send again (a frame, a JSON body)
    sends: int = 0
    answer: Answer | None = None  # None while pending
    order_id: int = 0
    code: str = ""  # the refusal's code (refused or duplicate)


@dataclass
class OrderLedger:
    clock: Callable[[], float] = time.monotonic
    entries: dict[str, Entry] = field(default_factory=dict)
    pending: dict[str, Entry] = field(default_factory=dict)  # in first-send order
    resent: int = 0  # sends after the first
    duplicates: int = 0  # resends answered DUPLICATE_CLIENT_ORDER_ID (placed once, earlier)
    accepted: int = 0
    refused: int = 0
    max_ack_gap_s: float = 0.0  # longest time between two acknowledgements
    _last_ack: float = 0.0

    def add(self, client_order_id: str, request: object) -> Entry:
        if not client_order_id:
            raise ValueError("an order needs a client order id to be resent safely")
        if client_order_id in self.entries:
            raise ValueError(f"client order id {client_order_id!r} already placed by this client")
        entry = self.entries[client_order_id] = Entry(client_order_id, request)
        self.pending[client_order_id] = entry
        return entry

    def sent(self, entry: Entry) -> None:
        entry.sends += 1
        if entry.sends > 1:
            self.resent += 1

    def settle(self, client_order_id: str, answer: Answer, order_id: int = 0, code: str = "") -> Entry | None:
        """A definite answer (accepted, duplicate, refused) for a pending order; None when the
        id is not pending here (another session's order, or answered already)."""
        entry = self.pending.pop(client_order_id, None)
        if entry is None:
            return None
        entry.answer, entry.order_id, entry.code = answer, order_id, code
        if answer is Answer.REFUSED:
            self.refused += 1
        else:
            if answer is Answer.DUPLICATE:
                self.duplicates += 1
            else:
                self.accepted += 1
            now = self.clock()
            if self._last_ack:
                self.max_ack_gap_s = max(self.max_ack_gap_s, now - self._last_ack)
            self._last_ack = now
        return entry

    def figures(self) -> dict:
        return {
            "orders": len(self.entries),
            "acked": self.accepted + self.duplicates,
            "acked_first_answer": self.accepted,
            "duplicates_resolved": self.duplicates,
            "refused_definitively": self.refused,
            "resent": self.resent,
            "unresolved": len(self.pending),
            "max_ack_gap_ms": round(self.max_ack_gap_s * 1000, 1),
        }
