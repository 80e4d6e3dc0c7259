"""Reading REST requests: the JSON bodies (order, amend), path and query values, and the
refusal of what cannot be read (a 4xx counted in loom_decode_errors).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import hdrs, web

from engine.core.commands import NewOrder
from engine.core.domain import OrderType, SelfTradePrevention, Side, TimeInForce
from engine.gateways.http_answers import error
from engine.gateways.json_depth import MAX_DEPTH, too_deep

SIDES = {"buy": int(Side.BUY), "sell": int(Side.SELL)}
TYPES = {"limit": int(OrderType.LIMIT), "market": int(OrderType.MARKET)}
TIFS = {"gtc": int(TimeInForce.GTC), "ioc": int(TimeInForce.IOC), "fok": int(TimeInForce.FOK)}
STPS = {m.name.lower(): int(m) for m in SelfTradePrevention}
_json = msgspec.json.Encoder()
# FIX (tests/test_http_gateway.py): msgspec decodes JSON integers of any size, but the
# journal stores 64-bit integers: a qty/price/order id beyond them made encoding the batch
# raise OverflowError inside the commit loop, which killed it (every later order hung, a 500
# for this one). Out-of-range integers are now a 400 at the gateway, before sequencing.
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX)]


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    symbol: str
    side: Literal["buy", "sell"]
    qty: Int64
    type: Literal["limit", "market"] = "limit"
    price: Int64 = 0
    tif: Literal["gtc", "ioc", "fok"] = "gtc"
    post_only: bool = False
    stp: Literal["none", "cancel_newest", "cancel_oldest", "cancel_both"] = "cancel_newest"
    client_order_id: str = ""


class AmendRequest(msgspec.Struct, forbid_unknown_fields=True):
    qty: Int64 = 0  # new total quantity; 0 = unchanged
    price: Int64 = 0  # 0 = unchanged
    new_client_order_id: str = ""


class Denied(Exception):
    def __init__(self, response: web.Response, decode_error: str = "") -> None:
        self.response = response
        self.decode_error = decode_error  # set when the request itself was unreadable


def unreadable(status: int, code: str, message: str) -> Denied:
    """A refusal of a body, path or query that cannot be read: counted in loom_decode_errors."""
    return Denied(error(status, code, message), code)


def _is_json(content_type: str) -> bool:
    content_type = content_type.lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def decode_body(request: web.Request, kind):
    body = await request.read()
    # FIX: a body declared as something else (a form, text/plain, ...) was parsed as JSON
    # and executed anyway; it is a 415 now. No Content-Type at all is still read as JSON.
    if body and hdrs.CONTENT_TYPE in request.headers and not _is_json(request.content_type):
        message = f"send the body as application/json, not {request.content_type}"
        raise unreadable(415, "UNSUPPORTED_MEDIA_TYPE", message)
    if too_deep(body):
        raise unreadable(400, "TOO_DEEP", f"body nests JSON deeper than {MAX_DEPTH} levels")
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise unreadable(400, "INVALID_REQUEST", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # FIX: invalid UTF-8 raises UnicodeDecodeError (not a DecodeError): it was a 500.
        raise unreadable(400, "MALFORMED_JSON", f"body is not valid JSON: {exc}") from None


def order_id_of(request: web.Request) -> int:
    text = request.match_info["order_id"]
    try:
        value = int(text)
    except ValueError:
        raise unreadable(400, "INVALID_ORDER_ID", f"order id must be a whole number: {text!r}") from None
    if value <= 0:
        raise unreadable(400, "INVALID_ORDER_ID", "order id must be positive")
    if value > INT64_MAX:  # FIX: see Int64 above (the journal holds 64-bit integers)
        raise unreadable(400, "INVALID_ORDER_ID", f"order id must be at most {INT64_MAX}")
    return value


def new_order_command(account: str, req: OrderRequest) -> NewOrder:
    return NewOrder(
        account,
        req.client_order_id,
        req.symbol,
        SIDES[req.side],
        TYPES[req.type],
        req.price,
        req.qty,
        TIFS[req.tif],
        req.post_only,
        STPS[req.stp],
    )


def int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise unreadable(400, "INVALID_QUERY", f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise unreadable(400, "INVALID_QUERY", f"{name} must be between {lo} and {hi}")
    return value
