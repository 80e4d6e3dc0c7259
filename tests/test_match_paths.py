"""The hand-written rule suite (tests/test_matcher_rules.py) through both users of the match loop.

There is one order path and one match loop (`MatchingEngine._new_order`, `_match`), with a
pluggable event sink: `apply` passes a list and gets the events, `replay` (recovery, through
`SilentReplayer`) passes none and gets their count. A rule written so that it depends on the
sink (a state change made only while events are built, say) would make replay diverge from
the live engine, so, as exchange-core runs one `OrderBookBaseTest` against every book, every
rule test is collected here once more per replay input: whole commands (the input of a journal
backend without replay decoding) and the replay prefixes `decode_for_replay` yields (a file
journal's). Each engine a rule test builds gets a twin; every command the test applies goes,
decoded from the wire as from a journal, through `SilentReplayer` on the twin as well, and
after EVERY command the state hash and the event count must equal what `apply` produced (a
`SequenceError` must be raised by both). The rule test's own assertions still check `apply`'s
events: replay has to agree on everything else.

The twins are attached to the engines themselves (an instance attribute shadows `apply`), so
commands a test sends straight to `ex.engine.apply` are mirrored too; engines a test builds
with `Exchange(...)` get a twin through the `Exchange` name of the rules module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import pytest
import test_matcher_rules as rules
import test_settlement_rules as settlement_rules
from conftest import STP, Exchange, assert_consistent

from engine.core import matcher
from engine.core.matcher import MatchingEngine, SequenceError
from engine.core.replay import SilentReplayer
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash
from engine.journal.format import BatchMeta, decode_for_replay, decode_record

# Every rule test, collected again in this module (pytest collects the test functions a
# module holds, wherever they were defined); the fixtures below give each a path.
RULE_MODULES = (rules, settlement_rules)  # the matching rules, and credit, settlement and fees
RULE_TESTS = {
    name: fn
    for module in RULE_MODULES
    for name, fn in vars(module).items()
    if name.startswith("test_") and callable(fn)
}
globals().update(RULE_TESTS)

# path name -> whether replay reads the replay prefixes (`decode_for_replay`) or whole commands
PATHS = {"replay-prefixes": True, "replay-whole": False}


class PathDivergence(AssertionError):
    """Replay disagreed with `apply` (a rule test's own failures stay AssertionError)."""


class PathMirror:
    """Mirrors every command applied to `engine` through `SilentReplayer` on a twin engine."""

    def __init__(self, engine: MatchingEngine, prefixes: bool) -> None:
        self.engine = engine
        self.live_apply = engine.apply
        self.decode = decode_for_replay if prefixes else (lambda payload: decode_record(payload)[1])
        # The twin starts from the engine's state (an Exchange may wrap a restored engine).
        self.twin = restore_state(decode_state(encode_state(export_state(engine))))
        self.replayer = SilentReplayer(self.twin)
        self.commands = 0
        self.handoffs = 0  # commands replay handed to the twin's `apply` (events built, counted)
        twin_apply = self.twin.apply

        def handoff(cmd) -> list:
            self.handoffs += 1
            return twin_apply(cmd)

        self.twin.apply = handoff
        engine.apply = self.apply  # shadows the method on this instance only

    def apply(self, cmd) -> list:
        # Copied before `apply` sees it, with fresh strings, as replay decodes a journal; an
        # object that is no journal command at all goes to the twin as it is.
        if isinstance(cmd, msgspec.Struct):
            (copy,) = self.decode(msgspec.msgpack.encode((BatchMeta(), [cmd])))
        else:
            copy = cmd
        self.commands += 1
        where = f"command {self.commands}: {cmd!r}"
        try:
            events = self.live_apply(cmd)
        except SequenceError:
            try:
                self.replayer.apply([copy])
            except SequenceError:
                self.check_state(where)
                raise
            raise PathDivergence(f"{where}: apply raised SequenceError, replay did not") from None
        count = self.replayer.apply([copy])
        if count != len(events):
            raise PathDivergence(f"{where}: {count} events counted by replay, {len(events)} under apply")
        self.check_state(where)
        return events

    def check_state(self, where: str) -> None:
        if state_hash(self.twin) != state_hash(self.engine):
            raise PathDivergence(f"{where}: the state hash differs from apply's")
        assert_consistent(self.twin)


@dataclass
class PathUnderTest:
    prefixes: bool
    mirrors: list[PathMirror] = field(default_factory=list)  # one per engine built


def mirrored_exchange(path: PathUnderTest) -> type[Exchange]:
    class MirroredExchange(Exchange):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            path.mirrors.append(PathMirror(self.engine, path.prefixes))

    return MirroredExchange


@pytest.fixture(params=list(PATHS), autouse=True)
def path(request, monkeypatch: pytest.MonkeyPatch) -> PathUnderTest:
    """The replay input under test; the rules module builds its exchanges with twins meanwhile."""
    under_test = PathUnderTest(PATHS[request.param])
    for module in RULE_MODULES:
        monkeypatch.setattr(module, "Exchange", mirrored_exchange(under_test))
    return under_test


@pytest.fixture
def ex(path: PathUnderTest) -> Iterator[Exchange]:
    exchange = rules.Exchange()
    yield exchange
    assert_consistent(exchange.engine)


def test_every_rule_test_is_collected_here():
    assert len(RULE_TESTS) > 90
    modules = {fn.__module__ for fn in RULE_TESTS.values()}
    assert modules == {"test_matcher_rules", "test_settlement_rules"}


def test_every_command_of_a_rule_test_is_mirrored(path: PathUnderTest):
    """The twin sees every command, those sent to the engine directly included."""
    rules.test_non_increasing_seq_raises_and_changes_nothing(5)
    (mirror,) = path.mirrors
    assert mirror.commands == 1 + 4 + 1  # a resting order, four stale commands, a cross
    assert mirror.twin.last_seq == 9
    assert state_hash(mirror.twin) == state_hash(mirror.engine)


def test_a_rule_broken_on_the_replay_side_fails_the_suite(path: PathUnderTest, monkeypatch):
    """CANCEL_NEWEST taken for CANCEL_OLDEST while the twin replays only (as a rule written
    to depend on the event sink would): the maker is cancelled and the taker trades on. The
    rule test passes under `apply`; the mirror fails it."""
    stp_test = rules.test_stp_cancel_newest_cancels_taker_and_keeps_maker
    newest = matcher.STP_NEWEST
    real_replay = MatchingEngine.replay

    def broken_replay(self, cmd) -> int:
        matcher.STP_NEWEST = int(STP.CANCEL_OLDEST)
        try:
            return real_replay(self, cmd)
        finally:
            matcher.STP_NEWEST = newest

    monkeypatch.setattr(MatchingEngine, "replay", broken_replay)
    with pytest.raises(PathDivergence, match="state hash differs"):
        stp_test(rules.Exchange())
    monkeypatch.setattr(MatchingEngine, "replay", real_replay)
    stp_test(rules.Exchange())  # the rule restored agrees again
    # Both commands went through replay's own order path (a handoff to `apply` would hide the break).
    assert [(m.commands, m.handoffs) for m in path.mirrors] == [(2, 0), (2, 0)]
