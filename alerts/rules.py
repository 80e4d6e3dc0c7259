"""The alert rules, as data, and the generator of the Prometheus rule file.

Every alert is an `Alert` record; `render()` turns the groups into Prometheus rule groups
and adds a `runbook_url` annotation to every alert (kubernetes-mixin style), so no alert
can ship without one. The output is JSON, which is valid YAML: no yaml dependency.

    python -m alerts.rules                    # writes alerts/generated/loom-rules.yml
    python -m alerts.rules --check            # exit 1 when the committed file is stale
    python -m alerts.rules --runbook-url-template 'https://example/{alert}'

Only metric names from `telemetry.catalogue.declared_series()` may appear in an expr (a
test enforces it); recording-rule names (`level:metric:operation`) defined here are allowed too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alerts.slo import CONFIG, BurnRate, human_duration, seconds

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "generated" / "loom-rules.yml"
RUNBOOK_DIR = HERE / "runbooks"

C = CONFIG
JOB = C.selector()  # the scrape job of the exchange nodes
DEFAULT_RUNBOOK_URL_TEMPLATE = "https://runbooks.loom.exchange/{alert}"
RUNBOOK_URL_ENV = "LOOM_RUNBOOK_URL_TEMPLATE"
SEVERITIES = ("critical", "warning", "info", "none")  # none: the Watchdog only
WATCHDOG = "Watchdog"  # the kube-prometheus name dead-man's-switch services expect

# Kept for the dashboards (dashboards/boards.py); the values live in alerts/slo.py.
SLO_TARGET = C.latency_target
SLO_LATENCY_LE = C.latency_le
ERROR_BUDGET = C.latency_budget
SLO_WINDOWS = C.slo_windows
AVAILABILITY_TARGET = C.availability_target
AVAILABILITY_BUDGET = C.availability_budget
FAILED = C.selector(f'reason=~"{"|".join(C.availability_bad_reasons)}"')
DISK_FREE = f"loom_data_disk_free_bytes{{{JOB}}}"
DISK_FREE_RATIO = f"{DISK_FREE} / loom_data_disk_size_bytes{{{JOB}}}"
DISK_HORIZON_S = int(seconds(C.disk_horizon))


def _for(alert: str) -> str:
    """The alert's `for` in words, for its description ("for 5 minutes")."""
    return human_duration(C.trigger(alert).for_)


def _pct(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def _ms(s: float) -> str:
    return f"{s * 1000:g} ms"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = "0s"
    labels: dict[str, str] = field(default_factory=dict)
    automation: str = ""  # the runbook automation's action; the label routes the alert to it
    keep_firing_for: str = "0s"


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Alert | Recording, ...]
    interval: str = ""


def _slo_error_ratio(window: str) -> Recording:
    """Fraction of orders NOT acked within the SLO latency over `window` (by job). Only the
    core's answers are samples (engine/service.py skips refused batches)."""
    return Recording(
        f"job:loom_order_to_ack_slow:ratio_rate{window}",
        f"1 - (\n"
        f'  sum by (job) (rate(loom_order_to_ack_seconds_bucket{{{JOB},le="{SLO_LATENCY_LE}"}}[{window}]))\n'
        f"  /\n"
        f"  sum by (job) (rate(loom_order_to_ack_seconds_count{{{JOB}}}[{window}]))\n"
        f")",
    )


def _bad_commands(window: str) -> str:
    """Commands refused for the exchange's fault (alerts/slo.py says which) per second, by job.
    `or` unions the counters (their label sets differ), so one that has no series yet (no
    journal failure so far) does not empty the sum."""
    bad = [f"rate(loom_rejects_total{{{FAILED}}}[{window}])"]
    if C.availability_counts_overload:
        bad.append(f"rate(loom_overload_refusals_total{{{JOB}}}[{window}])")
    return "sum by (job) (\n  " + "\n  or ".join(bad) + "\n)"


