"""The landing page at `/`: a small HTML page linking what the node serves and the docs
(engine/endpoints.py has the list), and the documents themselves under /docs/NAME."""

from __future__ import annotations

import html

from aiohttp import web

from engine import __version__
from engine.endpoints import DOCS, HTTP_ENDPOINTS, doc_path


def page(host: str) -> str:
    """The landing page for a request that arrived with this Host header."""
    items = "\n".join(
        f'<li><a href="{path}">{html.escape(path)}</a>: {html.escape(what)}</li>'
        for path, what in HTTP_ENDPOINTS
        if path != "/v1/ws"
    )
    ws = html.escape(f"ws://{host}/v1/ws")
    docs = "\n".join(
        (
            f'<li><a href="/docs/{name}">{html.escape(repo_path)}</a>: {html.escape(what)}</li>'
            if doc_path(name)
            else f"<li>{html.escape(repo_path)} (in the repository): {html.escape(what)}</li>"
        )
        for name, (repo_path, what) in DOCS.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Loom Exchange</title></head>
<body style="font-family: sans-serif; max-width: 48em; margin: 2em auto">
<h1>Loom Exchange {html.escape(__version__)}</h1>
<p>An order-matching exchange. Prices and quantities are integers in each instrument's units
(<a href="/v1/instruments">/v1/instruments</a> lists the tick and lot sizes).</p>
<h2>This node</h2>
<ul>
{items}
<li><code>{ws}</code>: WebSocket order entry, executions and market data</li>
</ul>
<h2>Documents</h2>
<ul>
{docs}
</ul>
</body></html>
"""


async def landing(request: web.Request) -> web.Response:
    return web.Response(text=page(request.host), content_type="text/html")


async def document(request: web.Request) -> web.Response:
    path = doc_path(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="no such document\n")
    kind = "text/markdown" if path.suffix == ".md" else "text/plain"
    return web.Response(text=path.read_text(), content_type=kind)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", landing)
    app.router.add_get("/docs/{name}", document)
