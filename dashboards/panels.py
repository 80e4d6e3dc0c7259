"""The panel helpers every board is built from: targets, thresholds, stats and time series,
rows and their layout, variables, annotations and the board itself; and the few facts the
boards share (role names, the replicated snapshot's age threshold).

Their own module so each board module (boards.py, cluster.py) imports them, not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import attr
from grafanalib.core import (
    SHORT_FORMAT,
    GridPos,
    Stat,
    Target,
    TimeSeries,
)

from alerts.slo import CONFIG  # the SLOs and every alert threshold, defined once
from dashboards.catalogue_queries import m, quantile
from telemetry.collectors import ROLES

DS = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["loom"]
WIDTH = 24
HEIGHT = 8
SCHEMA_VERSION = 39  # Grafana 10.3+: data source references are objects, panels are flat
THRESHOLDS = CONFIG.thresholds()  # panel thresholds by what they measure (units in the key)

GREEN, BLUE, YELLOW, ORANGE, RED = "green", "blue", "yellow", "orange", "red"
PRICE_UNITS = "suffix: price units"  # Grafana's custom unit: the number, then this suffix


@attr.s
class ExemplarTarget(Target):
    """A Prometheus target that also asks Grafana for exemplars (trace ids on latency)."""

    def to_json_data(self):
        return {**super().to_json_data(), "exemplar": True}


def target(expr: str, legend: str = "", exemplar: bool = False, instant: bool = False) -> Target:
    cls = ExemplarTarget if exemplar else Target
    return cls(expr=expr, legendFormat=legend, datasource=DS, instant=instant)


P50_P99 = ((0.5, "50"), (0.99, "99"))
P50_P99_P999 = (*P50_P99, (0.999, "99.9"))


def quantile_targets(
    histogram: str, legend: str, by: tuple[str, ...] = (), quantiles=P50_P99, exemplar: bool = False
) -> list[Target]:
    """One target per quantile of `histogram`; `{p}` in `legend` becomes 50, 99, 99.9."""
    return [
        target(quantile(q, histogram, by), legend.replace("{p}", label), exemplar=exemplar)
        for q, label in quantiles
    ]


def eq(label: str, value: str) -> str:
    """A label matcher `label="value"`."""
    return f'{label}="{value}"'


def steps(*above: tuple[float, str], base: str = GREEN) -> list[dict]:
    """Threshold steps: `base` from -Infinity (null in Grafana's JSON), then each (value,
    colour) from that value up; values ascending."""
    values = [v for v, _ in above]
    assert values == sorted(values), values
    return [{"color": base, "value": None}, *({"color": c, "value": v} for v, c in above)]


def upper(warning: float | None, critical: float) -> list[dict]:
    """Higher is worse: green, then orange from `warning`, red from `critical`."""
    return steps(*([(warning, ORANGE)] if warning is not None else []), (critical, RED))


def lower(critical: float, warning: float | None = None, ok: str = GREEN) -> list[dict]:
    """Lower is worse: red below `critical`, orange below `warning`, then `ok`."""
    above = [(critical, ORANGE if warning is not None else ok)]
    if warning is not None:
        above.append((warning, ok))
    return steps(*above, base=RED)


def value_text(mapping: dict[float, tuple[str, str]]) -> dict:
    """A value mapping: each exact value shown as (text, colour)."""
    return {
        "type": "value",
        "options": {
            f"{v:g}": {"text": text, "color": colour, "index": i}
            for i, (v, (text, colour)) in enumerate(mapping.items())
        },
    }


def range_text(low: float, high: float, text: str, colour: str, index: int = 0) -> dict:
    return {
        "type": "range",
        "options": {"from": low, "to": high, "result": {"text": text, "color": colour, "index": index}},
    }


def series(
    title: str,
    targets: list[Target],
    unit: str = SHORT_FORMAT,
    description: str = "",
    thresholds: list[dict] | None = None,
    mappings: list[dict] = (),
    decimals: int | None = None,
) -> TimeSeries:
    """A time series; thresholds, when given, are drawn as dashed lines."""
    return TimeSeries(
        title=title,
        dataSource=DS,
        targets=targets,
        unit=unit,
        description=description or None,
        tooltipMode="multi",
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        thresholds=thresholds or steps(),
        thresholdsStyleMode="dashed" if thresholds else "off",
        mappings=list(mappings),
        valueDecimals=decimals,
    )


def stat(
    title: str,
    targets: list[Target],
    unit: str = SHORT_FORMAT,
    description: str = "",
    thresholds: list[dict] | None = None,
    mappings: list[dict] = (),
    text_mode: str = "auto",
) -> Stat:
    """A stat, coloured by its thresholds (or its value mappings' colours)."""
    return Stat(
        title=title,
        dataSource=DS,
        targets=targets,
        format=unit,
        reduceCalc="lastNotNull",
        description=description or None,
        thresholds=thresholds or steps(base=BLUE),
        mappings=list(mappings),
        colorMode="background" if thresholds or mappings else "value",
        textMode=text_mode,
        graphMode="none" if mappings else "area",
    )


def link(title: str, url: str) -> dict:
    """A panel link (Grafana's DashboardLink shape), opened in a new tab."""
    return {
        "title": title,
        "url": url,
        "type": "link",
        "icon": "external link",
        "tooltip": title,
        "tags": [],
        "asDropdown": False,
        "includeVars": False,
        "keepTime": False,
        "targetBlank": True,
    }


@dataclass(frozen=True)
class Row:
    """A row header; the panels after it belong to it. `repeat` names a variable: Grafana
    draws the row (and its panels) once per selected value."""

    title: str
    repeat: str = ""


def _panel_json(panel) -> dict:
    return panel if isinstance(panel, dict) else panel.to_json_data()


def layout(rows: list) -> list[dict]:
    """Places panels row by row, each row's panels sharing the 24-column width; a `Row`
    becomes a row header. Panel ids are assigned in order (stable across builds)."""
    placed: list[dict] = []
    y = 0
    for row in rows:
        if isinstance(row, Row):
            header = {"type": "row", "title": row.title, "collapsed": False, "panels": []}
            if row.repeat:
                header["repeat"] = row.repeat
            placed.append({**header, "id": len(placed) + 1, "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}})
            y += 1
            continue
        width = WIDTH // len(row)
        height = 4 if all(isinstance(p, Stat) for p in row) else HEIGHT
        for i, panel in enumerate(row):
            pos = GridPos(h=height, w=width, x=i * width, y=y)
            data = {**_panel_json(attr.evolve(panel, gridPos=pos) if attr.has(type(panel)) else panel)}
            if isinstance(panel, dict):
                data["gridPos"] = pos.to_json_data()
            data["id"] = len(placed) + 1
            placed.append(data)
        y += height
    return placed


def datasource_variable() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"}


def label_variable(name: str, label: str, series: str) -> dict:
    """A multi-value variable of a label's values on a catalogue series ("All" matches every
    value, and series without the label)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": f"label_values({series}, {name})", "refId": f"{name}-values"},
        "refresh": 2,  # on time range change: nodes come and go
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def scope_variables() -> list[dict]:
    """`instance` (every node that exports loom_ready) and `node` (cluster node names, as the
    leader reports its standbys)."""
    return [
        label_variable("instance", "Instance", f"loom_ready{{{CONFIG.selector()}}}"),
        label_variable("node", "Node", m("loom_standby_applied_seq").replace(',node=~"$node"', "")),
    ]


def annotation(name: str, expr: str, colour: str, title: str, tags: str) -> dict:
    """An annotation from a Prometheus query: a marker wherever `expr` has a value."""
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "iconColor": colour,
        "expr": expr,
        "step": "15s",
        "titleFormat": title,
        "tagKeys": tags,
        "textFormat": "",
        "useValueForTime": False,
    }


def event(name: str, window: str = "1m") -> str:
    return f"increase({m(name)}[{window}]) > 0"


def annotations() -> list[dict]:
    """Restarts, failovers and leader changes, snapshots and automation actions, on every board."""
    return [
        annotation(
            "Restarts",
            f"changes({m('process_start_time_seconds')}[1m]) > 0",
            RED,
            "Restart of {{instance}}",
            "instance",
        ),
        annotation(
            "Failovers", event("loom_failovers_total"), ORANGE, "{{instance}} promoted to leader", "instance"
        ),
        annotation(
            "Leader changes",
            event("loom_leader_changes_total"),
            YELLOW,
            "Leader changed ({{instance}})",
            "instance",
        ),
        annotation(
            "Snapshots",
            event("loom_snapshot_duration_seconds_count"),
            BLUE,
            "Snapshot written ({{instance}})",
            "instance",
        ),
        annotation(
            "Snapshot failures",
            event("loom_snapshot_failures_total"),
            RED,
            "Snapshot failed ({{instance}})",
            "instance",
        ),
        annotation(
            "Replicated snapshots",
            event("loom_replicated_snapshot_uploads_total"),
            BLUE,
            "Replicated snapshot {{outcome}} ({{instance}})",
            "instance,outcome",
        ),
        annotation(
            "Automation",
            event("loom_automation_actions_total"),
            "purple",
            "Automation: {{action}} {{outcome}} ({{instance}})",
            "action,outcome,instance",
        ),
    ]


@dataclass
class Board:
    """One dashboard: `data` is its JSON model (what `dashboards.build` writes)."""

    uid: str
    title: str
    data: dict = field(repr=False)


def board(uid: str, title: str, rows: list, description: str, extra_vars=()) -> Board:
    return Board(
        uid,
        title,
        {
            "uid": uid,
            "title": title,
            "description": description,
            "tags": TAGS,
            "timezone": "utc",
            "refresh": "10s",
            "time": {"from": "now-30m", "to": "now"},
            "graphTooltip": 1,
            "editable": True,
            "schemaVersion": SCHEMA_VERSION,
            "templating": {"list": [datasource_variable(), *scope_variables(), *extra_vars]},
            "annotations": {"list": annotations()},
            "links": [
                {**link("Loom dashboards", ""), "type": "dashboards", "tags": TAGS, "asDropdown": True}
            ],
            "panels": layout(rows),
        },
    )


ROLE_COLOURS = {"leader": GREEN, "standby": BLUE, "candidate": ORANGE, "standalone": "text"}


def role_code() -> str:
    """Each instance's role as its index in telemetry.collectors.ROLES (a value mapping
    shows the name): loom_cluster_role is 1 for the current role only."""
    parts = [f"({m('loom_cluster_role', eq('role', r))} == 1) * {i}" for i, r in enumerate(ROLES)]
    return f"max by (instance) ({' or '.join(parts)})"


ROLE_NAMES = [value_text({i: (r, ROLE_COLOURS.get(r, "text")) for i, r in enumerate(ROLES)})]


# Not in CONFIG.thresholds(): read from its trigger (the same 1 h today).
REPLICATED_SNAPSHOT_AGE = upper(None, CONFIG.trigger("LoomReplicatedSnapshotTooOld").value)
