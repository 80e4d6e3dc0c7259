"""The Prometheus text format (0.0.4) of a registry, byte for byte what prometheus_client's
`generate_latest` writes, cheaper on the event loop that renders it.

`generate_latest` escapes, validates and sorts every sample's labels on every scrape (~0.4 µs of
its ~1 µs a line, ~600 lines a scrape). Label sets barely change between scrapes, so each
sample's text up to its value (`name{k="v",...} `) is built once and kept, keyed by the family,
the sample name and its labels as given: a new or changed label set is a new key (built then),
a value is never cached. tests/test_metrics_exposition.py checks the output against
`generate_latest` for the same collected state.
"""

from __future__ import annotations

from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# The text format's renames of OpenMetrics types (as generate_latest makes them).
_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")  # moved to a gauge family of their own, after
MAX_CACHED = 50_000  # label sets kept; past it the cache starts over (churning labels stay bounded)


class TextRenderer:
    """Renders a registry; holds the per-series prefixes between scrapes (one per registry)."""

    def __init__(self, registry: Collector) -> None:
        self.registry = registry
        self._prefix: dict[tuple, tuple[str, str | None]] = {}  # -> (line up to the value, om suffix)
        self._header: dict[tuple, str] = {}  # (name, type, help) -> its HELP and TYPE lines

    def render(self) -> bytes:
        return render_families(self.registry.collect(), self)

    def _sample_prefix(self, family: str, name: str, labels: dict) -> tuple[str, str | None]:
        key = (family, name, *labels.items())
        found = self._prefix.get(key)
        if found is None:
            if len(self._prefix) >= MAX_CACHED:
                self._prefix.clear()
            found = self._prefix[key] = self._built_prefix(family, name, labels)
        return found

    def _built_prefix(self, family: str, name: str, labels: dict) -> tuple[str, str | None]:
        """A series' text up to its value, and the family it moves to (OpenMetrics suffixes)."""
        return _prefix(name, labels), _om_suffix(family, name)

    def _family_header(self, name: str, mtype: str, doc: str) -> str:
        key = (name, mtype, doc)
        found = self._header.get(key)
        if found is None:
            found = self._header[key] = _header(name, mtype, doc)
        return found


def render_families(families, renderer: TextRenderer) -> bytes:
    output: list[str] = []
    append = output.append
    cached = renderer._prefix.get
    prefix_of = renderer._sample_prefix
    # Values repeat within a page (bucket counts, zeros): each is formatted once a render. Not
    # 0: -0.0 == 0.0 as a key, and they print differently.
    texts: dict[float, str] = {}
    for metric in families:
        try:
            family = metric.name
            append(renderer._family_header(family, metric.type, metric.documentation))
            om_samples: dict[str, list[str]] = {}
            for name, labels, value, timestamp, _exemplar, *_ in metric.samples:
                found = cached((family, name, *labels.items())) or prefix_of(family, name, labels)
                text = texts.get(value) if value else None
                if text is None:
                    text = texts[value] = floatToGoString(value)
                line = found[0] + text
                if timestamp is not None:
                    line += f" {int(float(timestamp) * 1000):d}"
                if found[1] is None:
                    append(line + "\n")
                else:
                    om_samples.setdefault(found[1], []).append(line + "\n")
        except Exception as exception:  # as generate_latest: the failing family named
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(om_samples.items()):
            append(_header(family + suffix, "gauge", metric.documentation, typed=False))
            output.extend(lines)
    return "".join(output).encode("utf-8")


def _escape_help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


def _header(name: str, mtype: str, doc: str, typed: bool = True) -> str:
    """# HELP and # TYPE of a family (`typed`: munge its name and type as the text format does)."""
    if typed:
        if mtype == "counter":
            name += "_total"
        elif mtype == "info":
            name += "_info"
        mtype = _TYPE.get(mtype, mtype)
    escaped = openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES)
    return f"# HELP {escaped} {_escape_help(doc)}\n# TYPE {escaped} {mtype}\n"


