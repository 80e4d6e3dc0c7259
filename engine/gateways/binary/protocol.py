"""Loom binary order-entry protocol, version 2: little-endian, length-prefixed, fixed layout.

Every frame is ``length u16 | type u8 | body``. ``length`` counts the bytes that follow the
length field (the type byte and the body), so a whole frame is ``2 + length`` bytes. Each
type has exactly one body layout, hence exactly one valid length. Integers are
little-endian; ``i64`` prices and quantities are in the instrument's integer units; text
fields are fixed-width, NUL-padded on the right. Symbols are printable ASCII (0x21-0x7E),
at most 16 bytes; an all-NUL symbol means "none" (CancelAll: every symbol).

Client -> server

====  ============  ======  ===============================================================
type  frame         length  body
====  ============  ======  ===============================================================
0x01  Login         35      version u16, api_key 32s (ASCII, NUL-padded)
0x02  NewOrder      46      client_ref u64, symbol 16s, side u8, order_type u8, tif u8,
                            flags u8 (bit 0 post-only, others must be 0), stp u8,
                            price i64, qty i64
0x03  Cancel        17      order_id u64, client_ref u64 (by client_ref when order_id = 0)
0x04  Amend         41      order_id u64, client_ref u64, new_qty i64 (0 = same),
                            new_price i64 (0 = same), new_client_ref u64 (0 = keep)
0x05  CancelAll     17      symbol 16s (all NUL: every symbol)
0x06  Heartbeat     9       token u64 (both directions; the server echoes the token)
====  ============  ======  ===============================================================

Server -> client (``seq``/``ts`` are the sequence number and nanosecond timestamp the
sequencer stamped on the command that caused the event; ``seq`` 0 means "not sequenced":
a gateway refusal such as a rate limit, or a batch the journal could not write)

====  =============  ======  ==============================================================
type  frame          length  body
====  =============  ======  ==============================================================
0x81  LoginAck       75      version u16, rate u32 (orders/s, 0 = unlimited), burst u32,
                             account 64s (UTF-8)
0x82  LoginReject    5       reason u16 (LoginRejectReason), version u16 (the server's)
0x83  Accepted       68      seq u64, ts i64, order_id u64, client_ref u64, symbol 16s,
                             side u8, order_type u8, tif u8, price i64, qty i64
0x84  Rejected       36      seq u64, ts i64, request u8 (RequestKind), reason u16
                             (RejectReason, or GatewayRejectReason 6xx), client_ref u64,
                             order_id u64
                             Reason 502 JOURNAL_WRITE_FAILED: known not journaled, nothing
                             was done. Reason 503 OUTCOME_UNKNOWN: the journal did not answer
                             and the command may be durable (seq 0); if it was, its reports
                             follow once the node resolves it. Look the order up by client
                             order id or resend it with the same client_ref.
0x85  Fill           59      seq u64, ts i64, trade_id u64, order_id u64, side u8,
                             liquidity u8 (1 maker, 2 taker), price i64, qty i64, leaves i64
                             (no fee: the layout is fixed for the protocol version; a fill's
                             fee is on the REST/WebSocket executions and the ledger)
0x86  Cancelled      42      seq u64, ts i64, order_id u64, reason u8 (CancelReason),
                             cancelled_qty i64, filled_qty i64
0x87  Amended        58      seq u64, ts i64, order_id u64, client_ref u64, price i64,
                             qty i64 (new total), leaves i64, priority_kept u8
0x88  Done           33      seq u64, ts i64, order_id u64, filled_qty i64 (fully filled)
0x89  Error          67      code u16 (ErrorCode), text 64s (ASCII)
0x8A  MassCancelled  21      seq u64, ts i64, count u32 (after the Cancelled frames of a
                             CancelAll, to the session that sent it)
0x8B  NotLeader      111     epoch u64, retry_after_ms u32, port u16, host 64s (ASCII),
                             node 32s (UTF-8) -- version 2 sessions only, see below
0x06  Heartbeat      9       token u64
====  =============  ======  ==============================================================

Enumerations are the engine's (``engine.core.domain``, FIX values): side 1 buy / 2 sell;
order_type 1 market / 2 limit; tif 1 GTC / 3 IOC / 4 FOK; stp 0-3. ``client_ref`` travels to
the engine as the decimal string client order id ("" when 0); a report names the order's
client order id as a u64 again (0 when it is not a decimal u64, e.g. set by another gateway).

Versions: the server speaks 1 and 2 and answers LoginAck with the version the client asked
for (LoginReject carries the newest it speaks). Version 2 adds one thing, for clusters: a
node that is not the leader sends NotLeader right after LoginAck, and before the Rejected
frames of every refused submission, whose reason is then 604 NOT_LEADER. NotLeader names
the leader's binary endpoint (host, port) and node id with its lease epoch; during an
election (no live leader) host is empty, port 0 and retry_after_ms says when to try again
(0 when a leader is named: go there now). A leader without a binary listener is named with
port 0 and a node id. A node never names itself. Version 1 sessions see what they always
did: Rejected with 602 SERVICE_UNAVAILABLE and no hint.

Session: the first frame must be Login (anything else, Heartbeat included, is answered
with Error NOT_LOGGED_IN); a wrong key or version gets LoginReject and the connection is
closed. A connection that has not logged in within the login deadline (10 s by default) gets
Error LOGIN_TIMEOUT and is closed; a logged-on session that sends no frame for the idle
deadline (60 s; send a Heartbeat when there is nothing else to send) gets Error IDLE_TIMEOUT
and is closed. A connection beyond the listener's caps gets Error TOO_MANY_CONNECTIONS and is
closed before it can send anything. The account always comes from
the login, never from a frame. Execution reports (0x83-0x88) are sent for every durable
event concerning the account, only after the journal holds the command.

Decoding never raises. `Decoder.feed(bytes)` buffers, iterating the decoder yields each
whole frame (or what its builder made of it) and `DecodeError` items, in stream order.
Resynchronisation policy: the length prefix is the only framing, so it is trusted whenever
it is possible. A length in 1..MAX_FRAME_LENGTH always delimits the frame, even if the type
is unknown, the length is wrong for the type, or a field is invalid (non-ASCII symbol,
enum out of range, reserved flag bits): that frame alone is reported (`fatal=False`) and
decoding continues with the next one. A length of 0 or above MAX_FRAME_LENGTH cannot come
from a conforming peer and leaves no safe place to resume: it is reported with
`fatal=True`, the rest of the input is discarded and the decoder stays failed (the server
answers with an Error frame and closes the connection).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import IntEnum
from typing import NamedTuple

from engine.core.domain import OrderType, RequestKind, SelfTradePrevention, Side, TimeInForce

PROTOCOL_VERSION = 2  # the newest this code speaks (and what its clients ask for)
MIN_PROTOCOL_VERSION = 1  # the oldest the server still accepts
NOT_LEADER_VERSION = 2  # sessions of this version or newer get NotLeader frames and reason 604
MAX_FRAME_LENGTH = 255  # the envelope; every v1 frame is shorter (room for later types)
U64_MAX = (1 << 64) - 1
SYMBOL_BYTES = 16
API_KEY_BYTES = 32
TEXT_BYTES = 64
ACCOUNT_BYTES = 64
HOST_BYTES = 64
NODE_BYTES = 32
FLAG_POST_ONLY = 0x01


class FrameType(IntEnum):
    LOGIN = 0x01
    NEW_ORDER = 0x02
    CANCEL = 0x03
    AMEND = 0x04
    CANCEL_ALL = 0x05
    HEARTBEAT = 0x06
    LOGIN_ACK = 0x81
    LOGIN_REJECT = 0x82
    ACCEPTED = 0x83
    REJECTED = 0x84
    FILL = 0x85
    CANCELLED = 0x86
    AMENDED = 0x87
    DONE = 0x88
    ERROR = 0x89
    MASS_CANCELLED = 0x8A
    NOT_LEADER = 0x8B


class ErrorCode(IntEnum):
    """The code of an Error frame (and of a `DecodeError`)."""

    UNKNOWN_TYPE = 1  # no such frame type (in this direction)
    BAD_LENGTH = 2  # not the length of this type; a length of 0 is fatal
    FRAME_TOO_LARGE = 3  # length above MAX_FRAME_LENGTH: fatal, the connection closes
    BAD_SYMBOL = 4  # not printable ASCII, or NUL inside
    BAD_ENUM = 5  # side, order type, tif, stp (or a report's enum) out of range
    BAD_FIELD = 6  # reserved flag bits set, non-ASCII API key
    NOT_LOGGED_IN = 7
    ALREADY_LOGGED_IN = 8
    SERVICE_UNAVAILABLE = 9  # the exchange failed or is shutting down
    SLOW_CONSUMER = 10  # the client does not read its reports: disconnected
    INTERNAL = 11
    TOO_MANY_CONNECTIONS = 12  # refused by admission (listener or per-address cap): closed
    LOGIN_TIMEOUT = 13  # no Login within the deadline: closed
    IDLE_TIMEOUT = 14  # a logged-on session sent nothing within the idle deadline: closed


class LoginRejectReason(IntEnum):
    BAD_CREDENTIALS = 1
    UNSUPPORTED_VERSION = 2


class GatewayRejectReason(IntEnum):
    """Rejected.reason codes of refusals made by the gateway itself (seq 0, never journaled),
    next to the engine's RejectReason codes (1xx-5xx)."""

    RATE_LIMITED = 601
    SERVICE_UNAVAILABLE = 602
    OVERLOADED = 603  # admission control: the commit queue is full; not sequenced, resend later
    NOT_LEADER = 604  # a cluster standby (version 2 sessions; a NotLeader frame names the leader)


