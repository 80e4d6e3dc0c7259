"""REST endpoints of accounts and money (engine/core/balances.py, docs/accounts.md):

    POST /v1/admin/transfers            deposit, withdrawal or adjustment (the admin key)
    GET  /v1/admin/balances/{account}   an account's balances (the admin key or an ops key)
    GET  /v1/balances                   the caller's own balances (its account key)
    GET  /v1/ledger?after=&limit=       the caller's own ledger entries, oldest first (paginated)
    GET  /v1/admin/ledger/{account}     an account's ledger entries (the admin key or an ops key)

A transfer is a journaled command; the reply carries its TransferApplied event (a repeated
transfer_id: the original one, `repeated` true) or the core's rejection. Balances are read
from the engine between batches, as every other GET reads it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from engine.core.balances import MAX_AMOUNT, MAX_TRANSFER_ID_LEN
from engine.core.commands import Transfer
from engine.core.domain import MAX_ACCOUNT_LEN, TransferKind
from engine.core.matcher import MatchingEngine
from engine.gateways.http_answers import error, ok
from engine.gateways.http_auth import admin_action, admin_view, trading_account
from engine.gateways.http_context import CTX
from engine.gateways.http_requests import decode_body, int_query
from engine.gateways.rest_orders import submit
from engine.ledger_index import DEFAULT_PAGE, MAX_PAGE, Evicted, Rebuilding

KINDS = {k.name.lower(): int(k) for k in TransferKind}
ADMIN = "admin"  # requested_by of a transfer made with the admin key (there is one)


class TransferRequest(msgspec.Struct, forbid_unknown_fields=True):
    transfer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TRANSFER_ID_LEN)]
    account: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACCOUNT_LEN)]
    asset: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    kind: Literal["deposit", "withdrawal", "adjustment"]
    amount: Annotated[int, msgspec.Meta(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]


def balances_json(engine: MatchingEngine, account: str) -> dict:
    ledger = engine.ledger
    held = ledger.balances.get(account, {})
    rows = [
        {"asset": asset, "total": b.total, "held": b.held, "available": b.available}
        for asset, b in sorted(held.items())
    ]
    return {"account": account, "balances": rows, "credit_checks": ledger.credit_checks}


async def post_transfer(request: web.Request) -> web.Response:
    admin_action(request)
    req = await decode_body(request, TransferRequest)
    cmd = Transfer(req.transfer_id, req.account, req.asset, KINDS[req.kind], req.amount, ADMIN)
    return await submit(request, cmd)


async def get_account_balances(request: web.Request) -> web.Response:
    admin_view(request)
    return ok(balances_json(request.app[CTX].engine, request.match_info["account"]))


async def get_own_balances(request: web.Request) -> web.Response:
    return ok(balances_json(request.app[CTX].engine, trading_account(request)))


def ledger_page(request: web.Request, account: str) -> web.Response:
    """A page of the account's ledger (engine/ledger_index.py): entries with seq > `after`
    (absent: from the oldest held), at most `limit`; 410 when `after` is older than what is held."""
    after = int_query(request, "after", -1, 0, MAX_AMOUNT)
    limit = int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    try:
        return ok(request.app[CTX].ledger.page(account, after if after >= 0 else None, limit))
    except Evicted as exc:
        return error(410, "LEDGER_EVICTED", str(exc), evicted_through=exc.evicted_through)
    except Rebuilding as exc:
        return error(503, "LEDGER_REBUILDING", f"{exc}: retry after Retry-After")


async def get_own_ledger(request: web.Request) -> web.Response:
    return ledger_page(request, trading_account(request))


async def get_account_ledger(request: web.Request) -> web.Response:
    admin_view(request)
    return ledger_page(request, request.match_info["account"])


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/transfers", post_transfer)
    app.router.add_get("/v1/admin/balances/{account}", get_account_balances)
    app.router.add_get("/v1/balances", get_own_balances)
    app.router.add_get("/v1/ledger", get_own_ledger)
    app.router.add_get("/v1/admin/ledger/{account}", get_account_ledger)
