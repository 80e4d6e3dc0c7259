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

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "generated" / "loom-rules.yml"
RUNBOOK_DIR = HERE / "runbooks"

JOB = 'job="loom"'  # the scrape job of the exchange nodes
DEFAULT_RUNBOOK_URL_TEMPLATE = "https://runbooks.loom.exchange/{alert}"
RUNBOOK_URL_ENV = "LOOM_RUNBOOK_URL_TEMPLATE"
SEVERITIES = ("critical", "warning", "info")

# Order-to-ack SLO: 99% of orders acknowledged (durably) within 5 ms, over 30 days.
SLO_TARGET = 0.99
SLO_LATENCY_LE = "0.005"  # a bucket bound of LATENCY_BUCKETS, as prometheus_client formats it
ERROR_BUDGET = round(1 - SLO_TARGET, 6)
SLO_WINDOWS = ("5m", "30m", "1h", "6h")
# Availability SLO: 99.9% of commands made durable, over 30 days. A command fails for the
# exchange's fault when its batch could not be journaled (journal_write_failed) or its
# client was answered that nobody knows yet (outcome_unknown); every client-caused reject
# counts as served.
AVAILABILITY_TARGET = 0.999
AVAILABILITY_BUDGET = round(1 - AVAILABILITY_TARGET, 6)
FAILED = f'{JOB},reason=~"journal_write_failed|outcome_unknown"'
# Data disk: free space predicted to reach 0 within this horizon (from the last hour's trend).
DISK_FREE = f"loom_data_disk_free_bytes{{{JOB}}}"
DISK_HORIZON_S = 4 * 3600


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = "0m"
    labels: dict[str, str] = field(default_factory=dict)
    automation: str = ""  # the runbook automation's action; the label routes the alert to it


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
    """Fraction of orders NOT acked within the SLO latency over `window` (by job)."""
    return Recording(
        f"job:loom_order_to_ack_slow:ratio_rate{window}",
        f"1 - (\n"
        f'  sum by (job) (rate(loom_order_to_ack_seconds_bucket{{{JOB},le="{SLO_LATENCY_LE}"}}[{window}]))\n'
        f"  /\n"
        f"  sum by (job) (rate(loom_order_to_ack_seconds_count{{{JOB}}}[{window}]))\n"
        f")",
    )


def _availability_error_ratio(window: str) -> Recording:
    """Fraction of commands that failed to become durable over `window` (by job)."""
    failed = f"sum by (job) (rate(loom_rejects_total{{{FAILED}}}[{window}]))"
    return Recording(
        f"job:loom_commands_failed:ratio_rate{window}",
        f"{failed}\n/\n(\n  sum by (job) (rate(loom_commands_total{{{JOB}}}[{window}]))\n  + {failed}\n)",
    )


def _burn(
    long: str, short: str, factor: float, sli: str = "loom_order_to_ack_slow", budget: float = ERROR_BUDGET
) -> str:
    threshold = f"({factor} * {budget})"
    return f"job:{sli}:ratio_rate{long} > {threshold}\nand\njob:{sli}:ratio_rate{short} > {threshold}"


# Only self-match (wash) anomalies stop an account automatically: the template renders empty
# for the other kinds, and Prometheus drops an empty label, so those reach people only.
ANOMALY_AUTOMATION = '{{ if eq $labels.kind "self_match" }}engage-kill-switch{{ end }}'

RISK_GROUP = Group(
    "loom-risk",
    (
        Alert(
            "LoomKillSwitchEngaged",
            f"sum by (job, instance, scope) (loom_kill_switch_engaged{{{JOB}}}) > 0",
            "warning",
            "A Loom kill switch is engaged.",
            "{{ $value }} {{ $labels.scope }} kill switch(es) engaged on {{ $labels.instance }}: new orders "
            "and amends in that scope are refused (cancels still pass). Release it once the cause is "
            "understood; nothing releases it automatically.",
        ),
        Alert(
            "LoomAnomalyDetected",
            f"max by (job, instance, kind, account) (loom_surveillance_account_score{{{JOB}}}) >= 1",
            "warning",
            "Surveillance flags a Loom account.",
            "Account {{ $labels.account }} on {{ $labels.instance }} has a {{ $labels.kind }} anomaly score "
            'of {{ $value | printf "%.2f" }} (1 = threshold) for 5 minutes. Self-match anomalies engage '
            "the account's kill switch automatically.",
            for_="5m",
            labels={"risk_scope": "account"},
            automation=ANOMALY_AUTOMATION,
        ),
    ),
)

