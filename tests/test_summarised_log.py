"""The one mechanism behind the bad-input, connection-refusal and journal-refusal logs: a
run's first event is named, what follows is counted and summarised once per window."""

from __future__ import annotations

from engine.summarised_log import SummarisedLog


def test_a_run_is_named_once_then_summarised_per_window_and_ends_after_a_quiet_gap():
    now = [0.0]
    lines = []
    runs = SummarisedLog(
        lambda w, t: lines.append((w.events, w.weight, dict(w.kinds), len(w.sources), t - w.start)),
        every_s=5.0,
        clock=lambda: now[0],
        quiet_s=5.0,
    )
    begins = []
    for i in range(12):  # one event a second for 12 s, from two sources
        now[0] = float(i)
        begins.append(runs.note("bad" if i % 2 else "worse", f"10.0.0.{i % 2}", n=2))
    assert begins == [True] + [False] * 11
    assert lines == [(5, 10, {"bad": 3, "worse": 2}, 2, 5.0), (5, 10, {"bad": 2, "worse": 3}, 2, 5.0)]
    now[0] = 20.0  # quiet for more than 5 s: the held event is summarised, a new run begins
    assert runs.note("bad", "10.0.0.9") is True
    assert lines[-1][:2] == (1, 2) and runs.total == 13 and runs.run_events == 1


def test_sources_counted_in_a_window_are_bounded():
    runs = SummarisedLog(lambda w, t: None, every_s=60.0, clock=lambda: 0.0)
    for i in range(5000):
        runs.note("refused", f"10.{i // 256}.{i % 256}.1")
    assert len(runs.window.sources) == 1000 and runs.window.events == 4999
