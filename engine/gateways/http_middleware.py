"""The middleware every REST request passes: JSON errors (client mistakes are 4xx, never
500), the pre-auth limit, X-Trace-Id on order entry, the access log.
"""

from __future__ import annotations

import functools
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from engine.bad_input_log import BAD_INPUT
from engine.gateways.http_answers import error, not_leader
from engine.gateways.http_auth import api_key
from engine.gateways.http_context import CALLER, CTX, ORDER_ENTRY, ORDER_ID, PROBES, request_trace_id
from engine.gateways.http_errors import describe
from engine.gateways.http_requests import Denied
from engine.gateways.http_shed import shed_pipeline
from engine.logfmt import fields
from engine.service import NotLeader, Overloaded, ServiceStopped

log = logging.getLogger("loom.http")


@web.middleware
async def json_errors(request: web.Request, handler):
    started = time.perf_counter()
    response = await _answer(request, handler)
    if request.get(ORDER_ENTRY) and "X-Trace-Id" not in response.headers:
        # Refused before the core saw it (overload, not leader, a bad body, ...): the
        # request's own trace id, so even this answer can be found in the logs and traces.
        response.headers["X-Trace-Id"] = request_trace_id(request)
    access = request.app[CTX].access
    if access.sampled() and not isinstance(response, web.WebSocketResponse):  # a session logs its own
        access.rest(
            request.method,
            request.path,  # never the query: a key may ride there
            response.status,
            time.perf_counter() - started,
            request.remote,
            response.headers.get("X-Trace-Id", ""),
            request.get(CALLER, ""),
            request.get(ORDER_ID, request.match_info.get("order_id")),
        )
    return response


async def _answer(request: web.Request, handler) -> web.StreamResponse:
    ctx = request.app[CTX]
    if not api_key(request) and request.path not in PROBES and not ctx.allow_unauthenticated(request.remote):
        return ctx.preauth_refusal()
    try:
        return await handler(request)
    except Denied as denied:  # a client mistake found before any work: its 4xx reply
        if denied.decode_error:
            count_decode_error(request, denied.decode_error)
        return denied.response
    except web.HTTPException as exc:
        if exc.status == 413:  # a body beyond client_max_size: unreadable by definition
            count_decode_error(request, "PAYLOAD_TOO_LARGE")
        if exc.content_type == "application/json":
            raise
        code = exc.reason.upper().replace(" ", "_")
        response = error(exc.status, code, exc.text or exc.reason)
        # FIX: keep the Allow header of a 405 (RFC 9110 requires it); it was dropped.
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Overloaded as exc:  # admission control: nothing was sequenced, resend later
        return error(503, "OVERLOADED", str(exc), exc.retry_after_s)
    except NotLeader as exc:  # a cluster standby: the client goes to the leader (or waits out the election)
        return not_leader(exc)
    except ServiceStopped as exc:
        return error(503, "SHUTTING_DOWN", str(exc))
    except HttpProcessingError as exc:  # the body could not be read (bad chunking, short body)
        status, code, message = describe(exc)
        count_decode_error(request, code)
        BAD_INPUT.note("http", request.remote, message)
        response = error(status, code, message)
        response.force_close()
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_gone(request):  # its business, not an error
            log.debug("client %s disconnected during %s %s", request.remote, request.method, request.path)
            return error(400, "CLIENT_DISCONNECTED", "the client closed the connection")
        trace_id = request_trace_id(request) if request.get(ORDER_ENTRY) else None
        ids = fields(trace_id=trace_id, account=request.get(CALLER), order_id=request.get(ORDER_ID))
        log.exception("unhandled error on %s %s", request.method, request.path, extra=ids)
        return error(500, "INTERNAL", "internal error (logged)")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def order_entry(handler):
    """Marks a handler that places, cancels or amends orders: every answer it gives,
    errors included, carries X-Trace-Id."""

    @functools.wraps(handler)
    async def marked(request: web.Request) -> web.StreamResponse:
        request[ORDER_ENTRY] = True
        shed_pipeline(request, request.app[CTX].service)  # a deep pipeline: OVERLOADED at once
        return await handler(request)

    return marked


def count_decode_error(request: web.Request, code: str) -> None:
    request.app[CTX].observer.decode_error("rest", code)