def _availability_error_ratio(window: str) -> Recording:
    """Fraction of valid commands the exchange failed to serve over `window` (by job)."""
    bad = _bad_commands(window)
    return Recording(
        f"job:loom_commands_failed:ratio_rate{window}",
        f"{bad}\n/\n(\n  sum by (job) (rate(loom_commands_total{{{JOB}}}[{window}]))\n  + {bad}\n)",
    )


# Causes whose incidents burn the error budgets. A burn alert is a symptom of them: it stays
# quiet while one fired within its short window, which holds the incident's errors that long
# after the cause has cleared (otherwise the burn pages a second time, minutes after the
# cause's own page, for the same incident; Alertmanager's inhibitions end with the cause).
BURN_CAUSES = ("LoomExchangeDown", "LoomJournalWriteErrors", "LoomDataDiskFull", "LoomNoLeader")


def _burn(b: BurnRate, sli: str, budget: float) -> str:
    threshold = f"({b.factor} * {budget})"
    causes = "|".join(BURN_CAUSES)
    recent = (
        f'max by (job) (max_over_time(ALERTS{{{JOB},alertname=~"{causes}",alertstate="firing"}}[{b.short}]))'
    )
    long, short = f"job:{sli}:ratio_rate{b.long}", f"job:{sli}:ratio_rate{b.short}"
    return f"(\n  {long} > {threshold}\n  and\n  {short} > {threshold}\n)\nunless on (job)\n{recent}"


def _burn_words(b: BurnRate, budget: float) -> tuple[str, str]:
    """(`more than X%`, `Y% of the 30-day budget is gone within Z`) for a burn alert."""
    over = f"more than {_pct(round(b.factor * budget, 6))}"
    spent = (
        f"{_pct(round(b.budget_spent(C.slo_period), 4))} of the {seconds(C.slo_period) // 86400:g}-day budget"
    )
    return over, f"{spent} is gone within {human_duration(b.long)} at this rate"


def _latency_burn(b: BurnRate) -> Alert:
    over, spent = _burn_words(b, ERROR_BUDGET)
    slo = f"SLO: {_pct(C.latency_target)} within {_ms(C.latency_threshold_s)}"
    return Alert(
        f"LoomOrderToAck{b.speed}Burn",
        _burn(b, "loom_order_to_ack_slow", ERROR_BUDGET),
        b.severity,
        f"Loom is burning its order-to-ack latency error budget{' fast' if b.speed == 'Fast' else ''}.",
        f"Over {b.long} and {b.short}, {over} of orders took longer than {_ms(C.latency_threshold_s)} "
        f"to be acknowledged ({slo}); {spent}.",
        for_=b.for_,
        labels={"slo": "order-to-ack", "window": b.long},
    )


def _availability_burn(b: BurnRate) -> Alert:
    over, spent = _burn_words(b, AVAILABILITY_BUDGET)
    reasons = ", ".join(
        (*C.availability_bad_reasons, *(("overloaded",) if C.availability_counts_overload else ()))
    )
    return Alert(
        f"LoomAvailability{b.speed}Burn",
        _burn(b, "loom_commands_failed", AVAILABILITY_BUDGET),
        b.severity,
        f"Loom is burning its availability error budget{' fast' if b.speed == 'Fast' else ''}.",
        f"Over {b.long} and {b.short}, {over} of the commands to {{{{ $labels.job }}}} were refused for "
        f"the exchange's fault ({reasons}; SLO: {_pct(C.availability_target)} served); {spent}.",
        for_=b.for_,
        labels={"slo": "availability", "window": b.long},
    )


def _t(alert: str):
    return C.trigger(alert)


# Only self-match (wash) anomalies stop an account automatically: the template renders empty
# for the other kinds, and Prometheus drops an empty label, so those reach people only.
ANOMALY_AUTOMATION = '{{ if eq $labels.kind "self_match" }}engage-kill-switch{{ end }}'

