"""Runbook automation: Alertmanager's webhook drives remediation actions.

Alertmanager posts its webhook payload (version 4) to POST /v1/admin/automation. Every
FIRING alert carrying an `automation` label names an action (alerts/rules.py sets it, e.g.
LoomSnapshotTooOld has automation=take-snapshot). An action runs once per alert instance,
keyed by (fingerprint, startsAt): Alertmanager repeats a notification on every group
change and every repeat_interval, and a repeat must not repeat the action. A failed
action is not remembered as done, so the next notification of the same alert retries it.
Resolved alerts are ignored. Every decision is audited (a bounded in-memory list, also
logged) and counted in loom_automation_actions_total{action, outcome}.

An action gets the alert's labels (e.g. the kill-switch actions read their scope and target
from them) and returns a description of what it did, directly or as an awaitable (actions
that journal a command wait for it to be durable).
"""

from __future__ import annotations

import hmac
import inspect
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import msgspec

log = logging.getLogger("loom.automation")

DONE = "done"
DUPLICATE = "duplicate"
FAILED = "failed"
UNKNOWN_ACTION = "unknown_action"
OUTCOMES = (DONE, DUPLICATE, FAILED, UNKNOWN_ACTION)
# Action names come from alert labels; the metric labels only known ones (bounded cardinality).
UNKNOWN_ACTION_LABEL = "unknown"
MAX_AUDIT = 1000
MAX_REMEMBERED = 10_000
Action = Callable[[dict[str, str]], "str | Awaitable[str]"]


class WebhookAlert(msgspec.Struct):
    """One alert of the webhook payload (the fields used; the others are ignored)."""

    status: str
    labels: dict[str, str]
    fingerprint: str
    startsAt: str  # Alertmanager's field name


class WebhookPayload(msgspec.Struct):
    version: str
    alerts: list[WebhookAlert]


class AuditRecord(msgspec.Struct):
    time: float  # Unix seconds
    alertname: str
    action: str
    fingerprint: str
    starts_at: str
    outcome: str
    detail: str = ""


class RunbookAutomation:
    def __init__(
        self,
        take_snapshot: Callable[[], object] | None,
        token: str | None,
        clock: Callable[[], float] = time.time,
        metrics=None,  # telemetry.metrics.ExchangeMetrics
        max_audit: int = MAX_AUDIT,
        actions: dict[str, Callable[[], str]] | None = None,  # more, by name (cluster hooks)
    ) -> None:
        self.token = token or None
        self.clock = clock
        self.metrics = metrics
        self.actions: dict[str, Action] = {}
        self.audit: deque[AuditRecord] = deque(maxlen=max_audit)
        self._done: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._running: set[tuple[str, str]] = set()  # awaiting: a concurrent repeat is a duplicate
        self._series(UNKNOWN_ACTION_LABEL)
        if take_snapshot is not None:
            self.register("take-snapshot", lambda _labels: _snapshot_action(take_snapshot))
        for name, hook in (actions or {}).items():  # hooks that need no alert labels (cluster)
            self.register(name, lambda _labels, hook=hook: hook())

    def register(self, name: str, action: Action) -> None:
        self.actions[name] = action
        self._series(name)

    def _series(self, action: str) -> None:
        if self.metrics is not None:  # every series exists (at 0) from the start
            for outcome in OUTCOMES:
                if (action == UNKNOWN_ACTION_LABEL) == (outcome == UNKNOWN_ACTION):
                    self.metrics.child("loom_automation_actions", action, outcome)

    def authorized(self, authorization: str | None) -> bool:
        """True for an `Authorization: Bearer <token>` header naming the token."""
        if self.token is None or not authorization or not authorization.startswith("Bearer "):
            return False
        try:
            return hmac.compare_digest(authorization[7:].encode(), self.token.encode())
        except UnicodeEncodeError:
            return False

    async def handle(self, payload: WebhookPayload) -> dict:
        """Runs the actions the payload's firing alerts ask for; returns a summary."""
        summary = {outcome: 0 for outcome in OUTCOMES}
        summary["ignored"] = 0
        records = []
        for alert in payload.alerts:
            action = alert.labels.get("automation")
            if alert.status != "firing" or not action:
                summary["ignored"] += 1
                continue
            record = await self._run(alert, action)
            summary[record.outcome] += 1
            records.append(msgspec.to_builtins(record))
        return {"alerts": len(payload.alerts), **summary, "records": records}

    async def _run(self, alert: WebhookAlert, action: str) -> AuditRecord:
        key = (alert.fingerprint, alert.startsAt)
        run = self.actions.get(action)
        detail = ""
        if run is None:
            outcome, detail = UNKNOWN_ACTION, f"no such action; known: {sorted(self.actions)}"
        elif key in self._done or key in self._running:
            outcome, detail = DUPLICATE, "already done for this alert"
        else:
            self._running.add(key)
            try:
                detail = run(alert.labels)
                if inspect.isawaitable(detail):
                    detail = await detail
            except Exception as exc:
                log.exception("automation %s for %s failed", action, alert.labels.get("alertname"))
                outcome, detail = FAILED, f"{type(exc).__name__}: {exc}"
            else:
                outcome = DONE
                self._done[key] = self.clock()
                while len(self._done) > MAX_REMEMBERED:
                    self._done.popitem(last=False)
            finally:
                self._running.discard(key)
        return self._record(alert, action, outcome, detail)

    def _record(self, alert: WebhookAlert, action: str, outcome: str, detail: str) -> AuditRecord:
        record = AuditRecord(
            self.clock(),
            alert.labels.get("alertname", ""),
            action,
            alert.fingerprint,
            alert.startsAt,
            outcome,
            detail,
        )
        self.audit.append(record)
        level = logging.INFO if outcome in (DONE, DUPLICATE) else logging.WARNING
        log.log(
            level,
            "automation %s for %s (fingerprint %s, since %s): %s %s",
            action,
            record.alertname,
            record.fingerprint,
            record.starts_at,
            outcome,
            detail,
        )
        if self.metrics is not None:
            label = action if action in self.actions else UNKNOWN_ACTION_LABEL
            self.metrics.child("loom_automation_actions", label, outcome).inc()
        return record

    def audit_records(self) -> list[dict]:
        return [msgspec.to_builtins(r) for r in self.audit]


async def _snapshot_action(take_snapshot: Callable[[], object]) -> str:
    written = take_snapshot()
    if inspect.isawaitable(written):  # a node's take_snapshot_async: the child writes it
        written = await written
    return _describe_snapshot(written)


def _describe_snapshot(written) -> str:
    seq = getattr(written, "seq", None)
    return f"snapshot at seq {seq}" if seq is not None else "snapshot taken"
