"""`loom stack drill`: inject incidents into a running stack and count the pages.

Each incident waits for a quiet stack (no paging alert, severity=critical, firing or pending
in Prometheus: tickets may linger, e.g. a slow burn over 6 h, but never page), injects its
fault with the demo flow running, waits for the first page (a `firing` notification to the
pager receiver), recovers, and waits until Prometheus is quiet again and every paged group
has had its `resolved` notification. Only then are the
pages counted: nothing can still be on its way (an alert resolved before its group's first
notification is never sent). Incidents:

  kill            SIGKILL the node (in a cluster, the leader), start it again after the page
  journal-errors  every journal write fails (POST /v1/admin/faults), cleared after the page
  disk-full       a filler file fills the node's data disk (`up --data-disk`), removed after the page
"""

from __future__ import annotations

import errno
import json
import os
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.stack import layout, nodes
from engine.stack.layout import StackState
from engine.stack.pager_sink import read_pages
from engine.stack.procs import StackError, get_json, http_ok, kill_group, wait_until

INCIDENTS = ("kill", "journal-errors", "disk-full")
PAGER = "pager"  # the receiver that pages a person (alerts/alertmanager.yml)
PAGING = "critical"  # the severity alerts/alertmanager.yml routes to the pager
ALWAYS_FIRING = frozenset({"Watchdog"})  # the dead man's switch: firing is its healthy state
FILLER = "drill-filler"


@dataclass
class IncidentResult:
    incident: str
    pages: int = 0  # firing notifications to the pager
    page_alertnames: list[str] = field(default_factory=list)
    resolved: int = 0  # resolved notifications to the pager
    to_page_s: float | None = None  # fault injected -> first page received
    to_resolved_s: float | None = None  # recovered -> last resolved notification received
    skipped: str = ""
    error: str = ""


def run_drill(
    state: StackState,
    incidents: list[str],
    page_timeout: float,
    resolve_timeout: float,
    quiet_timeout: float = 300.0,
) -> list[IncidentResult]:
    if not state.options.get("demo"):
        raise StackError("the drill needs traffic: start the stack with `loom stack up --demo`")
    return [run_incident(state, kind, page_timeout, resolve_timeout, quiet_timeout) for kind in incidents]


def run_incident(
    state: StackState, kind: str, page_timeout: float, resolve_timeout: float, quiet_timeout: float
) -> IncidentResult:
    result = IncidentResult(kind)
    if kind == "disk-full" and not state.mounts:
        result.skipped = "needs a data disk small enough to fill: `loom stack up --data-disk 64M` (root)"
        return result
    prom = state.component("prometheus").url
    pages = Path(state.pages)
    try:
        wait_until("no paging alert", lambda: not active_alerts(prom), quiet_timeout, interval=0.5)
    except StackError:
        result.error = (
            f"not run: paging alerts still active after {quiet_timeout:g} s: {sorted(active_alerts(prom))}"
        )
        return result
    mark = len(read_pages(pages))
    injected = time.time()
    undo = INJECT[kind](state)
    try:
        first = wait_until(
            f"a page after {kind}", lambda: _pager(pages, mark, "firing"), page_timeout, interval=0.1
        )
        result.to_page_s = round(first[0]["time"] - injected, 1)
    except StackError:
        result.error = f"no page within {page_timeout:g} s of the fault"
    finally:
        undo()
    recovered = time.time()
    try:
        last = wait_until(
            f"the all-clear after {kind}",
            lambda: _all_clear(prom, pages, mark),
            resolve_timeout,
            interval=0.2,
        )
        result.to_resolved_s = round(last["time"] - recovered, 1) if last is not True else None
    except StackError:
        result.error = (result.error + "; " if result.error else "") + (
            f"no all-clear within {resolve_timeout:g} s of recovery (still active: "
            f"{sorted(active_alerts(prom))})"
        )
    notes = [p for p in read_pages(pages)[mark:] if _is_page(p)]
    firing = [p for p in notes if p["status"] == "firing"]
    result.pages = len(firing)
    result.page_alertnames = sorted({n for p in firing for n in p["alertnames"]})
    result.resolved = sum(p["status"] == "resolved" for p in notes)
    return result


def _is_page(note: dict) -> bool:
    return note["receiver"] == PAGER and not set(note["alertnames"]) <= ALWAYS_FIRING


def _pager(pages: Path, mark: int, status: str) -> list[dict]:
    return [p for p in read_pages(pages)[mark:] if _is_page(p) and p["status"] == status]


def _all_clear(prom: str, pages: Path, mark: int):
    """Prometheus quiet and each paged group's latest notification resolved: the last
    resolved notification (True when nothing paged)."""
    if active_alerts(prom):
        return None
    latest: dict[str, dict] = {}
    for note in read_pages(pages)[mark:]:
        if _is_page(note):
            latest[note["group_key"]] = note
    if any(n["status"] != "resolved" for n in latest.values()):
        return None
    return max(latest.values(), key=lambda n: n["time"]) if latest else True


def active_alerts(prom: str) -> set[str]:
    """Names of the paging alerts Prometheus has firing or pending (the always-firing
    Watchdog aside)."""
    alerts = get_json(prom + "/api/v1/alerts")["data"]["alerts"]
    paging = {a["labels"]["alertname"] for a in alerts if a["labels"].get("severity") == PAGING}
    return paging - ALWAYS_FIRING


# -- the faults: each injects and returns its undo ----------------------------------------------


def _leader(state: StackState):
    nodes_ = state.named("exchange")
    return next((n for n in nodes_ if http_ok(n.url + "/readyz")), nodes_[0])


def _kill(state: StackState):
    node = _leader(state)
    kill_group(node.proc)

    def restart() -> None:
        nodes.start(node)
        nodes.wait_ready(state.named("exchange"))
        layout.save(state)

    return restart


def _journal_errors(state: StackState):
    node = _leader(state)
    _faults(state, node.url, True)
    return lambda: _faults(state, node.url, False)


def _faults(state: StackState, base: str, on: bool) -> None:
    req = urllib.request.Request(
        base + "/v1/admin/faults",
        data=json.dumps({"journal_write_errors": on}).encode(),
        method="POST",
        headers={"X-API-Key": state.admin_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise StackError(f"POST {base}/v1/admin/faults answered {resp.status}")


def _disk_full(state: StackState):
    filler = Path(state.mounts[0]) / FILLER
    fill(filler)
    return lambda: filler.unlink(missing_ok=True)


def fill(path: Path) -> None:
    """Writes `path` until its file system has no byte left (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


INJECT = {"kill": _kill, "journal-errors": _journal_errors, "disk-full": _disk_full}


def results_json(results: list[IncidentResult]) -> list[dict]:
    return [asdict(r) for r in results]


def format_drill(results: list[IncidentResult]) -> str:
    lines = [f"{'incident':<16} {'pages':>5} {'resolved':>8} {'to page':>9} {'to resolved':>12}  paged by"]
    for r in results:
        if r.skipped:
            lines.append(f"{r.incident:<16} skipped: {r.skipped}")
            continue
        lines.append(
            f"{r.incident:<16} {r.pages:>5} {r.resolved:>8} {_s(r.to_page_s):>9} {_s(r.to_resolved_s):>12}  "
            f"{', '.join(r.page_alertnames) or '-'}"
        )
        if r.error:
            lines.append(f"{'':<16} {r.error}")
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