GROUPS: tuple[Group, ...] = (
    Group(
        "loom-availability",
        (
            Alert(
                "LoomExchangeDown",
                f"up{{{JOB}}} == 0",
                "critical",
                "A Loom exchange node is down.",
                "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}) for 1 minute: "
                "the node is down or unreachable and is not accepting orders.",
                for_="1m",
            ),
            Alert(
                "LoomExchangeAbsent",
                f"absent(up{{{JOB}}})",
                "critical",
                "No Loom exchange target is known to Prometheus.",
                'No series up{job="loom"} for 5 minutes: the exchange is not being scraped at all '
                "(service discovery or scrape config broken, or every node gone).",
                for_="5m",
            ),
            Alert(
                "LoomExchangeNotReady",
                f"loom_ready{{{JOB}}} == 0",
                "critical",
                "A Loom exchange node is not accepting orders.",
                "{{ $labels.instance }} reports loom_ready == 0 for 2 minutes: it is up but does not "
                "accept orders or its journal is not writable.",
                for_="2m",
            ),
        ),
    ),
    Group(
        "loom-journal",
        (
            Alert(
                "LoomJournalWriteErrors",
                f"increase(loom_journal_write_errors_total{{{JOB}}}[5m]) > 0",
                "critical",
                "Journal batches on a Loom node could not be written.",
                "{{ $labels.instance }} failed to write {{ $value | humanize }} journal batches in the "
                "last 5 minutes; the orders in them were rejected (journal_write_failed).",
            ),
            Alert(
                "LoomJournalFsyncLatencyHigh",
                "histogram_quantile(0.99,\n"
                f"  sum by (job, instance, le) (rate(loom_journal_fsync_seconds_bucket{{{JOB}}}[5m]))\n"
                ") > 0.01",
                "warning",
                "Journal fsync p99 latency on a Loom node is above 10 ms.",
                "p99 fdatasync of journal batches on {{ $labels.instance }} is "
                "{{ $value | humanizeDuration }} (normal: ~0.25 ms); every order ack waits for it.",
                for_="10m",
            ),
            Alert(
                "LoomDataDiskFillingUp",
                f"{DISK_FREE} / loom_data_disk_size_bytes{{{JOB}}}\n"
                "and\n"
                f"predict_linear({DISK_FREE}[1h], {DISK_HORIZON_S}) < 0",
                "critical",
                "The data disk of a Loom node will be full within 4 hours.",
                "At the rate of the last hour the file system of {{ $labels.instance }}'s data directory "
                "runs out of space within 4 hours ({{ $value | humanizePercentage }} free now). Once it "
                "is full every journal append fails and trading stops (journal_write_failed).",
                for_="5m",
            ),
            Alert(
                "LoomDataDiskAlmostFull",
                f"{DISK_FREE} / loom_data_disk_size_bytes{{{JOB}}} < 0.1",
                "warning",
                "The data disk of a Loom node has less than 10% free.",
                "The file system of {{ $labels.instance }}'s data directory has "
                "{{ $value | humanizePercentage }} of its space free; journal appends fail once it is full.",
                for_="5m",
            ),
        ),
    ),
    Group(
        "loom-snapshots-recovery",
        (
            Alert(
                "LoomSnapshotTooOld",
                f"loom_snapshot_age_seconds{{{JOB}}} > 3600",
                "warning",
                "The newest snapshot of a Loom node is more than 1 hour old.",
                "The last snapshot on {{ $labels.instance }} was taken {{ $value | humanizeDuration }} ago; "
                "a restart would replay the whole journal since then.",
                for_="15m",
                automation="take-snapshot",
            ),
            Alert(
                "LoomReplicatedSnapshotTooOld",
                f"min by (job) (loom_replicated_snapshot_age_seconds{{{JOB}}}) > 3600",
                "warning",
                "The newest replicated snapshot of a Loom cluster is more than 1 hour old.",
                "The leader of {{ $labels.job }} last stored a snapshot in the replicated store "
                "{{ $value | humanizeDuration }} ago: the journal stream is not purged behind it and "
                "grows, and a node starting without local snapshots replays everything since.",
                for_="15m",
                automation="take-snapshot",
            ),
            Alert(
                "LoomSnapshotFailures",
                f"increase(loom_snapshot_failures_total{{{JOB}}}[30m]) > 0",
                "warning",
                "Snapshots on a Loom node are failing.",
                "{{ $labels.instance }} failed to write {{ $value | humanize }} snapshots "
                "in the last 30 minutes.",
            ),
            Alert(
                "LoomRecoverySlow",
                f"loom_recovery_duration_seconds{{{JOB}}} > 30\n"
                "and on (job, instance)\n"
                f"(time() - process_start_time_seconds{{{JOB}}}) < 3600",
                "warning",
                "The last start-up recovery of a Loom node took more than 30 seconds.",
                "{{ $labels.instance }} needed {{ $value | humanizeDuration }} to recover at start-up "
                "(snapshot load + journal replay); the recovery time objective is at risk. "
                "Fires during the first hour after a start only.",
            ),
        ),
    ),
    Group(
        "loom-orders",
        (
            Alert(
                "LoomRejectRateHigh",
                f"sum by (job) (rate(loom_rejects_total{{{JOB}}}[5m]))\n"
                "/\n"
                "(\n"
                f"  sum by (job) (rate(loom_orders_total{{{JOB}}}[5m]))\n"
                f"  + sum by (job) (rate(loom_rejects_total{{{JOB}}}[5m]))\n"
                ") > 0.25\n"
                f"and\n"
                f"sum by (job) (rate(loom_rejects_total{{{JOB}}}[5m])) > 1",
                "warning",
                "More than 25% of Loom commands are rejected.",
                "{{ $value | humanizePercentage }} of the commands to {{ $labels.job }} were rejected over "
                "5 minutes (more than 1 reject/s). Look at loom_rejects_total by reason.",
                for_="10m",
            ),
        ),
    ),
    Group(
        "loom-slo-order-to-ack",
        (
            *(_slo_error_ratio(w) for w in SLO_WINDOWS),
            Alert(
                "LoomOrderToAckFastBurn",
                _burn("1h", "5m", 14.4),
                "critical",
                "Loom is burning its order-to-ack latency error budget fast.",
                "Over 1h and 5m, more "
                "than 14.4% of orders took longer than 5 ms to be acknowledged (SLO: 99% within 5 ms). "
                "2% of the 30-day budget is gone within an hour at this rate.",
                for_="2m",
                labels={"slo": "order-to-ack", "window": "1h"},
            ),
            Alert(
                "LoomOrderToAckSlowBurn",
                _burn("6h", "30m", 6),
                "warning",
                "Loom is burning its order-to-ack latency error budget.",
                "Over 6h and 30m, more than 6% of orders took longer than 5 ms to be acknowledged "
                "(SLO: 99% within 5 ms); 5% of the 30-day budget is gone within 6 hours at this rate.",
                for_="15m",
                labels={"slo": "order-to-ack", "window": "6h"},
            ),
        ),
    ),
    Group(
        "loom-slo-availability",
        (
            *(_availability_error_ratio(w) for w in SLO_WINDOWS),
            Alert(
                "LoomAvailabilityFastBurn",
                _burn("1h", "5m", 14.4, "loom_commands_failed", AVAILABILITY_BUDGET),
                "critical",
                "Loom is burning its availability error budget fast.",
                "Over 1h and 5m, more than 1.44% of the commands to {{ $labels.job }} could not be made "
                "durable (journal_write_failed; SLO: 99.9% durable). 2% of the 30-day budget is gone "
                "within an hour at this rate.",
                for_="2m",
                labels={"slo": "availability", "window": "1h"},
            ),
            Alert(
                "LoomAvailabilitySlowBurn",
                _burn("6h", "30m", 6, "loom_commands_failed", AVAILABILITY_BUDGET),
                "warning",
                "Loom is burning its availability error budget.",
                "Over 6h and 30m, more than 0.6% of the commands to {{ $labels.job }} could not be made "
                "durable (SLO: 99.9% durable); 5% of the 30-day budget is gone within 6 hours at this rate.",
                for_="15m",
                labels={"slo": "availability", "window": "6h"},
            ),
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
                "No node of {{ $labels.job }} has been leader for 30 seconds: the exchange accepts no "
                "orders. A failover normally completes in about 1.2 s.",
                for_="30s",
                automation="promote-standby",
            ),
            Alert(
                "LoomMultipleLeaders",
                f'sum by (job) (loom_cluster_role{{{JOB},role="leader"}}) > 1',
                "warning",
                "More than one Loom node believes it is leader.",
                "{{ $value }} nodes of {{ $labels.job }} report role=leader for 1 minute. Fencing refuses "
                "every append of the deposed one, so nothing is lost or doubled, but its clients are "
                "being refused (journal_write_failed) until it notices and demotes.",
                for_="1m",
            ),
            Alert(
                "LoomLeaseLost",
                f'increase(loom_lease_renewals_total{{{JOB},outcome="failed"}}[5m]) > 0',
                "warning",
                "A Loom leader failed to renew its lease.",
                "{{ $labels.instance }} failed {{ $value | humanize }} lease renewals in the last 5 minutes. "
                "A leader that cannot renew within the TTL (1.2 s) stops accepting and a standby takes "
                "over: NATS is slow or unreachable from this node.",
            ),
            Alert(
                "LoomReplicationLagHigh",
                f"max by (job, instance) (loom_replication_lag_commands{{{JOB}}}) > 10000",
                "warning",
                "A Loom standby is more than 10,000 commands behind the replicated journal.",
                "{{ $labels.instance }} is {{ $value | humanize }} commands behind the stream for 2 minutes; "
                "a failover to it would wait for it to catch up first.",
                for_="2m",
            ),
            Alert(
                "LoomNoStandby",
                # `unless`: a dead standby's series vanish, so "count of standbys == 0" would be
                # empty exactly when it matters.
                f'sum by (job) (loom_cluster_role{{{JOB},role="leader"}}) >= 1 '
                f'unless on (job) sum by (job) (loom_cluster_role{{{JOB},role="standby"}}) >= 1',
                "warning",
                "A Loom cluster runs without a hot standby.",
                "{{ $labels.job }} has a leader but no node has been standby for 5 minutes: the next "
                "leader failure is an outage until a node is started, not a 1-2 s failover.",
                for_="5m",
            ),
            Alert(
                "LoomStandbyReportStale",
                f"max by (job, instance, node) (loom_standby_report_age_seconds{{{JOB}}}) > 30",
                "warning",
                "A Loom standby has stopped reporting its position.",
                "The leader {{ $labels.instance }} last heard from standby {{ $labels.node }} "
                "{{ $value | humanize }} s ago (reports come every second). Past [retention] "
                "standby_stale_s (60 s by default) retention purges past it, and it will need a "
                "restart to recover from the replicated snapshot.",
                for_="1m",
            ),
        ),
    ),
    Group(
        "loom-gateways",
        (
            Alert(
                "LoomDecodeErrorSpike",
                f"sum by (job, instance, protocol) (rate(loom_decode_errors_total{{{JOB}}}[5m])) > 1",
                "warning",
                "A Loom gateway is refusing unreadable messages at more than 1 per second.",
                "{{ $labels.instance }} refused {{ $value | humanize }} unreadable {{ $labels.protocol }} "
                "messages per second over 5 minutes, for 10 minutes: a client is sending malformed input "
                "(a broken release, a wrong protocol version, or a port scan). Look at "
                "loom_decode_errors_total by code.",
                for_="10m",
            ),
            Alert(
                "LoomShedding",
                # [2m] and for 5m: refusals in every two-minute window for five minutes. One
                # burst shed in seconds leaves the window again and stays quiet.
                f"sum by (job, instance) (rate(loom_overload_refusals_total{{{JOB}}}[2m])) > 0",
                "warning",
                "A Loom node is shedding load: orders refused because its commit queue is full.",
                "{{ $labels.instance }} has refused {{ $value | humanize }} commands per second as "
                "overloaded (commit queue at max_queued_commands) for 5 minutes: more is offered than "
                "the node can commit. Refused orders were answered at once (503 OVERLOADED, binary 603) "
                "and never journaled; clients are retrying. Look at loom_overload_refusals_total by "
                "protocol and loom_commit_backlog_commands.",
                for_="5m",
            ),
        ),
    ),
    RISK_GROUP,
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
    if not rule.name.startswith("Loom") or not rule.name.isalnum():
        raise ValueError(f"{rule.name}: alert names are CamelCase with the Loom prefix")
    labels = {"severity": rule.severity, **rule.labels}
    if rule.automation:
        labels["automation"] = rule.automation
    out: dict = {"alert": rule.name, "expr": rule.expr}
    if rule.for_ != "0m":
        out["for"] = rule.for_
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