RISK_GROUP = Group(
    "loom-risk",
    (
        Alert(
            "LoomKillSwitchEngaged",
            f"sum by (job, instance, scope) (loom_kill_switch_engaged{{{JOB}}}) "
            f"> {_t('LoomKillSwitchEngaged').value:g}",
            "warning",
            "A Loom kill switch is engaged.",
            "{{ $value }} {{ $labels.scope }} kill switch(es) engaged on {{ $labels.instance }}: new orders "
            "and amends in that scope are refused (cancels still pass). Release it once the cause is "
            "understood; nothing releases it automatically.",
        ),
        Alert(
            "LoomAnomalyDetected",
            # Metrics carry no account names (issue 13): the alert is per kind; which accounts
            # is for the admin/ops API, and the automation asks surveillance itself.
            f"max by (job, instance, kind) (loom_surveillance_anomaly_score{{{JOB}}}) "
            f">= {_t('LoomAnomalyDetected').value:g}",
            "warning",
            "Surveillance flags a Loom account.",
            "An account on {{ $labels.instance }} has a {{ $labels.kind }} anomaly score "
            'of {{ $value | printf "%.2f" }} '
            f"({_t('LoomAnomalyDetected').value:g} = threshold) for {_for('LoomAnomalyDetected')}; "
            "which one: `loom risk surveillance` or GET /v1/admin/surveillance (admin or ops key). "
            "Self-match anomalies engage the flagged accounts' kill switches automatically.",
            for_=_t("LoomAnomalyDetected").for_,
            labels={"risk_scope": "account"},
            automation=ANOMALY_AUTOMATION,
        ),
        Alert(
            "LoomAbuseFound",
            # Counts by kind and symbol only; the owners and accounts are in the admin report.
            f"sum by (job, instance, kind, symbol) (increase(loom_surveillance_findings_total"
            f'{{{JOB}, kind=~"wash_trade|spoofing|layering"}}[{_t("LoomAbuseFound").window}])) '
            f"> {_t('LoomAbuseFound').value:g}",
            "warning",
            "Surveillance found a wash trade, spoofing or layering pattern.",
            '{{ $value | printf "%.0f" }} {{ $labels.kind }} finding(s) in {{ $labels.symbol }} on '
            f"{{{{ $labels.instance }}}} over the last {human_duration(_t('LoomAbuseFound').window)}; who: "
            "`loom risk surveillance` or GET /v1/admin/surveillance/report (admin or ops key).",
        ),
        Alert(
            "LoomFlowAnomaly",
            f"max by (job, instance, feature) (loom_surveillance_flow_zscore{{{JOB}}}) "
            f">= {_t('LoomFlowAnomaly').value:g}",
            "warning",
            "An account's order flow is far outside the learned norm.",
            "An account on {{ $labels.instance }} scores a {{ $labels.feature }} z-score of "
            '{{ $value | printf "%.1f" }} '
            f"(alert at {_t('LoomFlowAnomaly').value:g}) for {_for('LoomFlowAnomaly')}; which one: "
            "`loom risk surveillance` or GET /v1/admin/surveillance/report (admin or ops key).",
            for_=_t("LoomFlowAnomaly").for_,
        ),
        Alert(
            "LoomSurveillanceDropping",
            # The analysis runs within a CPU share (engine/surveillance_desk.py): under sustained
            # load it falls behind and then drops whole batches rather than compete with
            # matching. Silence from surveillance then means "not looked at", not "clean".
            f"sum by (job, instance) (increase(loom_surveillance_dropped_batches_total{{{JOB}}}"
            f"[{_t('LoomSurveillanceDropping').window}])) > {_t('LoomSurveillanceDropping').value:g}",
            "warning",
            "Surveillance is dropping batches: its findings are incomplete.",
            '{{ $value | printf "%.0f" }} durable batch(es) went unanalysed on {{ $labels.instance }} '
            f"over the last {human_duration(_t('LoomSurveillanceDropping').window)}: the analysis "
            "is behind its CPU share (`surveillance_cpu_share`). Backlog: "
            "loom_surveillance_backlog_events; age: loom_surveillance_analysis_age_seconds.",
        ),
    ),
)