class Liquidity(IntEnum):
    MAKER = 1
    TAKER = 2


class DecodeError(NamedTuple):
    code: int  # ErrorCode
    text: str
    fatal: bool = False  # True: the framing is lost, close the connection
    frame_type: int = -1  # -1 when not known
    offset: int = 0  # stream offset of the frame's first byte


# -- frames (client -> server) -------------------------------------------------------------


class Login(NamedTuple):
    api_key: str
    version: int = PROTOCOL_VERSION


class NewOrderReq(NamedTuple):
    client_ref: int
    symbol: str
    side: int
    order_type: int
    tif: int
    post_only: bool
    stp: int
    price: int
    qty: int


class CancelReq(NamedTuple):
    order_id: int = 0
    client_ref: int = 0


class AmendReq(NamedTuple):
    order_id: int = 0
    client_ref: int = 0
    new_qty: int = 0
    new_price: int = 0
    new_client_ref: int = 0


class CancelAllReq(NamedTuple):
    symbol: str = ""


class Heartbeat(NamedTuple):
    token: int = 0


# -- frames (server -> client) -------------------------------------------------------------


class LoginAck(NamedTuple):
    version: int
    rate: int
    burst: int
    account: str


class LoginReject(NamedTuple):
    reason: int
    version: int = PROTOCOL_VERSION


