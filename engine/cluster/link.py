"""One NATS connection on its own event-loop thread.

The journal protocol is synchronous (recovery, the contract suite and the snapshot tools
call it from plain code), while nats-py is asyncio. Giving the connection its own loop
lets both worlds use it: synchronous callers block on `call`, the service's loop awaits
`wait`, and the lease keeps renewing on this thread even while the service's loop is busy
(a snapshot write, a GC pause), which is what keeps a live leader's lease from lapsing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

log = logging.getLogger("loom.cluster.link")

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
SETTLING = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NotFoundError,
    nats.js.errors.ServerError,
    TimeoutError,
)


class NatsLink:
    def __init__(self, servers: Sequence[str], name: str = "loom") -> None:
        self.servers = list(servers)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"nats-{name}", daemon=True)
        self._thread.start()
        self.nc: Client = self.call(self._connect(name), CONNECT_TIMEOUT_S + 1)
        self.js = self.nc.jetstream(timeout=2.0)
        self.closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _connect(self, name: str) -> Client:
        async def quiet_error(exc: Exception) -> None:
            # Without an error callback nats-py prints a traceback per failed reconnect.
            log.debug("nats: %s", exc)

        async def disconnected() -> None:
            log.warning("nats: disconnected")

        async def reconnected() -> None:
            log.info(
                "nats: reconnected to %s", self.nc.connected_url.netloc if self.nc.connected_url else "?"
            )

        return await nats.connect(
            self.servers,
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=0.2,
            max_reconnect_attempts=-1,
            ping_interval=1,
            max_outstanding_pings=3,
            error_cb=quiet_error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        """Run `coro` on the link's loop and wait for it (from any other thread)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"NATS operation timed out after {timeout} s") from None

    def call_retrying(self, make: Callable[[], Coroutine[Any, Any, T]], what: str, within: float = 20.0) -> T:
        """`call(make())`, retried while the cluster is still settling: a stream or bucket
        another node has just created answers nothing (or "not found") until its own Raft
        group has elected a leader."""
        deadline = time.monotonic() + within
        while True:
            try:
                return self.call(make(), None)
            except SETTLING as exc:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{what}: the NATS cluster did not answer in {within} s: {exc!r}"
                    ) from exc
                log.info("%s: cluster settling (%s), retrying", what, type(exc).__name__)
                time.sleep(0.1)

    def key_value(self, bucket: str, replicas: int, ttl: float | None = None):
        """The KV bucket, created (history 1) when it does not exist yet; retried while the
        cluster settles. Shared by the lease and the standby positions."""

        async def open_or_create():
            try:
                return await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                config = api.KeyValueConfig(
                    bucket=bucket, history=1, replicas=replicas, ttl=ttl, direct=False
                )
                return await self.js.create_key_value(config)

        return self.call_retrying(open_or_create, f"opening KV bucket {bucket}")

    async def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the link's loop and await it from another event loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.call(self.nc.close(), 5)
        except Exception:  # closing a dead connection: nothing to save
            log.debug("closing the NATS connection failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