_SURGE = _t("LoomInsufficientBalanceSurge")

MONEY_GROUP = Group(
    "loom-money",
    (
        Alert(
            "LoomConservationBreach",
            f"max by (job, instance) (loom_ledger_conservation_breaches{{{JOB}}}) "
            f"> {_t('LoomConservationBreach').value:g}",
            "critical",
            "A Loom node's ledger breaks conservation.",
            "The conservation check on {{ $labels.instance }} finds {{ $value }} problem(s): an asset's "
            "balances do not sum to its deposits - withdrawals + adjustments, or a balance is negative "
            "or held above its total. This must never happen: money was created or lost by a defect. "
            "Stop trading (venue kill switch) and compare the balances with the journal.",
        ),
        Alert(
            "LoomInsufficientBalanceSurge",
            f"sum by (job, instance, symbol) (rate(loom_insufficient_balance_rejects_total{{{JOB}}}"
            f"[{_SURGE.window}])) > {_SURGE.value:g}",
            "warning",
            "Many Loom orders are refused for lack of funds.",
            "{{ $labels.symbol }} on {{ $labels.instance }} refuses "
            '{{ $value | printf "%.1f" }} orders/s with INSUFFICIENT_BALANCE '
            f"(over {_SURGE.value:g}/s for {_for('LoomInsufficientBalanceSurge')}): a client trading "
            "past its funds in a loop, deposits not arriving, or reservations not being released.",
            for_=_SURGE.for_,
        ),
    ),
)

# The dead-man's switch: always firing, so its silence means the alerting pipeline
# (Prometheus -> Alertmanager -> receiver) is broken. alerts/alertmanager.yml routes it alone.
WATCHDOG_GROUP = Group(
    "loom-meta",
    (
        Alert(
            WATCHDOG,
            "vector(1)",
            "none",
            "The alerting pipeline is alive (always firing).",
            "This alert always fires. Alertmanager sends it to the dead-man's-switch receiver every "
            f"{human_duration(C.watchdog_repeat)}; that service pages when it stops hearing from it, "
            "because then Prometheus, Alertmanager or the path between them is down.",
        ),
    ),
)

_FSYNC = _t("LoomJournalFsyncLatencyHigh")
_DISK_FULL = _t("LoomDataDiskFull")
_DISK_LOW = _t("LoomDataDiskAlmostFull")
_FILLING = _t("LoomDataDiskFillingUp")
_REJECTS = _t("LoomRejectRateHigh")
_LAG = _t("LoomReplicationLagHigh")
_STALE = _t("LoomStandbyReportStale")
_DECODE = _t("LoomDecodeErrorSpike")
_SHED = _t("LoomShedding")
_CONNS = _t("LoomConnectionsSaturated")
_SNAP = _t("LoomSnapshotTooOld")
_RSNAP = _t("LoomReplicatedSnapshotTooOld")
_SNAPFAIL = _t("LoomSnapshotFailures")
_RECOVERY = _t("LoomRecoverySlow")
_WRITE = _t("LoomJournalWriteErrors")
_LEASE = _t("LoomLeaseLost")
_MULTI = _t("LoomMultipleLeaders")

