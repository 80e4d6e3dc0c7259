"""The access log (logger `loom.access`), off unless `--access-log-sample RATE` > 0.

One line per sampled REST request (method, path without its query, status, duration_ms,
remote, trace_id, account when authenticated, order_id when one is named) and per sampled
WebSocket or FIX session (open/logon and close/logout with message counts, the close code,
the FIX CompIDs). Sessions are sampled when they open, so a sampled session logs both ends.
Never a key, a signature or a query string: a key can ride in `?api_key=` of a misconfigured
client, so the query is left out entirely. In JSON mode the fields are JSON fields
(engine/logfmt.py); in text mode `key=value` after the message.
"""

from __future__ import annotations

import logging
import random

from engine.logfmt import fields

log = logging.getLogger("loom.access")


class AccessLog:
    def __init__(self, sample: float = 0.0) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate must be between 0 and 1, not {sample}")
        self.sample = sample

    def sampled(self) -> bool:
        """Whether to log this request or session (cheap when off: one comparison)."""
        return self.sample > 0.0 and (self.sample >= 1.0 or random.random() < self.sample)

    def rest(
        self,
        method: str,
        path: str,
        status: int,
        duration_s: float,
        remote: str | None,
        trace_id: str = "",
        account: str = "",
        order_id: int | str | None = None,
    ) -> None:
        duration_ms = round(duration_s * 1000, 3)
        log.info(
            "%s %s %d %.1f ms",
            method,
            path,
            status,
            duration_ms,
            extra=fields(
                protocol="http",
                method=method,
                path=path,
                status=status,
                duration_ms=duration_ms,
                remote=remote,
                trace_id=trace_id,
                account=account,
                order_id=order_id,
            ),
        )

    def session(self, protocol: str, event: str, remote: str | None, account: str = "", **details) -> None:
        """A WebSocket or FIX session's open/logon or close/logout line."""
        text = " ".join(f"{k}={v}" for k, v in details.items() if v not in (None, ""))
        log.info(
            "%s session %s %s%s",
            protocol,
            event,
            remote or "?",
            f" ({text})" if text else "",
            extra=fields(protocol=protocol, event=event, remote=remote, account=account, **details),
        )
