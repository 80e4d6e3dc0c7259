"""The OpenAPI 3.1 document served at /v1/openapi.json."""

from __future__ import annotations

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {
        400: "malformed request: MALFORMED_REQUEST (HTTP the server cannot parse), TOO_DEEP (JSON nested "
        "deeper than 32 levels), MALFORMED_JSON, INVALID_REQUEST, ...",
        401: "missing or unknown API key",
        403: "admin key required, or a change asked with an ops (read-only) key",
        404: "not found",
        409: "conflict (duplicate client order id, order no longer open)",
        410: "the journal no longer holds the order's records (journal_retention = delete)",
        422: "refused by the exchange (reason code in error.code)",
        429: "RATE_LIMITED: the account's (or ops key's) rate limit, or, for requests without a valid "
        "key, the per-IP limit (preauth_rate_limit)",
        503: "JOURNAL_WRITE_FAILED (known not journaled: nothing was done), not ready, OVERLOADED "
        "(refused unsequenced; also an order-entry request with 16 or more requests pipelined behind it on "
        "its connection, or a new order read while 8 of its connection's are in flight) or "
        "NOT_LEADER (a cluster standby: error.leader names the leader's url, "
        "fix and binary endpoints; during an election error.election is true and error.retry_after_s "
        "says when); retry after Retry-After",
        504: "OUTCOME_UNKNOWN: the journal did not answer and the command may be durable (the node "
        "resolves it before sequencing anything else); look the order up by client order id "
        "(GET /v1/orders/by-client-id/{client_order_id}) or resend it with the same client order id",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


# The order lookups' own 410 and 503 (engine/order_index.py says when each applies).
_LOOKUP_ERRORS = {
    "410": _json(
        _ERROR,
        "ORDER_EVICTED: the id is older than the lookup window (the newest `lookup_window_orders`, "
        "default 1,000,000, order ids; error.window_orders says how many); ORDER_HISTORY_GONE: it "
        "finished before this node started and retention removed its history",
    ),
    "503": _json(
        _ERROR,
        "INDEX_REBUILDING: it finished before this node started and the order index is still being "
        "read back from the journal or stream; OUTCOME_PENDING (by client order id): it is in a batch "
        "answered OUTCOME_UNKNOWN that the node is still resolving; retry after Retry-After",
    ),
}
_ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_OPS_ACCOUNT = {
    "name": "account",
    "in": "query",
    "schema": {"type": "string"},
    "description": "with an ops key (required then): the account whose orders to read",
}
_SYMBOL = {"name": "symbol", "in": "path", "required": True, "schema": {"type": "string"}}
_EVENTS = {"$ref": "#/components/schemas/EventsResult"}

_SCOPE = {"enum": ["venue", "symbol", "account"]}
_TARGET = {
    "type": "string",
    "maxLength": 64,
    "default": "",
    "description": "empty for venue; symbol; account",
}
_LIMIT = {"type": "integer", "minimum": 0, "default": 0, "description": "0 = no limit"}
_RISK_LIMITS = {
    "type": "object",
    "required": ["scope"],
    "additionalProperties": False,
    "properties": {
        "scope": _SCOPE,
        "target": _TARGET,
        **{
            name: _LIMIT
            for name in (
                "max_order_qty",
                "max_order_notional",
                "price_band_bps",
                "max_open_orders",
                "max_open_notional",
                "max_orders_per_sec",
                "max_cancel_ratio",
                "max_position",
            )
        },
    },
}
_RISK_AUDIT = {
    "type": "object",
    "properties": {
        "records": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "seq": {"type": "integer"},
                    "ts": {"type": "integer", "description": "the sequencer's time, ns since the epoch"},
                    "requested_by": {"type": "string", "description": "admin, or automation:<alert>"},
                    "kind": {"type": "string", "enum": ["limits", "kill_switch", "halt"]},
                    "scope": {"type": "string", "enum": ["venue", "symbol", "account"]},
                    "target": {"type": "string"},
                    "old": {"type": "object", "description": "limits; or engaged/halted and reason"},
                    "new": {"type": "object"},
                },
            },
        },
        "next_after": {"type": ["integer", "null"], "description": "pass as ?after= for the next page"},
    },
}
_KILL_SWITCH = {
    "type": "object",
    "required": ["scope", "engaged"],
    "additionalProperties": False,
    "properties": {
        "scope": _SCOPE,
        "target": _TARGET,
        "engaged": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": 200},
        "cancel_orders": {"type": "boolean", "default": True},
    },
}
_TRANSFER = {
    "type": "object",
    "required": ["transfer_id", "account", "asset", "kind", "amount"],
    "additionalProperties": False,
    "properties": {
        "transfer_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "idempotency key: a repeat answers with the original transfer_applied event "
            "(repeated: true); the same id with other content is 409 TRANSFER_ID_CONFLICT",
        },
        "account": {"type": "string", "minLength": 1, "maxLength": 64},
        "asset": {"type": "string", "description": "a name listed in [[assets]]"},
        "kind": {"enum": ["deposit", "withdrawal", "adjustment"]},
        "amount": {
            "type": "integer",
            "description": "integer units of the asset (10**-scale); > 0 for deposits and withdrawals, "
            "signed and non-zero for adjustments. A withdrawal beyond available is 422 INSUFFICIENT_BALANCE",
        },
    },
}
_FINDINGS = {
    "type": "object",
    "properties": {
        "total": {"type": "integer"},
        "by_symbol": {"type": "object", "additionalProperties": {"type": "integer"}},
        "latest": {
            "type": "array",
            "description": "newest first; kind-specific fields besides these",
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string"},
                    "symbol": {"type": "string"},
                    "seq": {"type": "integer"},
                    "ts": {"type": "integer"},
                    "owner": {"type": "string"},
                    "accounts": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_SURVEILLANCE_REPORT = {
    "type": "object",
    "properties": {
        "findings": {
            "type": "object",
            "properties": {k: _FINDINGS for k in ("wash_trade", "spoofing", "layering", "price_move")},
        },
        "anomaly": {
            "type": "object",
            "properties": {
                "interval_end_ts": {"type": ["integer", "null"]},
                "max_z": {"type": "object", "additionalProperties": {"type": "number"}},
                "top_accounts": {"type": "array", "items": {"type": "object"}},
                "price_move_z": {"type": "object", "additionalProperties": {"type": "number"}},
                "outliers": {"type": "array", "items": {"type": "object"}},
            },
        },
        "scores": {"type": "object", "description": "as GET /v1/admin/surveillance"},
        "analysed_through_seq": {
            "type": "integer",
            "description": "the last event the worker had analysed when it published this (0: none yet)",
        },
        "analysed_through_ts": {"type": "integer", "description": "that event's sequencer timestamp (ns)"},
        "published_ns": {
            "type": "integer",
            "description": "when the worker published it (ns since the epoch)",
        },
        "age_s": {
            "type": "number",
            "description": "seconds since then: reads never analyse inline; the worker publishes "
            "about once a second",
        },
        "buffer": {
            "type": "object",
            "description": "the worker's backlog now: backlog_events, max_buffered_events, dropped_batches, "
            "processed_batches, cpu_share (its budget, of one core), busy_s (CPU it spent)",
        },
    },
}
_LEDGER_PARAMS = [
    {
        "name": "after",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0},
        "description": "entries with seq > after (the previous page's next_after); absent: from the "
        "oldest entry held",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]
_LEDGER = {
    "type": "object",
    "properties": {
        "account": {"type": "string"},
        "entries": {
            "type": "array",
            "description": "oldest first; at most limit, plus the rest of the last entry's seq (one "
            "command's entries are never split across pages)",
            "items": {
                "type": "object",
                "required": ["seq", "ts", "asset", "kind", "amount", "balance"],
                "properties": {
                    "seq": {"type": "integer", "description": "the command that made the entry"},
                    "ts": {"type": "integer", "description": "its sequencer timestamp (ns since the epoch)"},
                    "asset": {"type": "string"},
                    "kind": {"enum": ["deposit", "withdrawal", "adjustment", "trade", "fee"]},
                    "amount": {"type": "integer", "description": "signed change of the total"},
                    "balance": {"type": "integer", "description": "the total after it"},
                    "transfer_id": {"type": "string", "description": "a transfer's id"},
                    "symbol": {
                        "type": "string",
                        "description": "a trade's or fee's symbol (with settlement)",
                    },
                    "order_id": {"type": "integer", "description": "the account's order in that trade"},
                },
            },
        },
        "next_after": {"type": "integer", "description": "`after` for the next page"},
        "has_more": {"type": "boolean"},
        "evicted_through": {
            "type": "integer",
            "description": "seq of the newest entry no longer held (0: none); after below it is 410",
        },
    },
}
_LEDGER_ERRORS = {
    "410": _json(
        _ERROR,
        "LEDGER_EVICTED: `after` is older than the entries held (the newest ledger_entries_per_account, "
        "default 1,000, per account); error.evicted_through is the lowest `after` answered",
    ),
    "503": _json(
        _ERROR,
        "LEDGER_REBUILDING: the node started moments ago and is still reading the entries from "
        "before its start back from the journal or stream; retry after Retry-After",
    ),
}
_BALANCES = {
    "type": "object",
    "properties": {
        "account": {"type": "string"},
        "credit_checks": {"type": "boolean"},
        "balances": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "asset": {"type": "string"},
                    "total": {"type": "integer"},
                    "held": {"type": "integer", "description": "reserved by open orders"},
                    "available": {"type": "integer", "description": "total - held"},
                },
            },
        },
    },
}

