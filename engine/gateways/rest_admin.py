"""REST admin endpoints under /v1/admin: stats, snapshot, runbook automation, cluster,
fault injection (the risk controls are in http_controls.py).
"""

from __future__ import annotations

import errno
import logging

import msgspec
from aiohttp import web

from engine.automation import WebhookPayload
from engine.bench.stats import percentile_us
from engine.core.state import state_hash
from engine.gateways.http_answers import error, ok
from engine.gateways.http_auth import admin_action, admin_view
from engine.gateways.http_context import CTX
from engine.gateways.http_requests import decode_body

log = logging.getLogger("loom.http")


async def admin_stats(request: web.Request) -> web.Response:
    """Operator figures until the metrics endpoint exists: journal and batching."""
    ctx = request.app[CTX]
    admin_view(request)
    node = ctx.service.node
    fsyncs = sorted(node.journal.fsync_ns)
    return ok(
        {
            "seq": node.engine.last_seq,
            "data_dir": str(node.config.data_dir),
            "batches": ctx.service.batches,
            "commands": ctx.service.commands,
            "journal_bytes": node.journal.size_bytes,
            "fsyncs_sampled": len(fsyncs),
            "fsync_p50_us": percentile_us(fsyncs, 50),
            "fsync_p99_us": percentile_us(fsyncs, 99),
            "fsync_max_us": round(fsyncs[-1] / 1000, 1) if fsyncs else 0.0,
            "rejected_batches": node.rejected_batches,
            "rate_limited": ctx.rate_limited,
        }
    )


async def admin_snapshot(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    admin_action(request)
    if ctx.take_snapshot is None:
        return error(501, "NOT_AVAILABLE", "snapshots are not configured")
    try:
        written = await ctx.take_snapshot()  # written by a child: awaited, the loop goes on
    except OSError as exc:  # counted and logged by the node; the previous snapshot stands
        return error(500, "SNAPSHOT_FAILED", str(exc))
    return ok(
        {
            "seq": written.seq,
            "path": str(written.path),
            "bytes": written.size,
            "state_hash": written.state_hash,
            "seconds": round(written.duration_s, 4),
        }
    )


async def admin_automation(request: web.Request) -> web.Response:
    """Alertmanager's webhook: runs the runbook actions its firing alerts name."""
    automation = request.app[CTX].automation
    if automation is None:
        return error(501, "NOT_AVAILABLE", "runbook automation is not configured")
    if not automation.authorized(request.headers.get("Authorization")):
        return error(401, "UNAUTHENTICATED", "Authorization: Bearer <automation token> is required")
    payload = await decode_body(request, WebhookPayload)
    if payload.version != "4":
        return error(400, "INVALID_REQUEST", f"webhook payload version {payload.version!r}; expected '4'")
    return ok(await automation.handle(payload))


async def admin_automation_audit(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    admin_view(request)
    if ctx.automation is None:
        return error(501, "NOT_AVAILABLE", "runbook automation is not configured")
    return ok({"records": ctx.automation.audit_records()})


async def admin_cluster(request: web.Request) -> web.Response:
    """This node's place in the cluster: role, leader, epoch, lag (`?verify=1` adds the
    state hash, computed now)."""
    ctx = request.app[CTX]
    admin_view(request)
    if ctx.cluster is None:
        return ok({"role": "standalone", "applied_seq": ctx.engine.last_seq})
    status = ctx.cluster.status()
    if request.query.get("verify") == "1":
        status["state_hash"] = state_hash(ctx.engine)
    return ok(status)


async def admin_cluster_step_down(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    admin_action(request)
    if ctx.cluster is None:
        return error(409, "NOT_CLUSTERED", "this node runs standalone: there is no lease to release")
    return ok(await ctx.cluster.step_down())


class FaultsRequest(msgspec.Struct, forbid_unknown_fields=True):
    journal_write_errors: bool


async def admin_faults(request: web.Request) -> web.Response:
    """Fault injection for drills and tests: every journal write fails (EIO) while on."""
    ctx = request.app[CTX]
    admin_action(request)
    req = await decode_body(request, FaultsRequest)
    ctx.service.node.journal.fail_writes(errno.EIO if req.journal_write_errors else None)
    log.warning("drill: journal write errors %s", "injected" if req.journal_write_errors else "cleared")
    return ok({"journal_write_errors": req.journal_write_errors})


# -- WebSocket ------------------------------------------------------------------------------