GROUPS: tuple[Group, ...] = (
    Group(
        "loom-availability",
        (
            Alert(
                "LoomExchangeDown",
                f"up{{{JOB}}} == 0",
                "critical",
                "A Loom exchange node is down.",
                "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}) for "
                f"{_for('LoomExchangeDown')}: the node is down or unreachable and is not accepting orders.",
                for_=_t("LoomExchangeDown").for_,
            ),
            Alert(
                "LoomExchangeAbsent",
                f"absent(up{{{JOB}}})",
                "critical",
                "No Loom exchange target is known to Prometheus.",
                f"No series up{{{JOB}}} for {_for('LoomExchangeAbsent')}: the exchange is not being scraped "
                "at all (service discovery or scrape config broken, or every node gone).",
                for_=_t("LoomExchangeAbsent").for_,
            ),
            Alert(
                "LoomExchangeNotReady",
                f"loom_ready{{{JOB}}} == 0",
                "critical",
                "A Loom exchange node is not accepting orders.",
                "{{ $labels.instance }} reports loom_ready == 0 for "
                f"{_for('LoomExchangeNotReady')}: it is up but does not accept orders or its journal is "
                "not writable.",
                for_=_t("LoomExchangeNotReady").for_,
            ),
        ),
    ),
    Group(
        "loom-journal",
        (
            Alert(
                "LoomJournalWriteErrors",
                f"increase(loom_journal_write_errors_total{{{JOB}}}[{_WRITE.window}]) > {_WRITE.value:g}",
                "critical",
                "Journal batches on a Loom node could not be written.",
                "{{ $labels.instance }} failed to write {{ $value | humanize }} journal batches in the "
                f"last {human_duration(_WRITE.window)}; the orders in them were rejected "
                "(journal_write_failed).",
            ),
            Alert(
                "LoomJournalFsyncLatencyHigh",
                "histogram_quantile(0.99,\n"
                "  sum by (job, instance, le) "
                f"(rate(loom_journal_fsync_seconds_bucket{{{JOB}}}[{_FSYNC.window}]))\n"
                f") > {_FSYNC.value:g}",
                "warning",
                f"Journal fsync p99 latency on a Loom node is above {_ms(_FSYNC.value)}.",
                "p99 fdatasync of journal batches on {{ $labels.instance }} is "
                "{{ $value | humanizeDuration }} (normal: ~0.25 ms); every order ack waits for it.",
                for_=_FSYNC.for_,
            ),
            Alert(
                "LoomDataDiskFull",
                f"{DISK_FREE_RATIO} < {_DISK_FULL.value:g}",
                "critical",
                f"The data disk of a Loom node has less than {_pct(_DISK_FULL.value)} free.",
                "The file system of {{ $labels.instance }}'s data directory has "
                "{{ $value | humanizePercentage }} of its space free: journal appends fail (or will any "
                "moment) and every order is refused (journal_write_failed) until space is freed.",
                for_=_DISK_FULL.for_,
                keep_firing_for=_DISK_FULL.keep_firing_for,
            ),
            Alert(
                "LoomDataDiskFillingUp",
                f"{DISK_FREE_RATIO}\n"
                "and\n"
                f"predict_linear({DISK_FREE}[{_FILLING.window}], {DISK_HORIZON_S}) < {_FILLING.value:g}",
                "critical",
                f"The data disk of a Loom node will be full within {human_duration(C.disk_horizon)}.",
                f"At the rate of the last {human_duration(_FILLING.window).removeprefix('1 ')} the file "
                "system of {{ $labels.instance }}'s data directory runs out of space within "
                f"{human_duration(C.disk_horizon)} ({{{{ $value | humanizePercentage }}}} free now). Once it "
                "is full every journal append fails and trading stops (journal_write_failed).",
                for_=_FILLING.for_,
            ),
            Alert(
                "LoomDataDiskAlmostFull",
                f"{DISK_FREE_RATIO} < {_DISK_LOW.value:g}",
                "warning",
                f"The data disk of a Loom node has less than {_pct(_DISK_LOW.value)} free.",
                "The file system of {{ $labels.instance }}'s data directory has "
                "{{ $value | humanizePercentage }} of its space free; journal appends fail once it is full.",
                for_=_DISK_LOW.for_,
            ),
        ),
    ),
    Group(
        "loom-snapshots-recovery",
        (
            Alert(
                "LoomSnapshotTooOld",
                f"loom_snapshot_age_seconds{{{JOB}}} > {_SNAP.value:g}",
                "warning",
                f"The newest snapshot of a Loom node is more than {human_duration(_SNAP.value)} old.",
                "The last snapshot on {{ $labels.instance }} was taken {{ $value | humanizeDuration }} ago; "
                "a restart would replay the whole journal since then.",
                for_=_SNAP.for_,
                automation="take-snapshot",
            ),
            Alert(
                "LoomReplicatedSnapshotTooOld",
                f"min by (job) (loom_replicated_snapshot_age_seconds{{{JOB}}}) > {_RSNAP.value:g}",
                "warning",
                "The newest replicated snapshot of a Loom cluster is more than "
                f"{human_duration(_RSNAP.value)} old.",
                "The leader of {{ $labels.job }} last stored a snapshot in the replicated store "
                "{{ $value | humanizeDuration }} ago: the journal stream is not purged behind it and "
                "grows, and a node starting without local snapshots replays everything since.",
                for_=_RSNAP.for_,
                automation="take-snapshot",
            ),
            Alert(
                "LoomSnapshotFailures",
                f"increase(loom_snapshot_failures_total{{{JOB}}}[{_SNAPFAIL.window}]) > {_SNAPFAIL.value:g}",
                "warning",
                "Snapshots on a Loom node are failing.",
                "{{ $labels.instance }} failed to write {{ $value | humanize }} snapshots "
                f"in the last {human_duration(_SNAPFAIL.window)}.",
            ),
            Alert(
                "LoomRecoverySlow",
                f"loom_recovery_duration_seconds{{{JOB}}} > {_RECOVERY.value:g}\n"
                "and on (job, instance)\n"
                f"(time() - process_start_time_seconds{{{JOB}}}) < {seconds(C.recovery_recent)}",
                "warning",
                f"The last start-up recovery of a Loom node took more than {_RECOVERY.value:g} seconds.",
                "{{ $labels.instance }} needed {{ $value | humanizeDuration }} to recover at start-up "
                "(snapshot load + journal replay); the recovery time objective is at risk. "
                f"Fires during the first {human_duration(C.recovery_recent).removeprefix('1 ')} after a "
                "start only.",
            ),
        ),
    ),
    Group(
        "loom-orders",
        (
            Alert(
                "LoomRejectRateHigh",
                f"sum by (job) (rate(loom_rejects_total{{{JOB}}}[{_REJECTS.window}]))\n"
                "/\n"
                "(\n"
                f"  sum by (job) (rate(loom_orders_total{{{JOB}}}[{_REJECTS.window}]))\n"
                f"  + sum by (job) (rate(loom_rejects_total{{{JOB}}}[{_REJECTS.window}]))\n"
                f") > {_REJECTS.value:g}\n"
                f"and\n"
                f"sum by (job) (rate(loom_rejects_total{{{JOB}}}[{_REJECTS.window}])) "
                f"> {C.reject_rate_min_per_s:g}",
                "warning",
                f"More than {_pct(_REJECTS.value)} of Loom commands are rejected.",
                "{{ $value | humanizePercentage }} of the commands to {{ $labels.job }} were rejected over "
                f"{human_duration(_REJECTS.window)} (more than {C.reject_rate_min_per_s:g} reject/s). "
                "Look at loom_rejects_total by reason.",
                for_=_REJECTS.for_,
            ),
        ),
    ),
    Group(
        "loom-slo-order-to-ack",
        (
            *(_slo_error_ratio(w) for w in SLO_WINDOWS),
            *(_latency_burn(b) for b in C.burn_rates),
        ),
    ),
    Group(
        "loom-slo-availability",
        (
            *(_availability_error_ratio(w) for w in SLO_WINDOWS),
            *(_availability_burn(b) for b in C.burn_rates),
        ),
    ),
    Group(
        "loom-cluster",
        (
            Alert(
                "LoomNoLeader",
                f'sum by (job) (loom_cluster_role{{{JOB},role="leader"}}) == 0',
                "critical",
                "No Loom cluster node holds the leader lease.",
                f"No node of {{{{ $labels.job }}}} has been leader for {_for('LoomNoLeader')}: the exchange "
                "accepts no orders. A failover normally completes in about 1.2 s.",
                for_=_t("LoomNoLeader").for_,
                automation="promote-standby",
            ),
            Alert(
                "LoomMultipleLeaders",
                f'sum by (job) (loom_cluster_role{{{JOB},role="leader"}}) > {_MULTI.value:g}',
                "warning",
                "More than one Loom node believes it is leader.",
                "{{ $value }} nodes of {{ $labels.job }} report role=leader for "
                f"{_for('LoomMultipleLeaders')}. "
                "Fencing refuses every append of the deposed one, so nothing is lost or doubled, but its "
                "clients are being refused (journal_write_failed) until it notices and demotes.",
                for_=_MULTI.for_,
            ),
            Alert(
                "LoomLeaseLost",
                f'increase(loom_lease_renewals_total{{{JOB},outcome="failed"}}[{_LEASE.window}]) '
                f"> {_LEASE.value:g}",
                "warning",
                "A Loom leader failed to renew its lease.",
                "{{ $labels.instance }} failed {{ $value | humanize }} lease renewals in the last "
                f"{human_duration(_LEASE.window)}. A leader that cannot renew within the TTL (1.2 s) stops "
                "accepting and a standby takes over: NATS is slow or unreachable from this node.",
            ),
            Alert(
                "LoomReplicationLagHigh",
                f"max by (job, instance) (loom_replication_lag_commands{{{JOB}}}) > {_LAG.value:g}",
                "warning",
                f"A Loom standby is more than {_LAG.value:,.0f} commands behind the replicated journal.",
                "{{ $labels.instance }} is {{ $value | humanize }} commands behind the stream for "
                f"{_for('LoomReplicationLagHigh')}; a failover to it would wait for it to catch up first.",
                for_=_LAG.for_,
            ),
            Alert(
                "LoomNoStandby",
                # `unless`: a dead standby's series vanish, so "count of standbys == 0" would be
                # empty exactly when it matters.
                f'sum by (job) (loom_cluster_role{{{JOB},role="leader"}}) >= 1 '
                f'unless on (job) sum by (job) (loom_cluster_role{{{JOB},role="standby"}}) >= 1',
                "warning",
                "A Loom cluster runs without a hot standby.",
                "{{ $labels.job }} has a leader but no node has been standby for "
                f"{_for('LoomNoStandby')}: "
                "the next leader failure is an outage until a node is started, not a 1-2 s failover.",
                for_=_t("LoomNoStandby").for_,
            ),
            Alert(
                "LoomStandbyReportStale",
                f"max by (job, instance, node) (loom_standby_report_age_seconds{{{JOB}}}) > {_STALE.value:g}",
                "warning",
                "A Loom standby has stopped reporting its position.",
                "The leader {{ $labels.instance }} last heard from standby {{ $labels.node }} "
                "{{ $value | humanize }} s ago (reports come every second). Past [retention] "
                "standby_stale_s (60 s by default) retention purges past it, and it will need a "
                "restart to recover from the replicated snapshot.",
                for_=_STALE.for_,
            ),
        ),
    ),
    Group(
        "loom-gateways",
        (
            Alert(
                "LoomDecodeErrorSpike",
                "sum by (job, instance, protocol) "
                f"(rate(loom_decode_errors_total{{{JOB}}}[{_DECODE.window}])) > {_DECODE.value:g}",
                "warning",
                f"A Loom gateway is refusing unreadable messages at more than {_DECODE.value:g} per second.",
                "{{ $labels.instance }} refused {{ $value | humanize }} unreadable {{ $labels.protocol }} "
                f"messages per second over {human_duration(_DECODE.window)}, "
                f"for {_for('LoomDecodeErrorSpike')}: "
                "a client is sending malformed input (a broken release, a wrong protocol version, or a port "
                "scan). Look at loom_decode_errors_total by code.",
                for_=_DECODE.for_,
            ),
            Alert(
                "LoomShedding",
                f"sum by (job, instance) (rate(loom_overload_refusals_total{{{JOB}}}[{_SHED.window}])) "
                f"> {_SHED.value:g}",
                "warning",
                "A Loom node is shedding load: orders refused because its commit queue is full.",
                "{{ $labels.instance }} has refused {{ $value | humanize }} commands per second as "
                f"overloaded (commit queue at max_queued_commands) for {_for('LoomShedding')}: more is "
                "offered than the node can commit. Refused orders were answered at once (503 OVERLOADED, "
                "binary 603) and never journaled; clients are retrying. They count against the "
                "availability SLO. Look at loom_overload_refusals_total by protocol and "
                "loom_commit_backlog_commands.",
                for_=_SHED.for_,
            ),
            Alert(
                "LoomConnectionsSaturated",
                "(max by (job, instance, protocol) "
                f"(loom_connections{{{JOB}}} / loom_connection_limit{{{JOB}}}) > {_CONNS.value:g}) "
                "or (sum by (job, instance, protocol) (rate(loom_connections_refused_total"
                f'{{{JOB}, reason="listener_full"}}[{_CONNS.window}])) > 0)',
                "critical",
                "A Loom listener is at its connection cap: new clients are refused.",
                "The {{ $labels.protocol }} listener of {{ $labels.instance }} has held over "
                f"{_CONNS.value:.0%} of its connection cap, or refused connections for being full, for "
                f"{_for('LoomConnectionsSaturated')}: a connection flood, a client leaking connections, "
                "or a cap too low for the traffic. Sessions already open still trade. Look at "
                "loom_connections, loom_connection_limit and loom_connections_refused_total by reason.",
                for_=_CONNS.for_,
            ),
        ),
    ),
    RISK_GROUP,
    MONEY_GROUP,
    WATCHDOG_GROUP,
)

