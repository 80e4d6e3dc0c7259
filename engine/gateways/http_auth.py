"""Who is calling: the API key of a request, its account (or an ops key's read-only access),
the rate limit, and the admin checks.
"""

from __future__ import annotations

from aiohttp import web

from engine.gateways.http_answers import error
from engine.gateways.http_context import CALLER, CTX
from engine.gateways.http_requests import Denied


def api_key(request: web.Request) -> str | None:
    return api_key_in(request.headers)


def api_key_in(headers) -> str | None:
    """The API key in a request's headers (X-API-Key, else a Bearer token), or None."""
    key = headers.get("X-API-Key")
    if not key:
        auth = headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
    # FIX: a header with bytes that are not UTF-8 arrives with surrogate escapes, which
    # made hashing the key raise UnicodeEncodeError (a 500): no such key can exist.
    if key:
        try:
            key.encode()
        except UnicodeEncodeError:
            return None
    return key


def caller(request: web.Request) -> str | None:
    """The caller's account, or None for an ops key (read-only, any account); 401 for no
    valid key, 429 past the rate limit."""
    ctx = request.app[CTX]
    key = api_key(request)
    account = ctx.accounts.authenticate(key)
    limited = account
    if account is None:
        operator = ctx.accounts.operator(key)
        if operator is None:
            if key and not ctx.allow_unauthenticated(request.remote):  # guessing keys
                raise Denied(ctx.preauth_refusal())
            raise Denied(error(401, "UNAUTHENTICATED", "a valid X-API-Key header is required"))
        limited = f"ops:{operator}"  # its own bucket: an operator named like an account shares none
    request[CALLER] = limited
    if not ctx.allow(limited):
        raise Denied(error(429, "RATE_LIMITED", f"more than {ctx.rate:g} requests per second"))
    return account


_READ_ONLY = "an ops key is read-only: it may read orders, traces and the admin views, not {}"


def trading_account(request: web.Request) -> str:
    """The trading account of the caller's key (an ops key: 403)."""
    account = caller(request)
    if account is None:
        raise Denied(error(403, "FORBIDDEN", _READ_ONLY.format("place, cancel or amend orders")))
    return account


def reader(request: web.Request) -> str | None:
    """The account whose orders the caller may read, or None for an ops key (any account)."""
    return caller(request)


def admin_view(request: web.Request) -> None:
    """An admin GET view: the admin key or an ops key, else 403."""
    accounts = request.app[CTX].accounts
    key = api_key(request)
    if not accounts.is_admin(key) and accounts.operator(key) is None:
        raise Denied(error(403, "FORBIDDEN", "the admin key or an ops key is required"))


def admin_action(request: web.Request) -> None:
    """An admin action (it changes something): the admin key only, else 403."""
    accounts = request.app[CTX].accounts
    key = api_key(request)
    if not accounts.is_admin(key):
        ops = accounts.operator(key) is not None
        message = _READ_ONLY.format("this admin action (it needs the admin key)") if ops else None
        raise Denied(error(403, "FORBIDDEN", message or "the admin key is required"))


def named_account(request: web.Request) -> str:
    """The account an ops key names in `?account=` (client order ids and open orders are per account)."""
    account = request.query.get("account", "")
    if not account:
        raise Denied(error(400, "INVALID_QUERY", "an ops key must name the account: ?account=<account>"))
    return account
