"""Operating the risk controls of a running node: the views and the journaled commands
behind the REST admin endpoints, and the runbook automation's kill-switch actions.

Every change goes through the service (sequenced, journaled, applied by the core), never
around it: a replay must reproduce each limit and kill switch exactly.
"""

from __future__ import annotations

import msgspec

from engine.core.commands import SetKillSwitch
from engine.core.domain import RiskScope
from engine.core.events import KillSwitchChanged, OrderRejected
from engine.reason_texts import reject_code

SCOPES = {s.name.lower(): int(s) for s in RiskScope}
SCOPE_NAMES = {v: k for k, v in SCOPES.items()}
# Where a kill-switch action finds its target when the alert has no `risk_target` label.
_TARGET_LABEL = {"venue": None, "symbol": "symbol", "account": "account"}


def risk_view(engine) -> dict:
    """Limits, kill switches and halts of the engine, in a stable order."""
    risk = engine.risk
    return {
        "limits": [
            {"scope": SCOPE_NAMES[s], "target": t, "limits": msgspec.structs.asdict(lim)}
            for (s, t), lim in sorted(risk.limits.items())
        ],
        "kill_switches": [
            {"scope": SCOPE_NAMES[s], "target": t, "reason": why}
            for (s, t), why in sorted(risk.kill_switches.items())
        ],
        "halts": [{"symbol": sym, "reason": why} for sym, why in sorted(risk.halts.items())],
        "last_prices": dict(sorted(engine.last_price.items())),
    }


class KillSwitchActions:
    """`engage-kill-switch` and `release-kill-switch` for the runbook automation. The scope
    comes from the alert's `risk_scope` label (venue, symbol, account); the target from
    `risk_target`, else from the alert's `symbol` / `account` label. An account-scope alert
    with neither but a surveillance `kind` (LoomAnomalyDetected: metrics carry no account
    names) engages the switch of every account surveillance flags for that kind now.
    Idempotent: engaging an engaged switch (or releasing a released one) journals nothing and
    says so."""

    def __init__(self, service, surveillance=None) -> None:
        self.service = service
        self.surveillance = surveillance  # engine.surveillance_desk.SurveillanceDesk

    def register(self, automation) -> None:
        automation.register("engage-kill-switch", self.engage)
        automation.register("release-kill-switch", self.release)

    async def engage(self, labels: dict[str, str]) -> str:
        flagged = self._flagged(labels)
        if flagged is None:
            return await self._set(labels, True)
        if not flagged:
            return f"no account is flagged for {labels['kind']} now; nothing journaled"
        done = [await self._set({**labels, "risk_target": account}, True) for account in flagged]
        return "; ".join(done)

    def _flagged(self, labels: dict[str, str]) -> list[str] | None:
        """The accounts surveillance flags for the alert's `kind`, when the alert names none."""
        if labels.get("risk_scope") != "account" or labels.get("risk_target") or labels.get("account"):
            return None
        if self.surveillance is None or not labels.get("kind"):
            return None
        return self.surveillance.flagged(labels["kind"])  # as last published: no clock here

    async def release(self, labels: dict[str, str]) -> str:
        return await self._set(labels, False)

    async def _set(self, labels: dict[str, str], engaged: bool) -> str:
        scope_name, target = scope_and_target(labels)
        scope = SCOPES[scope_name]
        what = f"{scope_name} kill switch" + (f" {target!r}" if target else "")
        if ((scope, target) in self.service.node.engine.risk.kill_switches) == engaged:
            return f"{what} already {'engaged' if engaged else 'released'}; nothing journaled"
        reason = f"automation: {labels.get('alertname', 'alert')}"
        by = f"automation:{labels.get('alertname', 'alert')}"  # the audit trail's who
        events = await self.service.submit_one(SetKillSwitch(scope, target, engaged, reason, requested_by=by))
        first = events[0]
        if type(first) is OrderRejected:
            raise RuntimeError(f"refused by the exchange: {reject_code(first.reason)}")
        assert type(first) is KillSwitchChanged
        if engaged:
            return f"{what} engaged at seq {first.seq}; {first.cancelled} resting orders cancelled"
        return f"{what} released at seq {first.seq}"


def scope_and_target(labels: dict[str, str]) -> tuple[str, str]:
    scope = labels.get("risk_scope", "")
    if scope not in _TARGET_LABEL:
        raise ValueError(f"label risk_scope must be one of {sorted(_TARGET_LABEL)}, not {scope!r}")
    fallback = _TARGET_LABEL[scope]
    target = labels.get("risk_target") or (labels.get(fallback, "") if fallback else "")
    if scope != "venue" and not target:
        raise ValueError(f"a {scope} kill switch needs a risk_target or {fallback} label")
    if scope == "venue" and target:
        raise ValueError("a venue kill switch takes no target")
    return scope, target
