"""An asyncio client of the binary gateway, for tests, tools and the load generator.

    client = await BinaryClient.connect(host, port, api_key)
    client.new_order(1, "BTC-USD", Side.BUY, price=100, qty=5)  # one frame, one write
    client.send_many([encode_new_order(...), encode_cancel(...), ...])  # many frames, one write
    frame = await client.recv(timeout=5)  # or: async for frame in client

For throughput pass `on_frames`: it is called with the list of frames decoded from each read
(and no queue is kept), so a load generator can take one timestamp per read and match
Accepted/Rejected frames to its sends by `client_ref`.

One connection to one node; `engine.client.binary.LeaderFollowingBinaryClient` takes a
cluster's nodes, follows the leader and resends unanswered orders on top of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from engine.gateways.binary import protocol as p


class LoginRefused(ConnectionError):
    def __init__(self, reason: int, version: int) -> None:
        self.reason = reason
        self.version = version
        try:
            name = p.LoginRejectReason(reason).name
        except ValueError:
            name = str(reason)
        super().__init__(f"binary login refused: {name} (server protocol version {version})")


class ConnectionClosed(ConnectionError):
    pass


_CLOSED = object()


class BinaryClient(asyncio.Protocol):
    def __init__(self, on_frames: Callable[[list], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._decoder = p.Decoder.for_client()
        self._on_frames = on_frames
        self._queue: asyncio.Queue | None = asyncio.Queue() if on_frames is None else None
        self._transport: asyncio.Transport | None = None
        self._login: asyncio.Future | None = None  # set while connect() awaits the answer
        self._drain_waiter: asyncio.Future | None = None
        self._write_paused = False
        self.closed: asyncio.Future = self._loop.create_future()
        self.login_ack: p.LoginAck | None = None
        self.frames_received = 0
        self.bytes_sent = 0

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        api_key: str | None,
        *,
        on_frames: Callable[[list], None] | None = None,
        version: int = p.PROTOCOL_VERSION,
        timeout: float = 10.0,
    ) -> BinaryClient:
        """Connect and log in (api_key None: connect only). Raises LoginRefused."""
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_frames), host, port), timeout
        )
        if api_key is None:
            return client
        client._login = loop.create_future()
        client.send(p.encode_login(api_key, version))
        try:
            answer = await asyncio.wait_for(asyncio.shield(client._login), timeout)
        except BaseException:
            client.close()
            raise
        if type(answer) is p.LoginReject:
            client.close()
            raise LoginRefused(answer.reason, answer.version)
        client.login_ack = answer
        return client

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def account(self) -> str | None:
        return self.login_ack.account if self.login_ack else None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.feed(data)
        frames = decoder.drain()
        if not frames:
            return
        self.frames_received += len(frames)
        if decoder.failed is not None:
            self._transport.abort()  # the server's framing is lost: nothing more can be read
        login = self._login
        if login is not None and not login.done():  # the answer goes to connect(), not the consumer
            for i, frame in enumerate(frames):
                if type(frame) is p.LoginAck or type(frame) is p.LoginReject:
                    login.set_result(frame)
                    del frames[i]
                    break
            if not frames:
                return
        if self._on_frames is not None:
            self._on_frames(frames)
        else:
            put = self._queue.put_nowait
            for frame in frames:
                put(frame)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc) -> None:
        login = self._login
        if login is not None and not login.done():
            login.set_exception(ConnectionClosed("connection closed before the login answer"))
            login.exception()  # retrieved: connect() may not be waiting
        if not self.closed.done():
            self.closed.set_result(exc)
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionClosed("connection closed"))
        if self._queue is not None:
            self._queue.put_nowait(_CLOSED)

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Raw bytes (one or more encoded frames, or anything at all) in one write."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionClosed("connection closed")
        self.bytes_sent += len(data)
        self._transport.write(data)

    def send_many(self, frames: Iterable[bytes]) -> None:
        """Encoded frames in one write."""
        self.send(b"".join(frames))

    def send_frames(self, *frames) -> None:
        """Frame tuples (protocol.NewOrderReq, CancelReq, ...) in one write."""
        self.send(p.encode_many(frames))

    def new_order(self, client_ref: int, *order, **options) -> None:
        """One order; arguments as protocol.new_order_frame (symbol, side, price, qty, ...)."""
        self.send(p.new_order_frame(client_ref, *order, **options))

    def new_orders(self, orders: Iterable[p.NewOrderReq | tuple]) -> int:
        """Many NewOrder frames (NewOrderReq field order) in one write; returns the count."""
        encode = p.encode_new_order
        frames = [encode(*o) for o in orders]
        self.send(b"".join(frames))
        return len(frames)

    def cancel(self, order_id: int = 0, client_ref: int = 0) -> None:
        self.send(p.encode_cancel(order_id, client_ref))

    def cancels(self, targets: Iterable[tuple[int, int]]) -> None:
        """Many cancels, (order_id, client_ref) each, in one write."""
        self.send(b"".join(p.encode_cancel(o, r) for o, r in targets))

    def amend(
        self,
        order_id: int = 0,
        client_ref: int = 0,
        new_qty: int = 0,
        new_price: int = 0,
        new_client_ref: int = 0,
    ) -> None:
        self.send(p.encode_amend(order_id, client_ref, new_qty, new_price, new_client_ref))

    def amends(self, amends: Iterable[p.AmendReq | tuple]) -> None:
        self.send(b"".join(p.encode_amend(*a) for a in amends))

    def cancel_all(self, symbol: str = "") -> None:
        self.send(p.encode_cancel_all(symbol))

    def heartbeat(self, token: int = 0) -> None:
        self.send(p.encode_heartbeat(token))

    async def drain(self) -> None:
        """Wait while the socket's send buffer is above its high-water mark."""
        if self._write_paused:
            if self._drain_waiter is None:
                self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    # -- receiving (when no on_frames callback was given) ------------------------------------

    async def recv(self, timeout: float | None = None):
        """The next decoded frame (or DecodeError). Raises ConnectionClosed at the end of the
        stream and TimeoutError after `timeout` seconds."""
        if self._queue is None:
            raise RuntimeError("frames go to the on_frames callback")
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every later recv sees the end too
            raise ConnectionClosed("connection closed")
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    async def wait_closed(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        self.close()
        if self._transport is not None:
            try:
                await self.wait_closed(timeout)
            except TimeoutError:
                self._transport.abort()

    async def __aenter__(self) -> BinaryClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