class Accepted(NamedTuple):
    seq: int
    ts: int
    order_id: int
    client_ref: int
    symbol: str
    side: int
    order_type: int
    tif: int
    price: int
    qty: int


class Rejected(NamedTuple):
    seq: int
    ts: int
    request: int
    reason: int
    client_ref: int
    order_id: int


class Fill(NamedTuple):
    seq: int
    ts: int
    trade_id: int
    order_id: int
    side: int
    liquidity: int
    price: int
    qty: int
    leaves: int


class Cancelled(NamedTuple):
    seq: int
    ts: int
    order_id: int
    reason: int
    cancelled_qty: int
    filled_qty: int


class Amended(NamedTuple):
    seq: int
    ts: int
    order_id: int
    client_ref: int
    price: int
    qty: int
    leaves: int
    priority_kept: bool


class Done(NamedTuple):
    seq: int
    ts: int
    order_id: int
    filled_qty: int


class Error(NamedTuple):
    code: int
    text: str


class MassCancelled(NamedTuple):
    seq: int
    ts: int
    count: int


class NotLeader(NamedTuple):
    """Where the leader is (host "" and port 0 during an election: wait retry_after_ms)."""

    epoch: int
    retry_after_ms: int
    port: int
    host: str
    node: str

    @property
    def endpoint(self) -> tuple[str, int] | None:
        return (self.host, self.port) if self.host and self.port else None


# -- layouts: one body struct (decoding) and one whole-frame struct (encoding) per type ----

_BODY_FORMATS: dict[int, str] = {
    FrameType.LOGIN: "H32s",
    FrameType.NEW_ORDER: "Q16sBBBBBqq",
    FrameType.CANCEL: "QQ",
    FrameType.AMEND: "QQqqQ",
    FrameType.CANCEL_ALL: "16s",
    FrameType.HEARTBEAT: "Q",
    FrameType.LOGIN_ACK: "HII64s",
    FrameType.LOGIN_REJECT: "HH",
    FrameType.ACCEPTED: "QqQQ16sBBBqq",
    FrameType.REJECTED: "QqBHQQ",
    FrameType.FILL: "QqQQBBqqq",
    FrameType.CANCELLED: "QqQBqq",
    FrameType.AMENDED: "QqQQqqqB",
    FrameType.DONE: "QqQq",
    FrameType.ERROR: "H64s",
    FrameType.MASS_CANCELLED: "QqI",
    FrameType.NOT_LEADER: "QIH64s32s",
}
BODY: dict[int, struct.Struct] = {t: struct.Struct("<" + f) for t, f in _BODY_FORMATS.items()}
FRAME: dict[int, struct.Struct] = {t: struct.Struct("<HB" + f) for t, f in _BODY_FORMATS.items()}
LENGTH: dict[int, int] = {t: 1 + s.size for t, s in BODY.items()}  # the length field's value
HEADER = struct.Struct("<HB")

