"""The binary frame protocol: every frame type round-trips, errors are items (never
exceptions), the resynchronisation policy holds, and fuzzed input cannot make the decoder
raise."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.gateways.binary import protocol as p
from engine.gateways.binary.protocol import DecodeError, Decoder, ErrorCode, FrameType

SAMPLES = {
    FrameType.LOGIN: p.Login("k" * 32, 1),
    FrameType.NEW_ORDER: p.NewOrderReq(2**64 - 1, "BTC-USD", 2, 2, 4, True, 3, -(2**63), 2**63 - 1),
    FrameType.CANCEL: p.CancelReq(123, 456),
    FrameType.AMEND: p.AmendReq(1, 2, 30, 40, 5),
    FrameType.CANCEL_ALL: p.CancelAllReq("ETH-USD"),
    FrameType.HEARTBEAT: p.Heartbeat(99),
    FrameType.LOGIN_ACK: p.LoginAck(1, 20_000, 40_000, "alice"),
    FrameType.LOGIN_REJECT: p.LoginReject(2, 1),
    FrameType.ACCEPTED: p.Accepted(7, 1_700_000_000_000_000_000, 11, 12, "SYM-1234567890AB", 1, 1, 3, 0, 50),
    FrameType.REJECTED: p.Rejected(8, 5, 2, 201, 13, 14),
    FrameType.FILL: p.Fill(9, 6, 15, 16, 2, 1, 100, 7, 3),
    FrameType.CANCELLED: p.Cancelled(10, 7, 17, 6, 4, 1),
    FrameType.AMENDED: p.Amended(11, 8, 18, 19, 105, 20, 13, False),
    FrameType.DONE: p.Done(12, 9, 20, 21),
    FrameType.ERROR: p.Error(3, "impossible frame length 65535"),
    FrameType.MASS_CANCELLED: p.MassCancelled(13, 10, 2**32 - 1),
    FrameType.NOT_LEADER: p.NotLeader(2**64 - 1, 1200, 65535, "h" * 64, "node-a"),
}
ANY_DIRECTION = p.CLIENT_TYPES | p.SERVER_TYPES


def decode(data: bytes, accept=ANY_DIRECTION) -> list:
    items, left = p.decode_all(data, accept)
    assert left == 0
    return items


def new_order(**kw) -> bytes:
    fields = dict(
        client_ref=1,
        symbol="BTC-USD",
        side=1,
        order_type=2,
        tif=1,
        post_only=False,
        stp=1,
        price=100,
        qty=10,
    )
    fields.update(kw)
    return p.encode_new_order(**fields)


def raw_new_order(**kw) -> bytes:
    """A NewOrder frame packed without the encoder's checks (to build invalid ones)."""
    fields = dict(ref=1, symbol=b"BTC-USD", side=1, otype=2, tif=1, flags=0, stp=1, price=100, qty=10)
    fields.update(kw)
    return p.FRAME[FrameType.NEW_ORDER].pack(
        p.LENGTH[FrameType.NEW_ORDER], FrameType.NEW_ORDER, *fields.values()
    )


# -- round trips ---------------------------------------------------------------------------


def test_samples_cover_every_frame_type():
    assert set(SAMPLES) == set(FrameType)
    assert set(FrameType) == set(p.CLIENT_TYPES | p.SERVER_TYPES)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda t: t.name)
def test_every_frame_type_round_trips(ftype):
    frame = SAMPLES[ftype]
    data = p.encode(frame)
    length, wire_type = p.HEADER.unpack_from(data)
    assert wire_type == ftype
    assert length == p.LENGTH[ftype] == len(data) - 2
    assert length <= p.MAX_FRAME_LENGTH
    accept = p.CLIENT_TYPES if ftype in p.CLIENT_TYPES else p.SERVER_TYPES
    assert decode(data, accept) == [frame]


def test_layout_is_little_endian_and_fixed():
    data = p.encode_cancel(order_id=0x0102030405060708, client_ref=9)
    assert data == b"\x11\x00\x03" + bytes([8, 7, 6, 5, 4, 3, 2, 1]) + (9).to_bytes(8, "little")
    assert len(new_order()) == 48  # 2 + 1 + 45 for any NewOrder


def test_many_frames_in_one_buffer_and_byte_by_byte():
    frames = [SAMPLES[t] for t in FrameType] * 3
    data = p.encode_many(frames)
    assert decode(data) == frames
    decoder = Decoder(ANY_DIRECTION)
    out = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        out.extend(decoder)
    assert out == frames
    assert decoder.buffered == 0


def test_partial_frame_waits_for_the_rest():
    data = new_order(client_ref=5)
    decoder = Decoder.for_server()
    decoder.feed(data[:-1])
    assert decoder.drain() == []
    assert decoder.buffered == len(data) - 1
    decoder.feed(data[-1:])
    (frame,) = decoder.drain()
    assert frame.client_ref == 5 and frame.symbol == "BTC-USD"


def test_empty_symbol_means_none_for_cancel_all():
    assert decode(p.encode_cancel_all()) == [p.CancelAllReq("")]


