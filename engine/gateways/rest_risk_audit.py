"""The audit trail of risk administration over REST (engine/core/risk_audit.py):

    GET /v1/admin/risk/audit?after=SEQ&limit=N   the admin key or an ops key

Every applied change of limits, kill switches and halts, oldest first: who asked
(`requested_by`: "admin" for the admin key, "automation:<alert>" for the runbook
automation), when (the sequencer's `ts`, ns), scope and target, and the old and new value.
Paginated by seq: pass the last record's seq (`next_after`) as `after` for the next page.
The records are engine state, so they survive a restart (snapshot and journal).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from engine.core.risk_audit import KILL_SWITCH, KINDS, LIMITS, AuditRecord, page
from engine.gateways.http_answers import ok
from engine.gateways.http_auth import admin_view
from engine.gateways.http_context import CTX
from engine.gateways.http_requests import int_query
from engine.risk_admin import SCOPE_NAMES

MAX_PAGE = 1_000
ADMIN = "admin"  # requested_by of a change made with the admin key (there is one)


def record_json(r: AuditRecord) -> dict[str, Any]:
    old: dict[str, Any]
    new: dict[str, Any]
    if r.kind == LIMITS:
        old, new = msgspec.structs.asdict(r.old_limits), msgspec.structs.asdict(r.new_limits)
    else:
        flag = "engaged" if r.kind == KILL_SWITCH else "halted"
        old = {flag: r.old_on, "reason": r.old_reason}
        new = {flag: r.new_on, "reason": r.new_reason}
    return {
        "seq": r.seq,
        "ts": r.ts,
        "requested_by": r.requested_by,
        "kind": KINDS[r.kind],
        "scope": SCOPE_NAMES[r.scope],
        "target": r.target,
        "old": old,
        "new": new,
    }


async def get_risk_audit(request: web.Request) -> web.Response:
    admin_view(request)
    after = int_query(request, "after", 0, 0, 2**63 - 1)
    limit = int_query(request, "limit", 100, 1, MAX_PAGE)
    records = page(request.app[CTX].engine.risk.audit, after, limit)
    return ok(
        {
            "records": [record_json(r) for r in records],
            "next_after": records[-1].seq if len(records) == limit else None,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/risk/audit", get_risk_audit)
