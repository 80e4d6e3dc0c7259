"""Candles and the 24 h statistics on their own (engine/candles.py): roll-ups, the range
query, the read-back merge that a restart relies on, and the 24 h window moving with the
trades' own timestamps."""

from __future__ import annotations

from engine.candles import DAY_NS, MINUTE, Candles

T0 = 1_800_000_000 * 1_000_000_000 - (1_800_000_000 * 1_000_000_000) % (3_600 * 1_000_000_000)  # an hour


def trades(c: Candles, rows) -> None:
    for minute, price, qty in rows:
        c.add("X", T0 + minute * MINUTE + 1, price, qty)


ROWS = [(0, 100, 1), (0, 105, 2), (3, 99, 1), (5, 101, 4), (61, 110, 1)]


def test_intervals_roll_up_from_the_minutes_and_ranges_select_bucket_starts():
    c = Candles()
    trades(c, ROWS)
    one = c.query("X", "1m", 0, 0, 100)
    assert [b[0] for b in one] == [T0 + m * MINUTE for m in (0, 3, 5, 61)]
    assert one[0][1:] == [100, 105, 100, 105, 3, 2]  # open high low close volume trades
    five = c.query("X", "5m", 0, 0, 100)
    assert [b[1:] for b in five] == [
        [100, 105, 99, 99, 4, 3],
        [101, 101, 101, 101, 4, 1],
        [110, 110, 110, 110, 1, 1],
    ]
    hour = c.query("X", "1h", 0, 0, 100)
    assert [b[1:] for b in hour] == [[100, 105, 99, 101, 8, 4], [110, 110, 110, 110, 1, 1]]
    assert c.query("X", "5m", T0 + 5 * MINUTE, T0 + 60 * MINUTE, 100) == five[1:2]
    assert c.query("X", "1m", 0, 0, 2) == one[-2:]  # the newest, when limited


def test_a_read_back_merged_in_front_of_live_trades_equals_one_uninterrupted_run():
    whole = Candles()
    trades(whole, ROWS)
    # Split between two minutes, and inside minute 0 (a minute both parts hold).
    for split in (2, 1):
        old, new = Candles(), Candles()
        trades(old, ROWS[:split])  # read back from the journal (up to the restart)
        trades(new, ROWS[split:])  # the live trades after it
        new.merge_older(old.export())
        for interval in ("1m", "5m", "1h"):
            assert new.query("X", interval, 0, 0, 100) == whole.query("X", interval, 0, 0, 100)
        assert new.of("X").day(T0 + 61 * MINUTE) == whole.of("X").day(T0 + 61 * MINUTE)


def test_the_24h_window_follows_the_event_clock_and_is_kept_incrementally():
    c = Candles()
    trades(c, ROWS)
    s = c.of("X")
    assert s.day(T0 + 61 * MINUTE)[1:] == [9, 110, 99, 5]
    c.add("X", T0 + 62 * MINUTE, 98, 2)  # the cached window takes it in place
    assert s.day(T0 + 62 * MINUTE)[1:] == [11, 110, 98, 6]
    late = T0 + DAY_NS + 4 * MINUTE  # minutes 0..3 have left the window
    assert s.day(late)[1:] == [11 - 4, 110, 98, 6 - 3]
    empty = Candles().of("Y")
    assert empty.day(late)[1:] == [0, 0, 0, 0]
    empty.add(late, 7, 1)  # the first trade of an empty cached window sets high and low
    assert empty.day(late)[1:] == [1, 7, 7, 1]
