"""The sans-I/O FIX 4.4 codec: framing, validation, resynchronisation, encoding, and
hypothesis fuzzing (no input ever makes the parser raise; messages round-trip)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.gateways.fix.codec import (
    HEADER_TAGS,
    MAX_MESSAGE_BYTES,
    NEED_DATA,
    SOH,
    FixMessage,
    FixParser,
    ParseError,
    ParseErrorCode,
    encode,
    encode_fields,
    encode_message,
    utc_timestamp,
    utc_timestamp_ns,
)

TS = "20240102-03:04:05.678"


def logon(seq: int = 1, **extra: str) -> bytes:
    body = [(98, "0"), (108, "30"), *((int(k[1:]), v) for k, v in extra.items())]
    return encode_message("A", "CLIENT1", "LOOM", seq, TS, body)


def parse_all(*chunks: bytes, parser: FixParser | None = None) -> list:
    parser = parser or FixParser()
    events = []
    for chunk in chunks:
        parser.receive_data(chunk)
        events.extend(parser.events())
    return events


def messages(events: list) -> list[FixMessage]:
    return [e for e in events if isinstance(e, FixMessage)]


def errors(events: list) -> list[ParseError]:
    return [e for e in events if isinstance(e, ParseError)]


def with_checksum(without_trailer: bytes) -> bytes:
    return without_trailer + b"10=%03d\x01" % (sum(without_trailer) % 256)


# -- encoding ---------------------------------------------------------------------------


def test_encoded_message_has_header_length_and_checksum():
    raw = encode_message("D", "LOOM", "CLIENT1", 7, TS, [(11, "o1"), (55, "BTC-USD"), (44, 100)])
    assert raw.startswith(b"8=FIX.4.4\x019=")
    body_start = raw.index(b"\x01", 10) + 1
    body_end = raw.rindex(b"10=")
    assert int(raw[12 : body_start - 1]) == body_end - body_start  # BodyLength counts the body
    assert raw[body_end:] == b"10=%03d\x01" % (sum(raw[:body_end]) % 256)
    tags = [int(f.split(b"=")[0]) for f in raw.split(SOH)[:-1]]
    assert tags == [8, 9, 35, 49, 56, 34, 52, 11, 55, 44, 10]


def test_known_checksum_of_a_hand_written_message():
    # Computed independently: the byte sum of everything before "10=" modulo 256.
    raw = encode_fields([(35, "0"), (49, "A"), (56, "B"), (34, 1), (52, TS)])
    prefix = b"8=FIX.4.4\x019=45\x0135=0\x0149=A\x0156=B\x0134=1\x0152=" + TS.encode() + b"\x01"
    assert raw == prefix + b"10=%03d\x01" % (sum(prefix) % 256)


def test_poss_dup_header_order():
    raw = encode_message(
        "8", "S", "T", 3, TS, [(37, 1)], poss_dup=True, orig_sending_time="20240101-00:00:00.000"
    )
    tags = [int(f.split(b"=")[0]) for f in raw.split(SOH)[:-1]]
    assert tags == [8, 9, 35, 49, 56, 34, 43, 52, 122, 37, 10]


@pytest.mark.parametrize("value", ["", "a\x01b", "€"])
def test_encoder_refuses_values_that_cannot_go_on_the_wire(value):
    with pytest.raises(ValueError):
        encode_fields([(35, "0"), (58, value)])


def test_timestamps_are_utc_milliseconds_from_the_caller():
    assert utc_timestamp(0) == "19700101-00:00:00.000"
    assert utc_timestamp(1_700_000_000.123456) == "20231114-22:13:20.123"
    assert utc_timestamp_ns(1_700_000_000_999_999_999) == "20231114-22:13:20.999"


# -- parsing ----------------------------------------------------------------------------


def test_parse_gives_fields_in_order_with_dict_access():
    raw = logon(1, t553="alice", t554="secret")
    (msg,) = parse_all(raw)
    assert isinstance(msg, FixMessage)
    assert msg.msg_type == "A" and msg.seq_num == 1
    assert msg[49] == "CLIENT1" and msg.get(553) == "alice" and 554 in msg and 999 not in msg
    assert msg.get(999, "x") == "x"
    assert [t for t, _ in msg.fields] == [8, 9, 35, 49, 56, 34, 52, 98, 108, 553, 554, 10]
    assert msg.body() == [(98, "0"), (108, "30"), (553, "alice"), (554, "secret")]
    assert msg.raw == raw and encode(msg) == raw


def test_byte_by_byte_feeding_yields_the_same_messages():
    data = logon(1) + logon(2) + logon(3)
    parser = FixParser()
    events = []
    for i in range(len(data)):
        parser.receive_data(data[i : i + 1])
        event = parser.next_event()
        if event is not NEED_DATA:
            events.append(event)
    assert [m.seq_num for m in messages(events)] == [1, 2, 3]
    assert errors(events) == []
    assert parser.next_event() is NEED_DATA and parser.buffered == 0


def test_repeated_tags_are_kept_in_order():
    raw = encode_fields([(35, "D"), (49, "C"), (56, "L"), (34, 2), (52, TS), (18, "6"), (18, "1")])
    (msg,) = parse_all(raw)
    assert msg.get_all(18) == ["6", "1"] and msg[18] == "6" and msg.count(18) == 2


def test_garbage_before_a_message_is_reported_once_and_skipped():
    events = parse_all(b"hello world\r\n" + logon(1))
    (err,) = errors(events)
    assert err.code is ParseErrorCode.GARBAGE and "13 bytes of garbage" in err.text
    assert [m.seq_num for m in messages(events)] == [1]


def test_a_long_run_of_garbage_in_many_chunks_is_one_error():
    parser = FixParser()
    events = parse_all(*([b"x" * 100] * 50), logon(1), parser=parser)
    assert len(errors(events)) == 1 and len(messages(events)) == 1
    assert parser.buffered == 0  # garbage is not kept


def test_other_fix_versions_are_named():
    old = logon(1).replace(b"FIX.4.4", b"FIX.4.2")
    events = parse_all(old + logon(2))
    assert "unsupported BeginString 'FIX.4.2'" in errors(events)[0].text
    assert [m.seq_num for m in messages(events)] == [2]


def test_bad_checksum_is_reported_and_the_next_message_parsed():
    bad = logon(1)[:-4] + b"000\x01"
    if bad == logon(1):  # pragma: no cover - the real checksum happens to be 000
        bad = logon(1)[:-4] + b"001\x01"
    events = parse_all(bad + logon(2))
    (err,) = errors(events)
    assert err.code is ParseErrorCode.BAD_CHECKSUM and "CheckSum (10)" in err.text
    assert [m.seq_num for m in messages(events)] == [2]


@pytest.mark.parametrize("delta", [-3, -1, 1, 5])
def test_wrong_body_length_is_reported_and_the_stream_resyncs(delta):
    raw = logon(1)
    length = int(raw.split(SOH)[1][2:])
    bad = raw.replace(b"9=%d\x01" % length, b"9=%d\x01" % (length + delta), 1)
    events = parse_all(bad + logon(2) + logon(3))
    assert errors(events)[0].code is ParseErrorCode.BAD_BODY_LENGTH
    assert [m.seq_num for m in messages(events)][-1] == 3
    assert 2 in [m.seq_num for m in messages(events)]


@pytest.mark.parametrize(
    "length_field, code",
    [(b"9=abc\x01", ParseErrorCode.BAD_BODY_LENGTH), (b"9=\x01", ParseErrorCode.BAD_BODY_LENGTH)],
)
def test_non_numeric_body_length(length_field, code):
    bad = b"8=FIX.4.4\x01" + length_field + b"35=0\x0110=000\x01"
    events = parse_all(bad + logon(1))
    assert errors(events)[0].code is code
    assert [m.seq_num for m in messages(events)] == [1]


def test_missing_body_length_field():
    events = parse_all(b"8=FIX.4.4\x0135=0\x0110=000\x01" + logon(1))
    assert errors(events)[0].code is ParseErrorCode.BAD_BODY_LENGTH
    assert "must follow BeginString" in errors(events)[0].text
    assert [m.seq_num for m in messages(events)] == [1]


def test_oversized_messages_are_refused_without_waiting_for_the_bytes():
    parser = FixParser()
    parser.receive_data(b"8=FIX.4.4\x019=%d\x01" % (MAX_MESSAGE_BYTES + 1))
    err = parser.next_event()
    assert isinstance(err, ParseError) and err.code is ParseErrorCode.OVERSIZED
    assert "65536" in err.text
    parser.receive_data(b"x" * 1000 + logon(1))
    assert [m.seq_num for m in messages(list(parser.events()))] == [1]


def test_absurd_body_length_digits_are_oversized():
    events = parse_all(b"8=FIX.4.4\x019=99999999999\x01" + logon(1))
    assert errors(events)[0].code is ParseErrorCode.OVERSIZED
    assert [m.seq_num for m in messages(events)] == [1]


def test_a_cut_short_message_followed_by_a_full_one():
    full = logon(1, t58="some text to make it longer")
    events = parse_all(full[:40] + logon(2))
    assert errors(events) and errors(events)[0].code is ParseErrorCode.BAD_BODY_LENGTH
    assert [m.seq_num for m in messages(events)] == [2]


@pytest.mark.parametrize(
    "fields, ref_tag, text",
    [
        ([(49, "C"), (35, "0"), (56, "L"), (34, 1), (52, TS)], 35, "MsgType (35) must be the third field"),
        ([(35, "0"), (56, "L"), (34, 1), (52, TS)], 49, "required header tag 49 is missing"),
        ([(35, "0"), (49, "C"), (34, 1), (52, TS)], 56, "required header tag 56 is missing"),
        ([(35, "0"), (49, "C"), (56, "L"), (52, TS)], 34, "required header tag 34 is missing"),
        ([(35, "0"), (49, "C"), (56, "L"), (34, 1)], 52, "required header tag 52 is missing"),
        ([(35, "0"), (49, "C"), (56, "L"), (34, "x1"), (52, TS)], 34, "MsgSeqNum (34) must be a positive"),
        ([(35, "0"), (49, "C"), (56, "L"), (34, "0"), (52, TS)], 34, "MsgSeqNum (34) must be a positive"),
    ],
)
def test_header_problems(fields, ref_tag, text):
    events = parse_all(encode_fields(fields) + logon(9))
    err = errors(events)[0]
    assert err.code is ParseErrorCode.BAD_HEADER and err.ref_tag == ref_tag and text in err.text
    assert [m.seq_num for m in messages(events)] == [9]


def test_bad_fields_are_named_and_the_parsed_fields_kept():
    head = b"35=D\x0149=C\x0156=L\x0134=5\x0152=" + TS.encode() + b"\x01"
    for bad, ref_tag, text in [
        (b"55=\x01", 55, "tag 55 has no value"),
        (b"abc=1\x01", 0, "invalid tag"),
        (b"=1\x01", 0, "invalid tag"),
        (b"0055=X\x01", 0, "invalid tag"),
        (b"novalue\x01", 0, "has no '='"),
    ]:
        body = head + bad + b"11=x\x01"
        raw = with_checksum(b"8=FIX.4.4\x019=%d\x01" % len(body) + body)
        (err,) = parse_all(raw)
        assert err.code is ParseErrorCode.BAD_FIELD, bad
        assert err.ref_tag == ref_tag and text in err.text
        assert err.seq_num == 5 and err.msg_type == "D" and err.get(11) == "x"


def test_values_with_any_byte_round_trip_as_latin1():
    raw = encode_fields([(35, "0"), (49, "C"), (56, "L"), (34, 1), (52, TS), (58, "caf\xe9 = \xff")])
    (msg,) = parse_all(raw)
    assert msg[58] == "caf\xe9 = \xff" and encode(msg) == raw


# -- fuzzing ----------------------------------------------------------------------------

tags = st.integers(min_value=11, max_value=9999).filter(lambda t: t not in HEADER_TAGS)
values = st.text(alphabet=st.characters(min_codepoint=2, max_codepoint=255), min_size=1, max_size=20)
bodies = st.lists(st.tuples(tags, values), max_size=12)
header = st.tuples(
    st.sampled_from(["0", "A", "D", "8", "j"]),
    st.text(alphabet="ABCDEFGHIJ0123456789", min_size=1, max_size=8),
    st.integers(min_value=1, max_value=10**9),
)


def build(hdr, body) -> bytes:
    msg_type, sender, seq = hdr
    return encode_message(msg_type, sender, "LOOM", seq, TS, body)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(header, bodies), min_size=1, max_size=4), st.lists(st.integers(0, 10**6), max_size=8)
)
def test_round_trip_through_any_chunking(specs, cuts):
    raws = [build(h, b) for h, b in specs]
    events = parse_all(*chunked(b"".join(raws), cuts))
    assert errors(events) == []
    got = messages(events)
    assert [encode(m) for m in got] == raws
    for m, (hdr, body) in zip(got, specs, strict=True):
        assert m.msg_type == hdr[0] and m.seq_num == hdr[2] and m.body() == body


@settings(max_examples=500)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10**6), max_size=6))
def test_random_bytes_never_raise(data, cuts):
    parser = FixParser()
    for chunk in chunked(data, cuts):
        parser.receive_data(chunk)
        for event in parser.events():
            assert isinstance(event, FixMessage | ParseError)
    assert parser.buffered <= len(data)


@settings(max_examples=300)
@given(header, bodies, st.data())
def test_mutations_never_raise_and_the_stream_recovers(hdr, body, data):
    raw = build(hdr, body)
    mutation = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if mutation == "flip":
        bad = raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255))]) + raw[pos + 1 :]
    elif mutation == "insert":
        bad = raw[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + raw[pos:]
    elif mutation == "delete":
        bad = raw[:pos] + raw[pos + 1 :]
    else:
        bad = raw[:pos]
    good = build(("0", "NEXT", 77), [])
    # Enough well-formed traffic after the damage for any wrong BodyLength to run out.
    events = parse_all(bad + good * 4)
    for event in events:
        assert isinstance(event, FixMessage | ParseError)
    assert messages(events)[-1].seq_num == 77
    assert len([m for m in messages(events) if m[49] == "NEXT"]) >= 3


@settings(max_examples=200)
@given(header, bodies, st.integers(0, 10**6))
def test_truncations_wait_for_more_data(hdr, body, cut):
    raw = build(hdr, body)
    cut %= len(raw)
    parser = FixParser()
    parser.receive_data(raw[:cut])
    assert list(parser.events()) == []  # a prefix of a valid message is never an error
    parser.receive_data(raw[cut:])
    (msg,) = list(parser.events())
    assert isinstance(msg, FixMessage) and encode(msg) == raw


def test_a_parsed_message_reads_as_one_built_field_by_field():
    """FixMessage.parsed (the parser's, indexed at once) answers get/count/get_all as a
    message built with append does, repeated tags included (the session rejects those)."""
    fields = [(8, "FIX.4.4"), (9, "60"), (35, "D"), (11, "a"), (55, "X"), (11, "b"), (38, "5"), (11, "c")]
    for some in (fields, fields[:5]):
        built, parsed = FixMessage(some), FixMessage.parsed(list(some), b"raw")
        assert parsed == built and parsed.raw == b"raw"
        for tag in (8, 11, 35, 55, 38, 999):
            assert parsed.get(tag) == built.get(tag)
            assert parsed.count(tag) == built.count(tag) == sum(t == tag for t, _ in some)
            assert parsed.get_all(tag) == built.get_all(tag)
    assert FixMessage.parsed(fields, b"").count(11) == 3 and FixMessage.parsed(fields, b"").get(11) == "a"