# Wanted, but the metrics do not exist yet (see the catalogue); add them with the metrics.
SKIPPED = {}


def alerts() -> list[Alert]:
    return [r for g in GROUPS for r in g.rules if isinstance(r, Alert)]


def recordings() -> list[Recording]:
    return [r for g in GROUPS for r in g.rules if isinstance(r, Recording)]


def runbook_url(name: str, template: str | None = None) -> str:
    template = template or os.environ.get(RUNBOOK_URL_ENV) or DEFAULT_RUNBOOK_URL_TEMPLATE
    return template.format(alert=name)


def _rule(rule: Alert | Recording, template: str | None) -> dict:
    if isinstance(rule, Recording):
        return {"record": rule.record, "expr": rule.expr}
    if rule.severity not in SEVERITIES:
        raise ValueError(f"{rule.name}: severity {rule.severity!r} not in {SEVERITIES}")
    if rule.name != WATCHDOG and (not rule.name.startswith("Loom") or not rule.name.isalnum()):
        raise ValueError(f"{rule.name}: alert names are CamelCase with the Loom prefix")
    labels = {"severity": rule.severity, **rule.labels}
    if rule.automation:
        labels["automation"] = rule.automation
    out: dict = {"alert": rule.name, "expr": rule.expr}
    if seconds(rule.for_):
        out["for"] = rule.for_
    if seconds(rule.keep_firing_for):
        out["keep_firing_for"] = rule.keep_firing_for
    out["labels"] = labels
    out["annotations"] = {
        "summary": rule.summary,
        "description": rule.description,
        "runbook_url": runbook_url(rule.name, template),
    }
    return out


def render(template: str | None = None) -> str:
    groups = []
    for g in GROUPS:
        group: dict = {"name": g.name}
        if g.interval:
            group["interval"] = g.interval
        group["rules"] = [_rule(r, template) for r in g.rules]
        groups.append(group)
    header = "# Generated by `python -m alerts.rules` from alerts/rules.py. Do not edit.\n"
    return header + json.dumps({"groups": groups}, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--runbook-url-template", default=None, help="e.g. https://host/runbooks/{alert}")
    parser.add_argument("--check", action="store_true", help="fail when the output is not up to date")
    args = parser.parse_args(argv)
    text = render(args.runbook_url_template)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m alerts.rules", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(alerts())} alerts, {len(recordings())} recording rules)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