def _prefix(name: str, labels: dict) -> str:
    escaped = openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES)
    if not labels:
        return escaped + " "
    name_of, value_of = openmetrics.escape_label_name, openmetrics._escape
    rune = openmetrics._is_legacy_labelname_rune  # unused by ALLOWUTF8's escaping
    pairs = ",".join(
        f'{name_of(k, openmetrics.UNDERSCORES)}="{value_of(v, openmetrics.ALLOWUTF8, rune)}"'
        for k, v in sorted(labels.items())
    )
    return f"{escaped}{{{pairs}}} "


def _om_suffix(family: str, name: str) -> str | None:
    for suffix in _OM_SUFFIXES:
        if name == family + suffix:
            return suffix
    return None


class OpenMetricsRenderer(TextRenderer):
    """The OpenMetrics text (1.0.0) of a registry, byte for byte prometheus_client's
    `openmetrics.exposition.generate_latest` (Prometheus asks for it first), with the same
    cached series prefixes. Exemplars and timestamps are written per scrape, never cached; a
    family holding native histogram samples is handed to prometheus_client whole."""

    def render(self) -> bytes:
        output: list[str] = []
        append = output.append
        cached = self._prefix.get
        texts: dict[float, str] = {}  # as render_families: values formatted once a render
        for metric in self.registry.collect():
            family = metric.name
            if any(s.native_histogram for s in metric.samples):
                append(openmetrics.generate_latest(_One(metric)).decode("utf-8").removesuffix("# EOF\n"))
                continue
            try:
                append(self._family_header(family, metric.unit, metric.type + "\n" + metric.documentation))
                for s in metric.samples:
                    name, labels, value = s.name, s.labels, s.value
                    key = (family, name, *labels.items())
                    found = cached(key)
                    if found is None:
                        found = self._sample_prefix(family, name, labels)
                    if value is None:
                        text = ""
                    else:
                        text = texts.get(value) if value else None
                        if text is None:
                            text = texts[value] = floatToGoString(value)
                    line = found[0] + text
                    if s.timestamp is not None:
                        line += f" {s.timestamp}"
                    if s.exemplar:
                        line += openmetrics._compose_exemplar_string(metric, s, s.exemplar)
                    append(line + "\n")
            except Exception as exception:  # as generate_latest: the failing family named
                exception.args = (exception.args or ("",)) + (metric,)
                raise
        append("# EOF\n")
        return "".join(output).encode("utf-8")

    def _built_prefix(self, family: str, name: str, labels: dict) -> tuple[str, str | None]:
        return _om_prefix(name, labels), None

    def _family_header(self, name: str, unit: str, type_and_doc: str) -> str:
        key = (name, unit, type_and_doc)
        found = self._header.get(key)
        if found is None:
            mtype, doc = type_and_doc.split("\n", 1)
            escaped = openmetrics.escape_metric_name(name, openmetrics.UNDERSCORES)
            help_ = openmetrics._escape(doc, openmetrics.ALLOWUTF8, openmetrics._is_legacy_labelname_rune)
            found = f"# HELP {escaped} {help_}\n# TYPE {escaped} {mtype}\n"
            if unit:
                found += f"# UNIT {escaped} {unit}\n"
            self._header[key] = found
        return found


class _One:
    """One family as a registry (prometheus_client's renderers take a registry)."""

    def __init__(self, metric) -> None:
        self.metric = metric

    def collect(self):
        return iter((self.metric,))


def _om_prefix(name: str, labels: dict) -> str:
    rune = openmetrics._is_legacy_labelname_rune
    escaped = openmetrics._escape(name, openmetrics.UNDERSCORES, rune)
    if not labels:
        return escaped + " "
    name_of, value_of = openmetrics.escape_label_name, openmetrics._escape
    pairs = ",".join(
        f'{name_of(k, openmetrics.UNDERSCORES)}="{value_of(v, openmetrics.ALLOWUTF8, rune)}"'
        for k, v in sorted(labels.items())
    )
    return f"{escaped}{{{pairs}}} "