CLIENT_TYPES = frozenset(
    (
        FrameType.LOGIN,
        FrameType.NEW_ORDER,
        FrameType.CANCEL,
        FrameType.AMEND,
        FrameType.CANCEL_ALL,
        FrameType.HEARTBEAT,
    )
)
SERVER_TYPES = frozenset(t for t in FrameType if t >= 0x80) | {FrameType.HEARTBEAT}

_SIDES = frozenset(int(s) for s in Side)
_ORDER_TYPES = frozenset(int(t) for t in OrderType)
_TIFS = frozenset(int(t) for t in TimeInForce)
_STPS = frozenset(int(s) for s in SelfTradePrevention)
_REQUESTS = frozenset(int(r) for r in RequestKind)
_LIQUIDITY = frozenset(int(x) for x in Liquidity)

# Validated symbols by their raw 16 bytes (and back): the universe of symbols is small.
_SYMBOL_CACHE_MAX = 4096
_SYMBOL_OF: dict[bytes, str] = {bytes(SYMBOL_BYTES): ""}
_SYMBOL_BYTES_OF: dict[str, bytes] = {"": b""}


def symbol_bytes(symbol: str) -> bytes:
    """The wire form of a symbol ("" = none); ValueError if it cannot be sent."""
    raw = _SYMBOL_BYTES_OF.get(symbol)
    if raw is not None:
        return raw
    raw = symbol.encode("ascii") if symbol.isascii() else b""
    if not (0 < len(raw) <= SYMBOL_BYTES and all(0x21 <= c <= 0x7E for c in raw)):
        raise ValueError(f"symbol {symbol!r} is not 1-{SYMBOL_BYTES} printable ASCII characters")
    if len(_SYMBOL_BYTES_OF) < _SYMBOL_CACHE_MAX:
        _SYMBOL_BYTES_OF[symbol] = raw
    return raw


def _symbol_of(raw: bytes) -> str | None:
    """The symbol in a 16-byte field, or None when it is not printable ASCII + NUL padding."""
    text = raw.rstrip(b"\0")
    if not all(0x21 <= c <= 0x7E for c in text):
        return None
    symbol = text.decode("ascii")
    if len(_SYMBOL_OF) < _SYMBOL_CACHE_MAX:
        _SYMBOL_OF[raw] = symbol
    return symbol


def client_ref_of(client_order_id: str) -> int:
    """The u64 client_ref of an engine client order id (0 when it is not a decimal u64)."""
    if client_order_id.isdecimal() and client_order_id.isascii() and len(client_order_id) <= 20:
        ref = int(client_order_id)
        return ref if ref <= U64_MAX else 0
    return 0


def client_order_id_of(client_ref: int) -> str:
    return str(client_ref) if client_ref else ""


def _text(value: str, size: int, encoding: str = "ascii") -> bytes:
    return value.encode(encoding, "replace")[:size]


def _untext(raw: bytes, encoding: str = "ascii") -> str:
    return raw.rstrip(b"\0").decode(encoding, "replace")


# -- encoding ------------------------------------------------------------------------------
# Fast functions take plain values; `encode(frame)` takes any frame tuple.

_F_LOGIN = FRAME[FrameType.LOGIN].pack
_F_NEW = FRAME[FrameType.NEW_ORDER].pack
_F_CANCEL = FRAME[FrameType.CANCEL].pack
_F_AMEND = FRAME[FrameType.AMEND].pack
_F_CANCEL_ALL = FRAME[FrameType.CANCEL_ALL].pack
_F_HEARTBEAT = FRAME[FrameType.HEARTBEAT].pack
_F_LOGIN_ACK = FRAME[FrameType.LOGIN_ACK].pack
_F_LOGIN_REJECT = FRAME[FrameType.LOGIN_REJECT].pack
_F_ACCEPTED = FRAME[FrameType.ACCEPTED].pack
_F_REJECTED = FRAME[FrameType.REJECTED].pack
_F_FILL = FRAME[FrameType.FILL].pack
_F_CANCELLED = FRAME[FrameType.CANCELLED].pack
_F_AMENDED = FRAME[FrameType.AMENDED].pack
_F_DONE = FRAME[FrameType.DONE].pack
_F_ERROR = FRAME[FrameType.ERROR].pack
_F_MASS = FRAME[FrameType.MASS_CANCELLED].pack
_F_NOT_LEADER = FRAME[FrameType.NOT_LEADER].pack
_L = LENGTH