def test_builders_replace_the_frame_tuples():
    seen = []
    decoder = Decoder.for_server({FrameType.NEW_ORDER: lambda *fields: seen.append(fields) or "built"})
    decoder.feed(new_order(client_ref=7, price=250) + p.encode_heartbeat(3))
    assert decoder.drain() == ["built", p.Heartbeat(3)]
    assert seen == [(7, "BTC-USD", 1, 2, 1, False, 1, 250, 10)]


def test_encoder_refuses_what_the_layout_cannot_carry():
    with pytest.raises(ValueError):
        new_order(symbol="A-SYMBOL-LONGER-THAN-16")
    with pytest.raises(ValueError):
        new_order(symbol="BTC USD")  # space is not a symbol character
    with pytest.raises(ValueError):
        p.encode_login("k" * 33)
    with pytest.raises(struct.error):
        new_order(client_ref=-1)
    with pytest.raises(TypeError):
        p.encode(("not", "a", "frame"))


def test_error_text_is_truncated_to_its_field():
    (frame,) = decode(p.encode_error(ErrorCode.INTERNAL, "x" * 100))
    assert frame == p.Error(ErrorCode.INTERNAL, "x" * p.TEXT_BYTES)


def test_client_ref_and_client_order_id_map_both_ways():
    for ref in (1, 42, 2**64 - 1):
        assert p.client_ref_of(p.client_order_id_of(ref)) == ref
    assert p.client_order_id_of(0) == ""
    assert p.client_ref_of("") == 0
    assert p.client_ref_of("abc-1") == 0  # set by another gateway
    assert p.client_ref_of(str(2**64)) == 0  # beyond u64
    assert p.client_ref_of("²") == 0  # a digit, but not a decimal one


# -- errors and resynchronisation ---------------------------------------------------------


def assert_error(item, code, fatal=False):
    assert type(item) is DecodeError, item
    assert item.code == code, item
    assert item.fatal is fatal, item


def test_unknown_type_is_skipped_by_its_length():
    data = b"\x04\x00\xee\x01\x02\x03" + p.encode_heartbeat(1)
    err, hb = decode(data)
    assert_error(err, ErrorCode.UNKNOWN_TYPE)
    assert err.frame_type == 0xEE and err.offset == 0
    assert hb == p.Heartbeat(1)


def test_frames_of_the_other_direction_are_unknown_types():
    data = p.encode(SAMPLES[FrameType.ACCEPTED]) + new_order()
    err, order = decode(data, p.CLIENT_TYPES)
    assert_error(err, ErrorCode.UNKNOWN_TYPE)
    assert type(order) is p.NewOrderReq
    (err,) = decode(new_order(), p.SERVER_TYPES)
    assert_error(err, ErrorCode.UNKNOWN_TYPE)


def test_wrong_length_for_the_type_is_reported_and_skipped():
    short = b"\x10\x00\x02" + bytes(15)  # a NewOrder needs length 46
    err, hb = decode(short + p.encode_heartbeat(2), p.CLIENT_TYPES)
    assert_error(err, ErrorCode.BAD_LENGTH)
    assert "46" in err.text
    assert hb == p.Heartbeat(2)


@pytest.mark.parametrize(
    ("fields", "code", "word"),
    [
        ({"symbol": "BTC\xe9".encode("latin-1")}, ErrorCode.BAD_SYMBOL, "ASCII"),
        ({"symbol": b"BTC\0USD"}, ErrorCode.BAD_SYMBOL, "ASCII"),
        ({"symbol": b"BTC USD"}, ErrorCode.BAD_SYMBOL, "ASCII"),
        ({"side": 3}, ErrorCode.BAD_ENUM, "side"),
        ({"otype": 0}, ErrorCode.BAD_ENUM, "order_type"),
        ({"tif": 2}, ErrorCode.BAD_ENUM, "tif"),
        ({"stp": 4}, ErrorCode.BAD_ENUM, "stp"),
        ({"flags": 0x82}, ErrorCode.BAD_FIELD, "flag"),
    ],
)
def test_invalid_fields_are_reported_and_the_next_frame_decodes(fields, code, word):
    data = raw_new_order(**fields) + new_order(client_ref=2)
    err, good = decode(data, p.CLIENT_TYPES)
    assert_error(err, code)
    assert word in err.text
    assert err.frame_type == FrameType.NEW_ORDER
    assert good.client_ref == 2


def test_non_ascii_api_key_is_a_field_error():
    data = p.FRAME[FrameType.LOGIN].pack(35, FrameType.LOGIN, 1, "ключ".encode())
    (err,) = decode(data, p.CLIENT_TYPES)
    assert_error(err, ErrorCode.BAD_FIELD)


@pytest.mark.parametrize(("length", "code"), [(0, ErrorCode.BAD_LENGTH), (256, ErrorCode.FRAME_TOO_LARGE)])
def test_impossible_length_is_fatal_and_the_rest_is_discarded(length, code):
    good = new_order(client_ref=1)
    decoder = Decoder.for_server()
    decoder.feed(good + struct.pack("<H", length) + new_order(client_ref=2))
    first, err = decoder.drain()
    assert first.client_ref == 1
    assert_error(err, code, fatal=True)
    assert err.offset == len(good)
    assert decoder.failed == err
    decoder.feed(new_order(client_ref=3))  # the framing is lost for good
    assert decoder.drain() == []
    assert decoder.buffered == 0