_ACCOUNT_PARAM = {"name": "account", "in": "path", "required": True, "schema": {"type": "string"}}

_HALT = {
    "type": "object",
    "required": ["symbol", "halted"],
    "additionalProperties": False,
    "properties": {
        "symbol": {"type": "string"},
        "halted": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": 200},
    },
}

OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "Loom Exchange",
        "version": "1",
        "description": "Order entry, order queries and market data. Prices and quantities are "
        "integers in the instrument's units. Orders are acknowledged only once durable. Every "
        "order-entry answer (POST, DELETE and PATCH under /v1/orders), errors and refusals included, "
        "carries an X-Trace-Id header: the order's (or command's) trace id when the core answered it, "
        "else the request's own (the caller's traceparent, or a fresh id). Every error, a request "
        'the server cannot parse included, is JSON {"error": {"code", "message"}}: 400 '
        "MALFORMED_REQUEST, 431 HEADERS_TOO_LARGE (a request line or header beyond 8190 bytes). "
        "Another account's order is answered exactly like an id never assigned, on every endpoint.",
    },
    "components": {
        "securitySchemes": {
            "apiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "A trader's key (its account's orders), or an ops key (read-only: any "
                "account's orders and traces and the admin GET views; 403 FORBIDDEN for any change)",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "leader": {
                                "type": "object",
                                "description": "NOT_LEADER: the live leader ('' fields during an election)",
                                "properties": {
                                    "node": {"type": "string"},
                                    "epoch": {"type": "integer"},
                                    "url": {"type": "string", "description": "REST and WebSocket base URL"},
                                    "fix": {"type": "string", "description": "FIX host:port"},
                                    "binary": {"type": "string", "description": "binary host:port"},
                                },
                            },
                            "election": {"type": "boolean", "description": "NOT_LEADER: no live leader"},
                            "retry_after_s": {"type": "number"},
                        },
                    }
                },
            },
            "OrderRequest": {
                "type": "object",
                "required": ["symbol", "side", "qty"],
                "additionalProperties": False,
                "properties": {
                    "symbol": {"type": "string"},
                    "side": {"enum": ["buy", "sell"]},
                    "qty": {"type": "integer"},
                    "type": {"enum": ["limit", "market"], "default": "limit"},
                    "price": {"type": "integer", "default": 0},
                    "tif": {"enum": ["gtc", "ioc", "fok"], "default": "gtc"},
                    "post_only": {"type": "boolean", "default": False},
                    "stp": {
                        "enum": ["none", "cancel_newest", "cancel_oldest", "cancel_both"],
                        "default": "cancel_newest",
                    },
                    "client_order_id": {"type": "string", "maxLength": 64, "default": ""},
                },
            },
            "AmendRequest": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "qty": {"type": "integer", "description": "new total quantity; 0 = unchanged"},
                    "price": {"type": "integer", "description": "0 = unchanged"},
                    "new_client_order_id": {"type": "string"},
                },
            },
            "Event": {
                "type": "object",
                "description": (
                    "One core event. A `trade` carries `maker_fee` and `taker_fee`: each side's fee in "
                    "units of the instrument's quote asset, negative for a maker rebate (docs/accounts.md). "
                    "An order whose reservation exceeds available is rejected INSUFFICIENT_BALANCE (422); "
                    "a buy beyond the account's max_position is POSITION_LIMIT; a market order's remainder "
                    "beyond the instrument's maximum sweep is cancelled MARKET_PROTECTION"
                ),
                "properties": {
                    "type": {"type": "string"},
                    "seq": {"type": "integer"},
                    "maker_fee": {"type": "integer"},
                    "taker_fee": {"type": "integer"},
                },
            },
            "EventsResult": {
                "type": "object",
                "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    "order": {"$ref": "#/components/schemas/Order"},
                },
            },
            "Order": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "integer"},
                    "client_order_id": {"type": "string"},
                    "symbol": {"type": "string"},
                    "side": {"type": "string"},
                    "status": {"enum": ["open", "filled", "cancelled"]},
                    "price": {"type": "integer"},
                    "qty": {"type": "integer"},
                    "leaves": {"type": "integer"},
                    "filled": {"type": "integer"},
                    "fills": {
                        "type": ["array", "null"],
                        "items": {"type": "object"},
                        "description": "null for an older finished order (its compact record keeps none)",
                    },
                },
            },
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/": {
            "get": {
                "security": [],
                "summary": "Landing page (HTML): links to the API, the metrics and the docs",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/docs/{name}": {
            "get": {
                "security": [],
                "summary": "A document of the repository: architecture.md, websocket.md, fix.md, loom.toml",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "the document (text/markdown or text/plain)"},
                    "404": {"description": "no such document, or not in this installation"},
                },
            }
        },
        "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
        "/readyz": {
            "get": {
                "security": [],
                "responses": {"200": {"description": "ready"}, **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "security": [],
                "summary": "Prometheus metrics (OpenMetrics with exemplars when asked for); with "
                "metrics_port set, served only on that listener (404 here)",
                "responses": {"200": {"description": "metrics"}},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "security": [],
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI"}},
            }
        },
        "/v1/orders": {
            "post": {
                "summary": "Submit an order",
                "description": (
                    "Orders pipelined on one HTTP/1.1 connection are answered in request order. "
                    "A connection's new orders are admitted while fewer than 8 are in flight (admitted, "
                    "not yet answered) and submitted together, sharing a commit batch; one read while 8 "
                    "are, or while the commit queue refuses orders, is refused at once, 503 OVERLOADED "
                    "with Retry-After. Any other request waits its turn."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/OrderRequest"}}
                    },
                },
                "responses": {
                    "201": _json(_EVENTS, "accepted (durable)"),
                    **_errors(400, 401, 409, 422, 429, 503, 504),
                },
            },
            "get": {
                "summary": "Open orders of the account",
                "parameters": [{"name": "symbol", "in": "query", "schema": {"type": "string"}}, _OPS_ACCOUNT],
                "responses": {"200": {"description": "open orders"}, **_errors(400, 401, 429)},
            },
            "delete": {
                "summary": "Cancel all open orders (optionally of one symbol)",
                "parameters": [{"name": "symbol", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _json(_EVENTS, "cancelled"), **_errors(401, 422, 429, 503, 504)},
            },
        },
        "/v1/orders/{order_id}": {
            "parameters": [_ORDER_ID],
            "get": {
                "summary": (
                    "Order state and fills: open orders, and finished ones among the newest "
                    "lookup_window_orders ids, also after a restart or failover (fills null for "
                    "older finished ones: see /trace)"
                ),
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Order"}, "the order"),
                    **_errors(400, 401, 404, 429),
                    **_LOOKUP_ERRORS,
                },
            },
            "delete": {
                "summary": "Cancel an order",
                "responses": {
                    "200": _json(_EVENTS, "cancelled"),
                    **_errors(400, 401, 404, 409, 429, 503, 504),
                },
            },
            "patch": {
                "summary": "Amend price and/or quantity",
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AmendRequest"}}}
                },
                "responses": {
                    "200": _json(_EVENTS, "amended"),
                    **_errors(400, 401, 404, 409, 422, 429, 503, 504),
                },
            },
        },
        "/v1/orders/{order_id}/trace": {
            "parameters": [_ORDER_ID],
            "get": {
                "summary": (
                    "Trace id, trace link, the order's whole history and its stage timings "
                    "(receive->sequenced, journal, match, ack; journal-backed)"
                ),
                "responses": {
                    "200": {"description": "history"},
                    **_errors(400, 401, 404, 410, 429, 503),
                    "410": _json(
                        _ERROR,
                        "ORDER_EVICTED / ORDER_HISTORY_GONE as for GET /v1/orders/{order_id} (an "
                        "account's key: the journal is read only for the caller's own orders); "
                        "JOURNAL_RANGE_GONE (ops key): the journal no longer holds the order's records",
                    ),
                    "503": _json(
                        _ERROR,
                        "INDEX_REBUILDING (an account's key, as GET /v1/orders/{order_id}), or "
                        "LOOKUP_BUSY: every history-lookup slot is taken (unknown ids never take "
                        "one); retry after Retry-After",
                    ),
                    "504": _json(_ERROR, "LOOKUP_TIMEOUT: reading the history took too long"),
                },
            },
        },
        "/v1/orders/by-client-id/{client_order_id}": {
            "get": {
                "summary": (
                    "The order a client order id named (taken while the order is open or among the "
                    "venue's newest 100,000 orders), answered like GET /v1/orders/{order_id}: the "
                    "lookup after a lost answer"
                ),
                "parameters": [
                    {"name": "client_order_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    _OPS_ACCOUNT,
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Order"}, "the order"),
                    **_errors(400, 401, 404, 429),
                    **_LOOKUP_ERRORS,
                },
            },
            "delete": {
                "summary": "Cancel an order by client order id",
                "parameters": [
                    {"name": "client_order_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _json(_EVENTS, "cancelled"), **_errors(401, 404, 409, 429, 503, 504)},
            },
        },
        "/v1/book/{symbol}": {
            "get": {
                "security": [],
                "summary": "Order book depth: [price, qty, orders] per level, best first",
                "parameters": [_SYMBOL, {"name": "depth", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "depth"}, **_errors(400, 404)},
            }
        },
        "/v1/trades/{symbol}": {
            "get": {
                "security": [],
                "summary": "Recent trades",
                "parameters": [_SYMBOL, {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "trades"}, **_errors(400, 404)},
            }
        },
        "/v1/candles/{symbol}": {
            "get": {
                "security": [],
                "summary": "OHLCV candles from the durable trades (bucket starts and the range in ns "
                "since the epoch, the events' own clock; a restart reproduces them). `partial`: "
                "candles from before the node's start are still being read back",
                "parameters": [
                    _SYMBOL,
                    {
                        "name": "interval",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["1m", "5m", "1h"]},
                    },
                    {"name": "start", "in": "query", "schema": {"type": "integer"}},
                    {"name": "end", "in": "query", "schema": {"type": "integer"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10000}},
                ],
                "responses": {
                    "200": {
                        "description": "{symbol, interval, partial, candles: [{start, open, high, low, "
                        "close, volume, trades}]}, oldest first"
                    },
                    **_errors(400, 404),
                },
            }
        },
        "/v1/ticker/{symbol}": {
            "get": {
                "security": [],
                "summary": "Best bid/ask, last trade, and the 24 h volume, high, low and trade count "
                "(the 24 h ending at the newest durable event)",
                "responses": {"200": {"description": "ticker"}, **_errors(404)},
                "parameters": [_SYMBOL],
            }
        },
        "/v1/instruments": {
            "get": {"security": [], "responses": {"200": {"description": "listed instruments"}}}
        },
        "/v1/admin/snapshot": {
            "post": {
                "summary": "Take a snapshot now (admin key): captured at a batch boundary (a fork), "
                "written by a child process; the answer waits for it, the order path does not",
                "responses": {
                    "200": {"description": "snapshot written"},
                    **_errors(403),
                    "500": _json(_ERROR, "SNAPSHOT_FAILED: not written; the previous snapshot stands"),
                },
            }
        },
        "/v1/admin/stats": {
            "get": {
                "summary": "Journal and batching figures (admin key)",
                "responses": {"200": {"description": "figures"}, **_errors(403)},
            }
        },
        "/v1/admin/automation": {
            "post": {
                "security": [],
                "summary": "Alertmanager webhook (payload version 4) driving runbook automation; "
                "Authorization: Bearer <automation token> (the admin key by default)",
                "responses": {"200": {"description": "what was done, per outcome"}, **_errors(400, 401)},
            }
        },
        "/v1/admin/automation/audit": {
            "get": {
                "summary": "Runbook automation audit records (admin key)",
                "responses": {"200": {"description": "audit records, oldest first"}, **_errors(403)},
            }
        },
        "/v1/admin/faults": {
            "post": {
                "summary": 'Fault injection for drills (admin key): {"journal_write_errors": true|false}',
                "responses": {"200": {"description": "faults now injected"}, **_errors(400, 403)},
            }
        },
        "/v1/admin/cluster": {
            "get": {
                "summary": "This node's place in the cluster (admin key): role, leader, epoch, lag; "
                "?verify=1 adds the state hash",
                "responses": {"200": {"description": "cluster status"}, **_errors(403)},
            }
        },
        "/v1/admin/cluster/step-down": {
            "post": {
                "summary": "The leader stops accepting and releases the lease to a standby (admin key)",
                "responses": {"200": {"description": "status after stepping down"}, **_errors(403, 409)},
            }
        },
        "/v1/admin/risk": {
            "get": {
                "summary": "Risk limits, kill switches and halts (admin key)",
                "responses": {"200": {"description": "the risk state"}, **_errors(403)},
            }
        },
        "/v1/admin/risk/audit": {
            "get": {
                "summary": "Every change of risk limits, kill switches and halts: who, when, scope, "
                "old and new value, oldest first (admin key or ops key)",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {"200": _json(_RISK_AUDIT, "audit records"), **_errors(400, 403)},
            }
        },
        "/v1/admin/risk/limits": {
            "put": {
                "summary": "Replace the risk limits of one scope; all zero removes them (admin key)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _RISK_LIMITS}}},
                "responses": {
                    "200": _json(_EVENTS, "risk_limits_changed event"),
                    **_errors(400, 403, 422, 503, 504),
                },
            }
        },
        "/v1/admin/risk/kill-switch": {
            "post": {
                "summary": "Engage or release a kill switch; engaging cancels resting orders in scope "
                "unless cancel_orders is false (admin key)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _KILL_SWITCH}}},
                "responses": {
                    "200": _json(_EVENTS, "kill_switch_changed event, then the cancellations"),
                    **_errors(400, 403, 422, 503, 504),
                },
            }
        },
        "/v1/admin/risk/halt": {
            "post": {
                "summary": "Halt or resume trading in a symbol (admin key)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _HALT}}},
                "responses": {
                    "200": _json(_EVENTS, "trading_halt_changed event"),
                    **_errors(400, 403, 422, 503, 504),
                },
            }
        },
        "/v1/admin/transfers": {
            "post": {
                "summary": "Deposit, withdraw or adjust an account's balance (admin key; journaled, audited)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _TRANSFER}}},
                "responses": {
                    "200": _json(_EVENTS, "transfer_applied event (who, when, old and new total)"),
                    **_errors(400, 403, 409, 422, 503, 504),
                },
            }
        },
        "/v1/admin/balances/{account}": {
            "get": {
                "summary": "An account's balances per asset (admin key or ops key)",
                "parameters": [_ACCOUNT_PARAM],
                "responses": {"200": _json(_BALANCES, "balances"), **_errors(403)},
            }
        },
        "/v1/balances": {
            "get": {
                "summary": "The caller's own balances per asset (its account key)",
                "responses": {"200": _json(_BALANCES, "balances"), **_errors(401, 403)},
            }
        },
        "/v1/ledger": {
            "get": {
                "summary": "The caller's own ledger entries, oldest first, paged by seq (its account key)",
                "parameters": _LEDGER_PARAMS,
                "responses": {
                    "200": _json(_LEDGER, "a page of entries"),
                    **_LEDGER_ERRORS,
                    **_errors(400, 401, 403),
                },
            }
        },
        "/v1/admin/ledger/{account}": {
            "get": {
                "summary": "An account's ledger entries (admin key or ops key)",
                "parameters": [_ACCOUNT_PARAM, *_LEDGER_PARAMS],
                "responses": {
                    "200": _json(_LEDGER, "a page of entries"),
                    **_LEDGER_ERRORS,
                    **_errors(400, 403),
                },
            }
        },
        "/v1/admin/surveillance": {
            "get": {
                "summary": "Surveillance anomaly scores and top accounts per kind (admin key), as the "
                "worker last published them: analysed_through_seq, age_s",
                "responses": {"200": {"description": "scores"}, **_errors(403)},
            }
        },
        "/v1/admin/surveillance/report": {
            "get": {
                "summary": "Surveillance findings naming owners and accounts: wash trades, spoofing, "
                "layering, price moves; the anomaly model's top accounts (admin or ops key)",
                "responses": {"200": _json(_SURVEILLANCE_REPORT, "the report"), **_errors(403)},
            }
        },
        "/v1/ws": {
            "get": {
                "security": [],
                "summary": "WebSocket: order entry, market data, executions and balances (docs/websocket.md)",
            }
        },
    },
}