def encode_login(api_key: str, version: int = PROTOCOL_VERSION) -> bytes:
    key = api_key.encode("ascii")
    if len(key) > API_KEY_BYTES:
        raise ValueError(f"API key longer than {API_KEY_BYTES} bytes")
    return _F_LOGIN(_L[FrameType.LOGIN], FrameType.LOGIN, version, key)


def new_order_frame(
    client_ref: int,
    symbol: str,
    side: int,
    price: int,
    qty: int,
    order_type: int = OrderType.LIMIT,
    tif: int = TimeInForce.GTC,
    post_only: bool = False,
    stp: int = SelfTradePrevention.CANCEL_NEWEST,
) -> bytes:
    """A NewOrder frame, arguments as the clients take them (price and qty after the side,
    the rest defaulted): one signature for BinaryClient and the leader-following client."""
    return encode_new_order(client_ref, symbol, side, order_type, tif, post_only, stp, price, qty)


def encode_new_order(
    client_ref: int,
    symbol: str,
    side: int,
    order_type: int,
    tif: int,
    post_only: bool,
    stp: int,
    price: int,
    qty: int,
) -> bytes:
    return _F_NEW(
        46,
        0x02,
        client_ref,
        symbol_bytes(symbol),
        side,
        order_type,
        tif,
        1 if post_only else 0,
        stp,
        price,
        qty,
    )


def encode_cancel(order_id: int = 0, client_ref: int = 0) -> bytes:
    return _F_CANCEL(17, 0x03, order_id, client_ref)


def encode_amend(
    order_id: int = 0, client_ref: int = 0, new_qty: int = 0, new_price: int = 0, new_client_ref: int = 0
) -> bytes:
    return _F_AMEND(41, 0x04, order_id, client_ref, new_qty, new_price, new_client_ref)


def encode_cancel_all(symbol: str = "") -> bytes:
    return _F_CANCEL_ALL(17, 0x05, symbol_bytes(symbol) if symbol else b"")


def encode_heartbeat(token: int = 0) -> bytes:
    return _F_HEARTBEAT(9, 0x06, token)


def encode_login_ack(version: int, rate: int, burst: int, account: str) -> bytes:
    return _F_LOGIN_ACK(75, 0x81, version, rate, burst, _text(account, ACCOUNT_BYTES, "utf-8"))


def encode_login_reject(reason: int, version: int = PROTOCOL_VERSION) -> bytes:
    return _F_LOGIN_REJECT(5, 0x82, reason, version)


def encode_accepted(seq, ts, order_id, client_ref, symbol, side, order_type, tif, price, qty) -> bytes:
    return _F_ACCEPTED(
        68, 0x83, seq, ts, order_id, client_ref, symbol_bytes(symbol), side, order_type, tif, price, qty
    )


def encode_rejected(seq, ts, request, reason, client_ref, order_id) -> bytes:
    return _F_REJECTED(36, 0x84, seq, ts, request, reason, client_ref, order_id)


def encode_fill(seq, ts, trade_id, order_id, side, liquidity, price, qty, leaves) -> bytes:
    return _F_FILL(59, 0x85, seq, ts, trade_id, order_id, side, liquidity, price, qty, leaves)


def encode_cancelled(seq, ts, order_id, reason, cancelled_qty, filled_qty) -> bytes:
    return _F_CANCELLED(42, 0x86, seq, ts, order_id, reason, cancelled_qty, filled_qty)


def encode_amended(seq, ts, order_id, client_ref, price, qty, leaves, priority_kept) -> bytes:
    return _F_AMENDED(58, 0x87, seq, ts, order_id, client_ref, price, qty, leaves, 1 if priority_kept else 0)


def encode_done(seq, ts, order_id, filled_qty) -> bytes:
    return _F_DONE(33, 0x88, seq, ts, order_id, filled_qty)


def encode_error(code: int, text: str) -> bytes:
    return _F_ERROR(67, 0x89, code, _text(text, TEXT_BYTES))


def encode_mass_cancelled(seq: int, ts: int, count: int) -> bytes:
    return _F_MASS(21, 0x8A, seq, ts, count)


def encode_not_leader(epoch: int, retry_after_ms: int, port: int, host: str, node: str) -> bytes:
    return _F_NOT_LEADER(
        111, 0x8B, epoch, retry_after_ms, port, _text(host, HOST_BYTES), _text(node, NODE_BYTES, "utf-8")
    )


