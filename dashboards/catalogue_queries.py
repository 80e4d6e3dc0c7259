"""PromQL built from the metrics catalogue: a dashboard cannot name an undeclared series.

`m(name)` returns the series with the boards' selector only when
`telemetry.catalogue.declared_series()` holds it (the exposed series names: counters with
`_total`, histograms' `_bucket`/`_sum`/`_count`); anything else raises at build time, before
a dashboard is written. The selector is the one place that scopes every query to the scrape
job (alerts/slo.py) and the boards' `$instance` variable, plus `$node` for the metrics the
catalogue labels by node. The helpers below build the few query shapes the boards repeat
(rates, quantiles) on top of it.
"""

from __future__ import annotations

import re

from alerts.slo import CONFIG
from telemetry.catalogue import CATALOGUE, declared_series

RATE = "$__rate_interval"  # Grafana's rate window: at least four scrape intervals

# A metric name in PromQL: an identifier followed by a selector (`{` or `[`), or any `loom_` word.
_SELECTED = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
_LOOM = re.compile(r"\b(loom_[a-zA-Z0-9_:]*)")
# Words after which `{`/`[` is not a metric selector, and label names inside `by (...)`.
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset"}


# The boards' template variables, as every selector matches them.
INSTANCE_MATCHER = 'instance=~"$instance"'
NODE_MATCHER = 'node=~"$node"'

_NODE_LABELLED = {n for spec in CATALOGUE.values() if "node" in spec.labels for n in spec.series_names}


class UndeclaredMetric(ValueError):
    """A query names a series the catalogue does not declare."""


def m(name: str, matchers: str = "") -> str:
    """`name{job="loom",instance=~"$instance"[,node=~"$node"][,matchers]}` for a series the
    catalogue declares."""
    if name not in declared_series():
        raise UndeclaredMetric(f"{name!r} is not declared in telemetry/catalogue.py")
    scope = [CONFIG.selector(), INSTANCE_MATCHER]
    if name in _NODE_LABELLED:
        scope.append(NODE_MATCHER)
    if matchers:
        scope.append(matchers)
    return f"{name}{{{','.join(scope)}}}"


def rate(name: str, matchers: str = "") -> str:
    """`rate(name{...}[$__rate_interval])` for a declared counter or histogram series."""
    return f"rate({m(name, matchers)}[{RATE}])"


def quantile(q: float, histogram: str, by: tuple[str, ...] = ()) -> str:
    """`histogram_quantile(q, sum by (le, ...) (rate(<histogram>_bucket[...])))`."""
    labels = ", ".join(("le", *by))
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket')}))"


def mean(histogram: str, by: tuple[str, ...] = ()) -> str:
    """Mean of a histogram over the rate window: rate(_sum) / rate(_count)."""
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"sum{grouping} ({rate(histogram + '_sum')}) / sum{grouping} ({rate(histogram + '_count')})"


def referenced_metrics(expr: str) -> set[str]:
    """Every metric name a PromQL expression references (selectors and `loom_` words);
    function names take `(` not `{`/`[`, so they are not picked up, nor are label names."""
    found = {n for n in _SELECTED.findall(expr) if n not in _NOT_METRICS}
    found |= set(_LOOM.findall(expr))
    # Label names inside braces (`{symbol="x"}`) are followed by `=`, never by `{`/`[`.
    return found


def undeclared(expr: str) -> set[str]:
    """The names in `expr` that the catalogue does not declare (empty when all are)."""
    return referenced_metrics(expr) - declared_series()
