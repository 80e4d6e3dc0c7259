"""The SLOs, alert thresholds and timings of Loom Exchange, in one place (a mixin-style `_config`).

alerts/rules.py builds every rule from `CONFIG`; the runbooks' numbers are checked against
it (tests/test_alerts.py); dashboards read panel thresholds through `CONFIG.thresholds()`;
tests check that compose/prometheus*.yml scrape at `scrape_interval` and that the pager
route of alerts/alertmanager.yml uses `pager_group_wait` / `pager_group_interval`.

Which refusals are bad events of the availability SLI (the exchange's fault, not the client's):
- `journal_write_failed` (loom_rejects_total): the exchange could not make the command durable;
- `outcome_unknown` (loom_rejects_total): the client was told nobody knows yet;
- overload shedding (loom_overload_refusals_total): the exchange had no capacity for a valid
  command; "retry later" is still a refusal of service.
Not counted: a client's own fault (validation, risk, kill switch, rate limit, decode errors),
and NOT_LEADER from a standby (no counter exists; while no node leads, LoomNoLeader pages and
with a leader known the client is redirected, not refused service).
The order-to-ack latency SLI counts only answers from the core: a refused batch is no sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def seconds(duration: str) -> float:
    """'90s', '15m', '4h', '30d' -> seconds (the Prometheus durations this config uses)."""
    m = re.fullmatch(r"(\d+)([smhd])", duration)
    if not m:
        raise ValueError(f"duration {duration!r}: want a number and one of s, m, h, d (e.g. '15m')")
    return int(m[1]) * _UNITS_S[m[2]]


def human_duration(duration: str | float) -> str:
    """'15m' or 900 -> '15 minutes', '1h' or 3600 -> '1 hour' (as the runbooks write them)."""
    total = seconds(duration) if isinstance(duration, str) else duration
    unit = next(u for u in "dhms" if u == "s" or total % _UNITS_S[u] == 0)
    n = int(total // _UNITS_S[unit])
    return f"{n} {_UNIT_WORDS[unit]}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Trigger:
    """When one alert fires: its expression compares with `value` (when it has one), over a
    rate()/increase() range of `window`, and must hold for `for_`."""

    value: float = 0.0
    for_: str = "0s"
    window: str = ""
    # A cause that keeps firing this long after its condition clears, so that the symptoms
    # whose own windows outlast it stay inhibited instead of paging once it resolves.
    keep_firing_for: str = "0s"


@dataclass(frozen=True)
class BurnRate:
    """A multiwindow burn-rate alert (SRE workbook): both windows burn faster than `factor`
    times the budget rate."""

    speed: str  # "Fast" or "Slow": the alert names are Loom<Slo><speed>Burn
    long: str
    short: str
    factor: float
    for_: str
    severity: str

    def budget_spent(self, period: str) -> float:
        """Fraction of the period's error budget gone within `long` at this rate."""
        return self.factor * seconds(self.long) / seconds(period)


def _triggers() -> Mapping[str, Trigger]:
    return MappingProxyType(
        {
            "LoomExchangeDown": Trigger(for_="15s"),
            "LoomExchangeAbsent": Trigger(for_="5m"),
            "LoomExchangeNotReady": Trigger(for_="2m"),
            # A short window: it resolves this long after the last failed write (a 5m window
            # kept paging for five minutes after recovery, past the 60 s all-clear).
            "LoomJournalWriteErrors": Trigger(0, window="10s"),
            "LoomJournalFsyncLatencyHigh": Trigger(0.01, "10m", "5m"),  # p99, seconds
            # free ratio: journal appends fail any moment. Kept firing past the freed disk for
            # longer than LoomJournalWriteErrors' window, which it inhibits.
            "LoomDataDiskFull": Trigger(0.01, keep_firing_for="20s"),
            "LoomDataDiskAlmostFull": Trigger(0.1, "5m"),  # free ratio
            "LoomDataDiskFillingUp": Trigger(0, "5m", "1h"),  # predict_linear over window
            "LoomSnapshotTooOld": Trigger(3600, "15m"),  # seconds
            "LoomReplicatedSnapshotTooOld": Trigger(3600, "15m"),
            "LoomSnapshotFailures": Trigger(0, window="30m"),
            "LoomRecoverySlow": Trigger(30),  # seconds of recovery at start-up
            "LoomRejectRateHigh": Trigger(0.25, "10m", "5m"),  # ratio of commands rejected
            "LoomNoLeader": Trigger(for_="30s"),
            "LoomMultipleLeaders": Trigger(1, "1m"),
            "LoomLeaseLost": Trigger(0, window="5m"),
            "LoomReplicationLagHigh": Trigger(10000, "2m"),  # commands
            "LoomNoStandby": Trigger(for_="5m"),
            "LoomStandbyReportStale": Trigger(30, "1m"),  # seconds
            "LoomDecodeErrorSpike": Trigger(1, "10m", "5m"),  # refusals per second
            # [2m] and for 5m: refusals in every two-minute window for five minutes; one burst
            # shed in seconds leaves the window again and stays quiet.
            "LoomShedding": Trigger(0, "5m", "2m"),
            # Open connections over the listener's cap (loom_connection_limit), or refusals
            # for a full listener over [2m], for 5m: new clients are (about to be) refused.
            "LoomConnectionsSaturated": Trigger(0.9, "5m", "2m"),
            "LoomAnomalyDetected": Trigger(1, "5m"),  # surveillance score, 1 = threshold
            "LoomKillSwitchEngaged": Trigger(0),
            # Any wash trade, spoofing or layering finding within the window (counts, no names).
            "LoomAbuseFound": Trigger(0, "0s", "15m"),
            # The learned order-flow model: a feature this many sds above the population, for 5m.
            "LoomFlowAnomaly": Trigger(6, "5m"),
            # Surveillance dropped durable batches (its bounded buffer was full): its findings
            # are incomplete. Any drop within the window, kept while it is in the window.
            "LoomSurveillanceDropping": Trigger(0, "0s", "15m"),
            # Money (docs/accounts.md): any breach of conservation, at once; orders refused for
            # lack of funds above this many per second per symbol over [5m], for 10m.
            "LoomConservationBreach": Trigger(0),
            "LoomInsufficientBalanceSurge": Trigger(1, "10m", "5m"),
        }
    )