_ENCODERS: dict[type, Callable[..., bytes]] = {
    Login: lambda f: encode_login(f.api_key, f.version),
    NewOrderReq: lambda f: encode_new_order(*f),
    CancelReq: lambda f: encode_cancel(*f),
    AmendReq: lambda f: encode_amend(*f),
    CancelAllReq: lambda f: encode_cancel_all(*f),
    Heartbeat: lambda f: encode_heartbeat(*f),
    LoginAck: lambda f: encode_login_ack(*f),
    LoginReject: lambda f: encode_login_reject(*f),
    Accepted: lambda f: encode_accepted(*f),
    Rejected: lambda f: encode_rejected(*f),
    Fill: lambda f: encode_fill(*f),
    Cancelled: lambda f: encode_cancelled(*f),
    Amended: lambda f: encode_amended(*f),
    Done: lambda f: encode_done(*f),
    Error: lambda f: encode_error(*f),
    MassCancelled: lambda f: encode_mass_cancelled(*f),
    NotLeader: lambda f: encode_not_leader(*f),
}


def encode(frame) -> bytes:
    """Any frame tuple to its bytes. Raises (ValueError, struct.error) on values the layout
    cannot carry: encoding is the sender's responsibility, decoding never raises."""
    try:
        encoder = _ENCODERS[type(frame)]
    except KeyError:
        raise TypeError(f"not a frame: {frame!r}") from None
    return encoder(frame)


def encode_many(frames: Iterable) -> bytes:
    return b"".join(encode(f) for f in frames)


# -- decoding ------------------------------------------------------------------------------
# One function per type: (buffer, body offset, builder) -> builder(*fields) or DecodeError.
# The builder is the frame class by default; the server passes builders that make engine
# commands straight from the fields (no intermediate frame object on the hot path).


def _enum_error(ftype: int, name: str, value: int) -> DecodeError:
    return DecodeError(ErrorCode.BAD_ENUM, f"{name} {value} out of range", False, ftype)


def _d_login(buf, off, build):
    version, raw = BODY[FrameType.LOGIN].unpack_from(buf, off)
    key = raw.rstrip(b"\0")
    if not key.isascii() or b"\0" in key:
        return DecodeError(ErrorCode.BAD_FIELD, "api_key is not ASCII", False, FrameType.LOGIN)
    return build(key.decode("ascii"), version)


_NEW_UNPACK = BODY[FrameType.NEW_ORDER].unpack_from


def _d_new_order(buf, off, build):
    ref, raw, side, otype, tif, flags, stp, price, qty = _NEW_UNPACK(buf, off)
    symbol = _SYMBOL_OF.get(raw)
    if symbol is None:
        symbol = _symbol_of(raw)
        if symbol is None:
            return DecodeError(ErrorCode.BAD_SYMBOL, "symbol is not printable ASCII", False, 0x02)
    if side not in _SIDES:
        return _enum_error(0x02, "side", side)
    if otype not in _ORDER_TYPES:
        return _enum_error(0x02, "order_type", otype)
    if tif not in _TIFS:
        return _enum_error(0x02, "tif", tif)
    if stp not in _STPS:
        return _enum_error(0x02, "stp", stp)
    if flags & ~FLAG_POST_ONLY:
        return DecodeError(ErrorCode.BAD_FIELD, f"reserved flag bits set: 0x{flags:02x}", False, 0x02)
    return build(ref, symbol, side, otype, tif, flags == FLAG_POST_ONLY, stp, price, qty)


_CANCEL_UNPACK = BODY[FrameType.CANCEL].unpack_from
_AMEND_UNPACK = BODY[FrameType.AMEND].unpack_from


def _d_cancel(buf, off, build):
    return build(*_CANCEL_UNPACK(buf, off))


def _d_amend(buf, off, build):
    return build(*_AMEND_UNPACK(buf, off))


def _d_cancel_all(buf, off, build):
    (raw,) = BODY[FrameType.CANCEL_ALL].unpack_from(buf, off)
    symbol = _SYMBOL_OF.get(raw)
    if symbol is None:
        symbol = _symbol_of(raw)
        if symbol is None:
            return DecodeError(ErrorCode.BAD_SYMBOL, "symbol is not printable ASCII", False, 0x05)
    return build(symbol)


def _d_heartbeat(buf, off, build):
    return build(*BODY[FrameType.HEARTBEAT].unpack_from(buf, off))


def _d_login_ack(buf, off, build):
    version, rate, burst, account = BODY[FrameType.LOGIN_ACK].unpack_from(buf, off)
    return build(version, rate, burst, _untext(account, "utf-8"))


