"""What a newcomer is shown first: the start-up banner's lines and the landing page at `/`
(engine/gateways/landing.py) name the same endpoints and documents, from this one list.

FIX (issue 14): the banner named the ports and `curl .../v1/book/BTC-USD` only; /metrics,
the OpenAPI document, the WebSocket and the docs were found by reading the README.
"""

from __future__ import annotations

from pathlib import Path

# The documents, by the path the landing page serves them under (/docs/NAME), and their
# place in the repository. A checkout has them; an installed wheel (the compose image) does
# not, and then the landing page names the paths instead of linking them.
REPOSITORY = Path(__file__).resolve().parent.parent
DOCS = {
    "architecture.md": ("docs/architecture.md", "the path of one order through the code; price units"),
    "websocket.md": ("docs/websocket.md", "the WebSocket protocol: ops, channels, messages"),
    "fix.md": ("docs/fix.md", "FIX 4.4 sessions: CompIDs, tags, time in force"),
    "loom.toml": ("examples/loom.toml", "every configuration setting, commented"),
}
# The demo's order flow (2,000/s) grows a journal kept whole by about this much a day.
DEMO_JOURNAL_GB_PER_DAY = "7"

# (path on the REST port, what it is)
HTTP_ENDPOINTS = (
    ("/v1/openapi.json", "the OpenAPI document of the REST API under /v1 (orders, lookups, book, admin)"),
    ("/v1/instruments", "the instruments, with their tick and lot sizes"),
    ("/v1/ws", "WebSocket: order entry, executions, market data (docs/websocket.md)"),
    ("/metrics", "Prometheus metrics (OpenMetrics with exemplars when asked for)"),
    ("/healthz", "liveness"),
    ("/readyz", "readiness (503 on a standby, while draining or settling)"),
)


def doc_path(name: str) -> Path | None:
    """The document served as /docs/NAME, if it is one and this installation has it."""
    entry = DOCS.get(name)
    if entry is None:
        return None
    path = REPOSITORY / entry[0]
    return path if path.is_file() else None


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def banner(
    host: str, ports: dict[str, int], demo: bool = False, journal_retention: str = "keep"
) -> list[str]:
    """The lines `loom run` prints after its ready line."""
    where = f"{url_host(host)}:{ports['http']}"
    base = f"http://{where}"
    lines = [
        f"loom: open {base}/ for links to everything below",
        f"loom: REST API described at {base}/v1/openapi.json; WebSocket ws://{where}/v1/ws",
        f"loom: metrics {base}/metrics, health {base}/healthz and {base}/readyz",
    ]
    if "fix" in ports:
        lines.append(f"loom: FIX 4.4 on {host}:{ports['fix']} (TargetCompID LOOM; docs/fix.md)")
    if "binary" in ports:
        protocol = "engine/gateways/binary/protocol.py"
        lines.append(f"loom: binary protocol on {host}:{ports['binary']} ({protocol})")
    if demo and journal_retention == "keep":
        lines.append(
            f"loom: the demo's journal grows by about {DEMO_JOURNAL_GB_PER_DAY} GB a day "
            "(journal_retention keep); LOOM_JOURNAL_RETENTION=delete bounds it"
        )
    lines.append("loom: docs: " + ", ".join(repo_path for repo_path, _what in DOCS.values()))
    return lines
