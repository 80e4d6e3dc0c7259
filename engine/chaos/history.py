"""The client-side history of a chaos run and its checker.

Every order a client sends is an operation: invoked, then completed as

    ok       acknowledged: the order is placed, with this order id
    failed   a definitive refusal: the order is known NOT to be placed
    unknown  no definitive answer (timeout, connection lost, OUTCOME_UNKNOWN, a 5xx that
             promises nothing): the order may or may not be placed

and after the run the history is checked against the final journal, replayed through the
core: an ok order is there exactly once with its order id, a failed one is absent, an
unknown one is resolved (present or absent; both are allowed). A contradiction is an
answer the journal proves false; unknowns never are.

Which answer means what is decided in one table, ANSWERS, so the claim under test is
easy to see and to change.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from engine.core.commands import NewOrder
from engine.core.events import OrderAccepted, OrderRejected
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.reason_texts import reject_code

OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"

# Answers without an HTTP status (status 0), by what the transport said.
CONNECT_FAILED = "CONNECT_FAILED"  # no connection was made: the request never left
TIMEOUT = "TIMEOUT"  # sent, no answer in time
CONNECTION_LOST = "CONNECTION_LOST"  # sent, the connection broke before the answer

# (HTTP status, error code) -> outcome, for REST answers to POST /v1/orders. Code "*": any
# code with that status. Looked up exactly first, then (status, "*"), then by status class.
ANSWERS: dict[tuple[int, str], str] = {
    (0, CONNECT_FAILED): FAILED,
    (0, TIMEOUT): UNKNOWN,
    (0, CONNECTION_LOST): UNKNOWN,
    (201, "*"): OK,  # accepted and durable
    # Refused before sequencing: never journaled.
    (503, "OVERLOADED"): FAILED,  # admission control
    (503, "NOT_LEADER"): FAILED,  # a standby does not sequence
    (503, "SHUTTING_DOWN"): FAILED,  # draining: refused before the commit queue
    # "the order could not be made durable; nothing was done". The claim under test: in
    # cluster mode a PubAck timeout was answered so while the batch could still land.
    (503, "JOURNAL_WRITE_FAILED"): FAILED,
    (504, "OUTCOME_UNKNOWN"): UNKNOWN,  # the node could not find out: look it up
    (500, "*"): UNKNOWN,  # the commit loop broke mid-batch: nothing is promised
}
# Any other status: 2xx is an acceptance; 4xx a refusal (a client error found before any
# work, or the core's RejectReason: journaled as a command, never as an order); any other
# 5xx promises nothing.
BY_CLASS = {2: OK, 4: FAILED, 5: UNKNOWN}


def classify(status: int, code: str = "") -> str:
    """The outcome of a REST answer (status, error code), or of none (status 0, the
    transport's code)."""
    for key in ((status, code), (status, "*")):
        if key in ANSWERS:
            return ANSWERS[key]
    return BY_CLASS.get(status // 100, UNKNOWN)


@dataclass
class Op:
    """One client operation (a new order) and its answer."""

    index: int
    account: str
    client_order_id: str
    node: str  # where it was sent
    invoked_at: float  # the client's monotonic clock
    outcome: str = ""  # "" while pending
    completed_at: float = 0.0
    order_id: int = 0  # ok: the acknowledged order id
    answer: str = ""  # what came back: "201", "503 JOURNAL_WRITE_FAILED", "timeout", ...
    kind: str = "new"

    def describe(self) -> str:
        return f"new order {self.account}/{self.client_order_id} -> {self.answer} ({self.outcome})"


@dataclass
class History:
    """The operations of a run, in invocation order. Also records when each fault ran, so
    a contradiction can name the faults its operation overlapped."""

    ops: list[Op] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)  # {"fault", "target", "start", "end"}
    ack_times: list[float] = field(default_factory=list)  # when each ok arrived, in order

    def invoke(self, account: str, client_order_id: str, node: str, at: float) -> Op:
        op = Op(len(self.ops), account, client_order_id, node, at)
        self.ops.append(op)
        return op

    def complete(self, op: Op, outcome: str, answer: str, at: float, order_id: int = 0) -> None:
        op.outcome, op.answer, op.completed_at, op.order_id = outcome, answer, at, order_id
        if outcome == OK:
            self.ack_times.append(at)

    def close_pending(self, at: float) -> None:
        """Operations that never completed (the client stopped waiting) are unknown."""
        for op in self.ops:
            if not op.outcome:
                self.complete(op, UNKNOWN, "never answered", at)

    def acked_since(self, t: float) -> int:
        """How many acknowledgements arrived after `t` (completion times only grow)."""
        return len(self.ack_times) - bisect.bisect_right(self.ack_times, t)

    def faults_during(self, op: Op) -> list[str]:
        end = op.completed_at or float("inf")
        return [
            f"{f['fault']} {f['target']}".strip()
            for f in self.faults
            if f["start"] <= end and (f.get("end") or float("inf")) >= op.invoked_at
        ]


@dataclass(frozen=True)
class Placement:
    """One journaled NewOrder, as the core decided it on replay."""

    seq: int
    order_id: int  # 0: the core rejected it (journaled as a command, not placed)
    reason: str = ""  # the RejectReason name when rejected


class JournalView:
    """What the journal says about each (account, client order id): every NewOrder command
    carrying it, replayed through the core to learn which were accepted (and as which
    order id) and which the core rejected."""

    def __init__(self) -> None:
        self.placements: dict[tuple[str, str], list[Placement]] = {}
        self.engine = MatchingEngine([])
        self.commands = 0

    @classmethod
    def replay(cls, commands: Iterable) -> JournalView:
        view = cls()
        for cmd in commands:
            view.apply(cmd)
        return view

    def apply(self, cmd) -> None:
        events = self.engine.apply(cmd)
        self.commands += 1
        if type(cmd) is not NewOrder:
            return
        first = events[0] if events else None
        if type(first) is OrderAccepted:
            placement = Placement(cmd.seq, first.order_id)
        else:
            reason = first.reason if type(first) is OrderRejected else 0
            placement = Placement(cmd.seq, 0, reject_code(reason))
        self.placements.setdefault((cmd.account, cmd.client_order_id), []).append(placement)

    def accepted(self, account: str, client_order_id: str) -> list[Placement]:
        return [p for p in self.placements.get((account, client_order_id), ()) if p.order_id]

    def state_hash(self) -> str:
        return state_hash(self.engine)


@dataclass
class Contradiction:
    problem: str  # "acked order missing", "refused order present", "duplicate", ...
    op: dict | None  # the operation (None: found in the journal alone)
    journal: str  # what the journal says
    faults: list[str] = field(default_factory=list)  # the faults the operation overlapped

    def __str__(self) -> str:
        what = f"{self.op['kind']} {self.op['account']}/{self.op['client_order_id']} " if self.op else ""
        answer = f"answered {self.op['answer']!r}: " if self.op else ""
        during = f" [during {', '.join(self.faults)}]" if self.faults else ""
        return f"{self.problem}: {what}{answer}{self.journal}{during}"


@dataclass
class CheckResult:
    counts: dict  # ops, ok, failed, unknown (resolved present / absent), journal_orders, ...
    answers: dict  # how often each answer came back
    contradictions: list[Contradiction]

    @property
    def valid(self) -> bool:
        return not self.contradictions

    def to_json(self) -> dict:
        return {
            "counts": self.counts,
            "answers": self.answers,
            "contradictions": [{**asdict(c), "text": str(c)} for c in self.contradictions],
        }


def _journal_says(placements: list[Placement]) -> str:
    if not placements:
        return "the journal holds no such order"
    said = [
        f"order {p.order_id} at seq {p.seq}"
        if p.order_id
        else f"a rejected command at seq {p.seq} ({p.reason})"
        for p in placements
    ]
    return "the journal holds " + ", ".join(said)


def check(history: History, view: JournalView) -> CheckResult:
    """Compare every operation with the journal; contradictions are answers it proves false.
    Each operation must use a client order id of its own (a resend would make an earlier
    refusal of the same id look contradicted): a history that reuses one is refused."""
    found: list[Contradiction] = []
    counts = Counter(ops=len(history.ops))
    answers = Counter()
    invoked: set[tuple[str, str]] = set()

    def contradiction(problem: str, op: Op | None, journal: str) -> None:
        faults = history.faults_during(op) if op is not None else []
        found.append(Contradiction(problem, asdict(op) if op is not None else None, journal, faults))

    for op in history.ops:
        key = (op.account, op.client_order_id)
        if key in invoked:
            raise ValueError(
                f"client order id {op.client_order_id!r} of {op.account} sent twice in the history"
            )
        invoked.add(key)
        counts[op.outcome or UNKNOWN] += 1
        answers[op.answer or "never answered"] += 1
        placed = view.accepted(*key)
        says = _journal_says(view.placements.get(key, []))
        if op.outcome == OK:
            if not placed:
                contradiction("acked order missing", op, says)
            elif len(placed) == 1 and placed[0].order_id != op.order_id:
                contradiction(f"acked as order {op.order_id}, journaled as another", op, says)
        elif op.outcome == FAILED:
            if placed:
                contradiction("refused order present", op, says)
        else:
            counts["unknown_present" if placed else "unknown_absent"] += 1
        if len(placed) > 1:
            contradiction("placed more than once", op, says)
    # The journal alone: an id placed twice, or an order no client of the history asked for.
    accounts = {op.account for op in history.ops}
    for key, placements in view.placements.items():
        placed = [p for p in placements if p.order_id]
        counts["journal_orders"] += len(placed)
        if len(placements) > 1:  # not wrong by itself (a resend), but worth seeing
            counts["journaled_more_than_once"] += 1
        if key in invoked or not placed or key[0] not in accounts:
            continue
        problem = "placed more than once" if len(placed) > 1 else "placed but never sent"
        contradiction(f"{problem} ({key[0]}/{key[1]})", None, _journal_says(placements))
    for name in (
        OK,
        FAILED,
        UNKNOWN,
        "unknown_present",
        "unknown_absent",
        "journal_orders",
        "journaled_more_than_once",
    ):
        counts.setdefault(name, 0)
    return CheckResult(dict(counts), dict(answers.most_common()), found)