def _d_login_reject(buf, off, build):
    return build(*BODY[FrameType.LOGIN_REJECT].unpack_from(buf, off))


def _d_accepted(buf, off, build):
    seq, ts, oid, ref, raw, side, otype, tif, price, qty = BODY[FrameType.ACCEPTED].unpack_from(buf, off)
    symbol = _SYMBOL_OF.get(raw)
    if symbol is None:
        symbol = _symbol_of(raw)
        if symbol is None:
            return DecodeError(ErrorCode.BAD_SYMBOL, "symbol is not printable ASCII", False, 0x83)
    if side not in _SIDES:
        return _enum_error(0x83, "side", side)
    if otype not in _ORDER_TYPES:
        return _enum_error(0x83, "order_type", otype)
    if tif not in _TIFS:
        return _enum_error(0x83, "tif", tif)
    return build(seq, ts, oid, ref, symbol, side, otype, tif, price, qty)


def _d_rejected(buf, off, build):
    fields = BODY[FrameType.REJECTED].unpack_from(buf, off)
    if fields[2] not in _REQUESTS:
        return _enum_error(0x84, "request", fields[2])
    return build(*fields)


def _d_fill(buf, off, build):
    fields = BODY[FrameType.FILL].unpack_from(buf, off)
    if fields[4] not in _SIDES:
        return _enum_error(0x85, "side", fields[4])
    if fields[5] not in _LIQUIDITY:
        return _enum_error(0x85, "liquidity", fields[5])
    return build(*fields)


def _d_cancelled(buf, off, build):
    return build(*BODY[FrameType.CANCELLED].unpack_from(buf, off))


def _d_amended(buf, off, build):
    *fields, kept = BODY[FrameType.AMENDED].unpack_from(buf, off)
    if kept > 1:
        return _enum_error(0x87, "priority_kept", kept)
    return build(*fields, kept == 1)


def _d_done(buf, off, build):
    return build(*BODY[FrameType.DONE].unpack_from(buf, off))


def _d_error(buf, off, build):
    code, text = BODY[FrameType.ERROR].unpack_from(buf, off)
    return build(code, _untext(text))


def _d_mass_cancelled(buf, off, build):
    return build(*BODY[FrameType.MASS_CANCELLED].unpack_from(buf, off))


def _d_not_leader(buf, off, build):
    epoch, wait, port, host, node = BODY[FrameType.NOT_LEADER].unpack_from(buf, off)
    return build(epoch, wait, port, _untext(host), _untext(node, "utf-8"))


_DECODERS: dict[int, tuple[Callable, type]] = {
    FrameType.LOGIN: (_d_login, lambda key, version: Login(key, version)),
    FrameType.NEW_ORDER: (_d_new_order, NewOrderReq),
    FrameType.CANCEL: (_d_cancel, CancelReq),
    FrameType.AMEND: (_d_amend, AmendReq),
    FrameType.CANCEL_ALL: (_d_cancel_all, CancelAllReq),
    FrameType.HEARTBEAT: (_d_heartbeat, Heartbeat),
    FrameType.LOGIN_ACK: (_d_login_ack, LoginAck),
    FrameType.LOGIN_REJECT: (_d_login_reject, LoginReject),
    FrameType.ACCEPTED: (_d_accepted, Accepted),
    FrameType.REJECTED: (_d_rejected, Rejected),
    FrameType.FILL: (_d_fill, Fill),
    FrameType.CANCELLED: (_d_cancelled, Cancelled),
    FrameType.AMENDED: (_d_amended, Amended),
    FrameType.DONE: (_d_done, Done),
    FrameType.ERROR: (_d_error, Error),
    FrameType.MASS_CANCELLED: (_d_mass_cancelled, MassCancelled),
    FrameType.NOT_LEADER: (_d_not_leader, NotLeader),
}