def test_oversized_length_is_detected_from_the_two_length_bytes_alone():
    decoder = Decoder.for_server()
    decoder.feed(b"\xff\xff")
    (err,) = decoder.drain()
    assert_error(err, ErrorCode.FRAME_TOO_LARGE, fatal=True)


# -- fuzzing -------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAME_TYPES = (
    p.Login,
    p.NewOrderReq,
    p.CancelReq,
    p.AmendReq,
    p.CancelAllReq,
    p.Heartbeat,
    p.LoginAck,
    p.LoginReject,
    p.Accepted,
    p.Rejected,
    p.Fill,
    p.Cancelled,
    p.Amended,
    p.Done,
    p.Error,
    p.MassCancelled,
)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
symbols = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16)

new_orders = st.builds(
    p.NewOrderReq,
    u64,
    symbols,
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2]),
    st.sampled_from([1, 3, 4]),
    st.booleans(),
    st.integers(0, 3),
    i64,
    i64,
)
client_frames = st.one_of(
    new_orders,
    st.builds(p.CancelReq, u64, u64),
    st.builds(p.AmendReq, u64, u64, i64, i64, u64),
    st.builds(p.CancelAllReq, st.one_of(st.just(""), symbols)),
    st.builds(p.Heartbeat, u64),
    st.builds(
        p.Login,
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=32),
        st.integers(0, 0xFFFF),
    ),
)
streams = st.lists(client_frames, min_size=1, max_size=12)


def check_items(items: list, decoder: Decoder) -> None:
    """What every decoder output must look like, whatever the input."""
    for i, item in enumerate(items):
        assert type(item) in FRAME_TYPES or type(item) is DecodeError, item
        if type(item) is DecodeError:
            assert isinstance(item.code, int) and isinstance(item.text, str)
            if item.fatal:
                assert i == len(items) - 1, "nothing may follow a fatal error"
                assert decoder.failed == item
    assert decoder.buffered <= p.MAX_FRAME_LENGTH + 1  # a partial frame at most: bounded memory


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(1, 300), max_size=20))
def test_arbitrary_bytes_never_raise(data, cuts):
    for accept in (p.CLIENT_TYPES, p.SERVER_TYPES):
        decoder = Decoder(accept)
        items = []
        pos = 0
        for cut in [*cuts, len(data)]:
            decoder.feed(data[pos : pos + cut])
            items.extend(decoder)
            pos += cut
        check_items(items, decoder)


@FUZZ
@given(streams)
def test_generated_streams_round_trip(frames):
    assert decode(p.encode_many(frames), p.CLIENT_TYPES) == frames


@FUZZ
@given(streams, st.data())
def test_truncations_yield_a_prefix_and_no_errors(frames, data):
    encoded = p.encode_many(frames)
    cut = data.draw(st.integers(0, len(encoded)))
    decoder = Decoder.for_server()
    decoder.feed(encoded[:cut])
    items = decoder.drain()
    assert not any(type(i) is DecodeError for i in items)
    assert items == frames[: len(items)]
    whole = sum(len(p.encode(f)) for f in items)
    assert decoder.buffered == cut - whole
    if len(items) < len(frames):
        assert decoder.buffered < len(p.encode(frames[len(items)]))
    decoder.feed(encoded[cut:])  # the rest arrives: everything decodes
    assert items + decoder.drain() == frames


@FUZZ
@given(streams, st.data())
def test_bit_flips_never_raise_and_keep_framing_outside_the_length(frames, data):
    encoded = bytearray(p.encode_many(frames))
    starts = []
    pos = 0
    for f in frames:
        starts.append(pos)
        pos += len(p.encode(f))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    decoder = Decoder.for_server()
    decoder.feed(bytes(encoded))
    items = decoder.drain()
    check_items(items, decoder)
    in_length_field = any(s <= bit // 8 < s + 2 for s in starts)
    if not in_length_field:
        # the frame boundaries are intact: one item per frame, only the flipped one differs
        hit = max(i for i, s in enumerate(starts) if s <= bit // 8)
        assert len(items) == len(frames)
        assert [x for i, x in enumerate(items) if i != hit] == [x for i, x in enumerate(frames) if i != hit]


@FUZZ
@given(streams, st.integers(p.MAX_FRAME_LENGTH + 1, 0xFFFF), st.binary(max_size=300))
def test_oversized_lengths_end_the_stream_with_one_fatal_error(frames, length, tail):
    decoder = Decoder.for_server()
    decoder.feed(p.encode_many(frames) + struct.pack("<H", length) + tail)
    items = decoder.drain()
    assert items[:-1] == frames
    assert_error(items[-1], ErrorCode.FRAME_TOO_LARGE, fatal=True)
    decoder.feed(p.encode_many(frames))
    assert decoder.drain() == []
