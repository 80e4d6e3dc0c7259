"""The HTTP listener's deadlines (issue 13: slowloris connections stayed open for ever).

- A request's head: aiohttp's keep-alive timer runs from the connection's start and from
  each answer, and closes a connection still waiting for a complete request head when it
  fires. With `http_idle_s` as keepalive_timeout (aiohttp's default is 3,630 s) it is both
  the keep-alive idle timeout and the head's deadline: a client trickling header bytes is
  closed as surely as a silent one.
- A request's body: `body_deadline` reads the body before the handler, within `http_body_s`
  (408 REQUEST_TIMEOUT and the connection closed otherwise); the handlers' `request.read()`
  then returns it at once. A body already received costs one check.
- WebSocket: aiohttp pings every `ws_heartbeat_s` and closes a session whose pong is
  missing; a session must authenticate or subscribe within `login_timeout_s`, and one with
  no subscription that sends nothing for `session_idle_s` is closed (`ws_watch`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from engine.gateways.admission import BODY_TIMEOUT, LOGIN_TIMEOUT, Admission, AdmissionSettings, IdleWatch
from engine.gateways.http_answers import error


@dataclass
class HttpLimits:
    settings: AdmissionSettings = field(default_factory=AdmissionSettings)
    admission: Admission | None = None  # counts the timeouts (None: not counted)

    def timed_out(self, reason: str) -> None:
        if self.admission is not None:
            self.admission.timed_out(reason)


LIMITS = web.AppKey("http_limits", HttpLimits)


def limits_of(app: web.Application) -> HttpLimits:
    found = app.get(LIMITS)
    if found is None:
        found = HttpLimits()
    return found


def body_deadline(limits: HttpLimits):
    """Middleware: the whole body within `http_body_s` of the head, or 408 and close."""
    timeout = limits.settings.http_body_s

    @web.middleware
    async def deadline(request: web.Request, handler):
        if request.body_exists and not request.content.is_eof():
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                limits.timed_out(BODY_TIMEOUT)
                response = error(
                    408, "REQUEST_TIMEOUT", f"the request body did not arrive within {timeout:g} s"
                )
                # Sent and closed here: aiohttp would otherwise linger (up to lingering_time)
                # reading the rest of a body that is not coming.
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
                return response
        return await handler(request)

    return deadline


def ws_watch(session, limits: HttpLimits) -> IdleWatch:
    """The deadlines of one WebSocket session (engine.gateways.ws_session.WsSession): a purpose
    (auth or a subscription) within login_timeout_s, then no silence beyond session_idle_s
    unless it is subscribed (pushes flow; the pings find a dead peer)."""
    settings = limits.settings

    def timed_out(reason: str) -> None:
        limits.timed_out(reason)
        if reason == LOGIN_TIMEOUT:
            text = f"no auth or subscribe within {settings.login_timeout_s:g} s"
        else:
            text = f"nothing received for {settings.session_idle_s:g} s"
        session.fail(None, reason.upper(), f"{text}; closing")
        session.close()  # the writer sends the error, then closes the socket

    return IdleWatch(
        settings.login_timeout_s,
        settings.session_idle_s,
        lambda: session.account is not None or bool(session.unsubscribers),
        lambda: bool(session.unsubscribers),
        timed_out,
    )