class Decoder:
    """Sans-I/O frame decoder for one direction of one connection.

    ``feed(data)`` then iterate (or call ``drain()``): whole frames come out as whatever
    their builder returns (the frame tuple by default) and problems as `DecodeError`
    items, in stream order. A trailing partial frame waits for more data. Nothing raises.
    """

    __slots__ = ("_buf", "_consumed", "_shed_table", "_table", "failed", "shed")

    def __init__(self, accept: Iterable[int], builders: Mapping[int, Callable] | None = None) -> None:
        table: list = [None] * 256
        for ftype in accept:
            decode, default = _DECODERS[ftype]
            build = (builders or {}).get(ftype, default)
            table[ftype] = (LENGTH[ftype], decode, build)
        self._table = table
        self._shed_table: list | None = None
        self._buf = b""
        self._consumed = 0  # stream offset of self._buf[0]
        self.failed: DecodeError | None = None
        self.shed = 0  # frames answered by a refuser (drain with shed=True) over the decoder's life

    def set_refusers(self, refusers: Mapping[int, Callable[[bytes, int], bytes]]) -> None:
        """Frame types to refuse unread when draining with shed=True: `refusers[type](buf,
        body offset)` returns the answer's bytes and no field is decoded, nothing is built."""
        table = list(self._table)
        for ftype, refuse in refusers.items():
            table[ftype] = (LENGTH[ftype], lambda buf, off, _build, refuse=refuse: refuse(buf, off), None)
        self._shed_table = table

    @classmethod
    def for_server(cls, builders: Mapping[int, Callable] | None = None) -> Decoder:
        """Decodes what clients send."""
        return cls(CLIENT_TYPES, builders)

    @classmethod
    def for_client(cls, builders: Mapping[int, Callable] | None = None) -> Decoder:
        """Decodes what the server sends."""
        return cls(SERVER_TYPES, builders)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.failed is not None or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        self._buf = self._buf + data if self._buf else data

    def __iter__(self) -> Iterator:
        return iter(self.drain())

    def drain(self, shed: bool = False) -> list:
        """Every whole frame buffered so far, decoded; with `shed`, the frames of the types
        given to `set_refusers` come out as their refusal bytes instead."""
        buf = self._buf
        n = len(buf)
        out: list = []
        if n < 2:
            return out
        append = out.append
        table = self._shed_table if shed and self._shed_table is not None else self._table
        refused = 0
        pos = 0
        while n - pos >= 2:
            length = buf[pos] | (buf[pos + 1] << 8)
            if length == 0 or length > MAX_FRAME_LENGTH:
                err = DecodeError(
                    ErrorCode.FRAME_TOO_LARGE if length else ErrorCode.BAD_LENGTH,
                    f"impossible frame length {length}",
                    True,
                    -1,
                    self._consumed + pos,
                )
                append(err)
                self.failed = err
                self._buf = b""
                self._consumed += n
                return out
            end = pos + 2 + length
            if end > n:
                break
            ftype = buf[pos + 2]
            spec = table[ftype]
            if spec is None:
                append(
                    DecodeError(
                        ErrorCode.UNKNOWN_TYPE,
                        f"unknown frame type 0x{ftype:02x}",
                        False,
                        ftype,
                        self._consumed + pos,
                    )
                )
            elif spec[0] != length:
                append(
                    DecodeError(
                        ErrorCode.BAD_LENGTH,
                        f"length {length} for type 0x{ftype:02x} (expected {spec[0]})",
                        False,
                        ftype,
                        self._consumed + pos,
                    )
                )
            else:
                build = spec[2]
                item = spec[1](buf, pos + 3, build)
                if build is None:
                    refused += 1
                elif type(item) is DecodeError:
                    item = item._replace(offset=self._consumed + pos)
                append(item)
            pos = end
        if pos:
            self._buf = buf[pos:]
            self._consumed += pos
        self.shed += refused
        return out


_REJECTED_HEAD = struct.Struct("<HBQqBH")


def overload_refusers(reason: int) -> dict[int, Callable[[bytes, int], bytes]]:
    """Refusers (for `Decoder.set_refusers`) that answer NewOrder and Amend frames with a
    Rejected(seq 0, `reason`) straight from their raw bytes: the client_ref (and the amend's
    order_id) are copied, no field is decoded or validated."""
    new_head = _REJECTED_HEAD.pack(36, FrameType.REJECTED, 0, 0, RequestKind.NEW, reason)
    amend_head = _REJECTED_HEAD.pack(36, FrameType.REJECTED, 0, 0, RequestKind.AMEND, reason)
    no_order = bytes(8)

    def new_order(buf: bytes, off: int) -> bytes:  # body: client_ref u64 first
        return new_head + buf[off : off + 8] + no_order

    def amend(buf: bytes, off: int) -> bytes:  # body: order_id u64, client_ref u64
        return amend_head + buf[off + 8 : off + 16] + buf[off : off + 8]

    return {FrameType.NEW_ORDER: new_order, FrameType.AMEND: amend}


def decode_all(data: bytes, accept: Iterable[int] = CLIENT_TYPES | SERVER_TYPES) -> tuple[list, int]:
    """Decode a complete byte string: (items, bytes left over as a partial frame)."""
    decoder = Decoder(accept)
    decoder.feed(data)
    items = decoder.drain()
    return items, decoder.buffered