@dataclass(frozen=True)
class SloConfig:
    job: str = "loom"  # the scrape job of the exchange nodes
    # Prometheus timings of the compose stack, the tests and `loom stack` (checked by tests).
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    slo_period: str = "30d"

    # Order-to-ack latency SLO: 99% of orders acknowledged (durably) within 5 ms.
    latency_target: float = 0.99
    latency_threshold_s: float = 0.005  # must be a bucket bound of LATENCY_BUCKETS

    # Availability SLO: 99.9% of valid commands served (see the module doc for bad events).
    availability_target: float = 0.999
    availability_bad_reasons: tuple[str, ...] = ("journal_write_failed", "outcome_unknown")
    availability_counts_overload: bool = True

    burn_rates: tuple[BurnRate, ...] = (
        BurnRate("Fast", "1h", "5m", 14.4, "2m", "critical"),
        BurnRate("Slow", "6h", "30m", 6, "15m", "warning"),
    )
    slo_windows: tuple[str, ...] = ("5m", "30m", "1h", "6h")  # recorded error ratios

    triggers: Mapping[str, Trigger] = field(default_factory=_triggers)
    disk_horizon: str = "4h"  # LoomDataDiskFillingUp: predicted full within this
    recovery_recent: str = "1h"  # LoomRecoverySlow fires only this long after a start
    reject_rate_min_per_s: float = 1.0  # LoomRejectRateHigh needs this many rejects/s too

    # Alertmanager: how fast a page goes out and an all-clear follows (alerts/alertmanager.yml).
    pager_group_wait: str = "5s"
    pager_group_interval: str = "30s"
    resolve_timeout: str = "1m"
    watchdog_repeat: str = "1m"  # the dead-man's switch hears from us this often

    # -- derived ---------------------------------------------------------------------------
    def selector(self, extra: str = "") -> str:
        """The label matchers of the exchange's series, e.g. `job="loom",reason="x"`."""
        return f'job="{self.job}"' + (f",{extra}" if extra else "")

    @property
    def latency_le(self) -> str:
        """The histogram bucket `le` label of the latency threshold, as prometheus_client
        formats it."""
        from prometheus_client.utils import floatToGoString

        return floatToGoString(self.latency_threshold_s)

    @property
    def latency_budget(self) -> float:
        return round(1 - self.latency_target, 6)

    @property
    def availability_budget(self) -> float:
        return round(1 - self.availability_target, 6)

    def trigger(self, alert: str) -> Trigger:
        try:
            return self.triggers[alert]
        except KeyError:
            raise KeyError(f"alerts/slo.py has no trigger for {alert}") from None

    def burn(self, speed: str) -> BurnRate:
        return next(b for b in self.burn_rates if b.speed == speed)

    def down_page_s(self) -> float:
        """Worst case from a kill to the LoomExchangeDown page: the next scrape fails, the next
        evaluation starts the pending state, `for` elapses, the next evaluation sends it, and the
        pager route waits group_wait."""
        step = seconds(self.scrape_interval) + 2 * seconds(self.evaluation_interval)
        return step + seconds(self.trigger("LoomExchangeDown").for_) + seconds(self.pager_group_wait)

    def resolve_page_s(self) -> float:
        """Worst case from recovery to the resolved notification: a scrape, an evaluation that
        sends the resolution, then the pager group's next flush (group_interval)."""
        step = seconds(self.scrape_interval) + seconds(self.evaluation_interval)
        return step + seconds(self.pager_group_interval)

    def thresholds(self) -> dict[str, float]:
        """Panel thresholds for the dashboards, by what they measure (units in the name)."""
        t = self.trigger
        return {
            "order_to_ack_s": self.latency_threshold_s,
            "latency_target_ratio": self.latency_target,
            "availability_target_ratio": self.availability_target,
            "fast_burn_factor": self.burn("Fast").factor,
            "slow_burn_factor": self.burn("Slow").factor,
            "journal_fsync_p99_s": t("LoomJournalFsyncLatencyHigh").value,
            "disk_free_ratio_warning": t("LoomDataDiskAlmostFull").value,
            "disk_free_ratio_critical": t("LoomDataDiskFull").value,
            "snapshot_age_s": t("LoomSnapshotTooOld").value,
            "recovery_s": t("LoomRecoverySlow").value,
            "reject_ratio": t("LoomRejectRateHigh").value,
            "replication_lag_commands": t("LoomReplicationLagHigh").value,
            "standby_report_age_s": t("LoomStandbyReportStale").value,
            "decode_errors_per_s": t("LoomDecodeErrorSpike").value,
            "anomaly_score": t("LoomAnomalyDetected").value,
            "flow_zscore": t("LoomFlowAnomaly").value,
            "insufficient_balance_per_s": t("LoomInsufficientBalanceSurge").value,
        }


CONFIG = SloConfig()
