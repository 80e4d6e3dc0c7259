"""The journal contract: what every journal backend must do, as one test suite.

A backend's test class subclasses `JournalContract` and provides `make_journal` (and, for a
backend whose contents survive a restart, `reopen`, which turns on the durability checks):

    class TestFileJournal(JournalContract):
        def make_journal(self, tmp_path):
            return FileJournal(tmp_path / "journal")

        def reopen(self, journal, tmp_path):
            journal.close()
            return FileJournal(tmp_path / "journal")

The module also holds the command builders the other persistence tests share. It is not a
test module itself (pytest collects `test_*.py`); import it as `from journal_contract import
...` (the tests directory is on sys.path, see conftest.py).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec
import pytest

from engine.core.commands import Amend, Cancel, CancelAll, ListInstrument, NewOrder
from engine.core.domain import Instrument, OrderType, Side, TimeInForce
from engine.journal import Journal, JournalError, JournalWriteError
from engine.journal.format import BatchMeta

T0 = 1_700_000_000_000_000_000


# -- shared command builders ---------------------------------------------------------------


def make_command(seq: int):
    """A deterministic command of every kind in turn, stamped with `seq`, with values that
    stress the encoding (long, non-ASCII and empty strings; large integers)."""
    kind = seq % 6
    account = f"acct{seq % 7}"
    if kind == 0:
        cmd = ListInstrument(Instrument(f"SYM{seq}-USD", tick_size=seq % 5 + 1, max_qty=2**40 + seq))
    elif kind == 1:
        cmd = NewOrder(
            account, f"cl-{seq}-é✓", "BTC-USD", int(Side.BUY), int(OrderType.LIMIT), 100 + seq, seq
        )
    elif kind == 2:
        side, market, ioc = int(Side.SELL), int(OrderType.MARKET), int(TimeInForce.IOC)
        cmd = NewOrder(account, "x" * (seq % 50), "ETH-USD", side, market, 0, 2**33 + seq, ioc, seq % 2 == 0)
    elif kind == 3:
        cmd = Cancel(account, order_id=seq * 3)
    elif kind == 4:
        cmd = Amend(account, client_order_id=f"cl-{seq - 3}", new_qty=seq, new_price=seq + 1)
    else:
        cmd = CancelAll(account, "" if seq % 4 else "BTC-USD")
    cmd.seq = seq
    cmd.ts = T0 + seq * 1_000
    return cmd


def make_commands(count: int, start: int = 1) -> list:
    return [make_command(seq) for seq in range(start, start + count)]


def make_batches(sizes: Iterable[int], start: int = 1) -> list[list]:
    """Consecutive batches of the given sizes, seqs running on from `start`."""
    batches = []
    seq = start
    for size in sizes:
        batches.append(make_commands(size, seq))
        seq += size
    return batches


def encoded(commands: Iterable) -> bytes:
    """Commands as msgpack: byte equality means equal types, fields and values."""
    return msgspec.msgpack.encode(list(commands))


def flatten(batches: Iterable[Sequence]) -> list:
    return [cmd for batch in batches for cmd in batch]


BATCH_SIZES = (1, 3, 1, 7, 2, 16, 5, 1, 4, 9)  # 49 commands in 10 batches


# -- the contract --------------------------------------------------------------------------


class JournalContract:
    """Every backend: empty state, append/read round trip, continuity, fault injection."""

    def make_journal(self, tmp_path: Path) -> Journal:
        """A new, empty journal of the backend under test."""
        raise NotImplementedError

    def reopen(self, journal: Journal, tmp_path: Path) -> Journal | None:
        """Close `journal` and open its storage again (a restart). None (the default) for a
        backend that keeps nothing across a restart."""
        return None

    # -- helpers -----------------------------------------------------------------------------

    @pytest.fixture
    def journal(self, tmp_path: Path):
        self._opened: list[Journal] = []
        journal = self.make_journal(tmp_path)
        self._opened.append(journal)
        yield journal
        for j in self._opened:
            j.close()

    def restart(self, journal: Journal, tmp_path: Path) -> Journal:
        """The journal after a restart when the backend is durable; else the same one."""
        reopened = self.reopen(journal, tmp_path)
        if reopened is None:
            return journal
        self._opened.append(reopened)
        return reopened

    def fill(self, journal: Journal, sizes: Iterable[int] = BATCH_SIZES) -> list[list]:
        batches = make_batches(sizes, journal.last_seq + 1)
        for batch in batches:
            assert journal.append(batch) > 0
        return batches

    def assert_contents(self, journal: Journal, batches: list[list]) -> None:
        """Everything read back equals `batches`, with the batch boundaries kept."""
        commands = flatten(batches)
        assert journal.last_seq == (commands[-1].seq if commands else 0)
        assert encoded(journal.read()) == encoded(commands)
        assert encoded(journal.read(1)) == encoded(commands)
        got = list(journal.read_batches())
        assert [len(b) for b in got] == [len(b) for b in batches]
        assert [encoded(b) for b in got] == [encoded(b) for b in batches]

    # -- empty --------------------------------------------------------------------------------

    def test_empty_journal(self, journal):
        assert journal.last_seq == 0
        assert list(journal.read()) == []
        assert list(journal.read(1)) == []
        assert list(journal.read(5)) == []
        assert list(journal.read_batches()) == []

    def test_empty_journal_after_restart(self, journal, tmp_path):
        journal = self.restart(journal, tmp_path)
        assert journal.last_seq == 0
        assert list(journal.read()) == []
        batches = self.fill(journal, [2])
        self.assert_contents(journal, batches)

    # -- append and read back -----------------------------------------------------------------

    def test_append_returns_bytes_written_and_advances_last_seq(self, journal):
        seq = 0
        for batch in make_batches(BATCH_SIZES):
            written = journal.append(batch)
            assert isinstance(written, int)
            assert written > len(encoded(batch))  # the payload plus a record header
            seq += len(batch)
            assert journal.last_seq == seq == batch[-1].seq

    def test_append_then_read_back_equal_commands(self, journal):
        batches = self.fill(journal)
        self.assert_contents(journal, batches)

    def test_read_from_every_seq_including_mid_batch(self, journal):
        batches = self.fill(journal)
        commands = flatten(batches)
        last = commands[-1].seq
        for from_seq in range(1, last + 1):
            assert encoded(journal.read(from_seq)) == encoded(commands[from_seq - 1 :]), from_seq
            got = list(journal.read_batches(from_seq))
            # The batch holding from_seq comes first, trimmed to start there; the rest whole.
            want = [b for b in batches if b[-1].seq >= from_seq]
            want[0] = [c for c in want[0] if c.seq >= from_seq]
            assert [encoded(b) for b in got] == [encoded(b) for b in want], from_seq
        assert list(journal.read(last + 1)) == []
        assert list(journal.read_batches(last + 1)) == []
        assert list(journal.read(last + 100)) == []

    def test_reading_is_repeatable_and_leaves_the_journal_unchanged(self, journal):
        batches = self.fill(journal)
        first = encoded(journal.read(10))
        partial = journal.read(1)
        next(partial)  # an abandoned iterator must not disturb anything
        assert encoded(journal.read(10)) == first
        more = self.fill(journal, [3])
        self.assert_contents(journal, batches + more)

    def test_batch_meta_round_trips_with_its_batch_and_defaults_when_absent(self, journal, tmp_path):
        batches = make_batches([3, 2, 4])
        meta = BatchMeta(T0, [1, 2], [5_000, 7_250], 0, 0, 0, 0)
        later = BatchMeta(T0 + 9, [4], [1], 4, 180_000, 40_000, 12_000)  # the durations of 4..5
        journal.append(batches[0], meta)
        journal.append(batches[1])
        journal.append(batches[2], later)

        def check(j) -> None:
            got = list(j.read_records())
            assert [m for m, _ in got] == [meta, BatchMeta(), later]
            assert [encoded(c) for _, c in got] == [encoded(b) for b in batches]
            # From the middle of a batch: its commands trimmed, its meta whole.
            first_meta, first_commands = next(iter(j.read_records(2)))
            assert first_meta == meta and [c.seq for c in first_commands] == [2, 3]

        check(journal)  # before the restart closes it (a closed journal may refuse reads)
        check(self.restart(journal, tmp_path))

    def test_commands_of_every_kind_survive_the_round_trip(self, journal):
        batch = make_commands(12)
        assert {type(c) for c in batch} == {NewOrder, Cancel, Amend, CancelAll, ListInstrument}
        journal.append(batch)
        got = list(journal.read())
        assert [type(c) for c in got] == [type(c) for c in batch]
        assert got == batch
        assert encoded(got) == encoded(batch)

    def test_many_batches(self, journal, tmp_path):
        sizes = [1 + (i * 7) % 13 for i in range(300)]
        batches = self.fill(journal, sizes)
        assert journal.last_seq == sum(sizes)
        self.assert_contents(journal, batches)
        mid = sum(sizes[:150]) + 3
        assert encoded(journal.read(mid)) == encoded(flatten(batches)[mid - 1 :])
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches)

    def test_large_batch(self, journal):
        batches = self.fill(journal, [2, 5000, 1])
        self.assert_contents(journal, batches)
        assert encoded(journal.read(2500)) == encoded(flatten(batches)[2499:])

    # -- batches that do not continue the journal ---------------------------------------------

    def test_empty_batch_is_a_noop(self, journal, tmp_path):
        assert journal.append([]) == 0
        assert journal.last_seq == 0
        assert list(journal.read()) == []
        batches = self.fill(journal, [3, 2])
        assert journal.append([]) == 0
        self.assert_contents(journal, batches)
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches)

    @pytest.mark.parametrize(
        "seqs",
        [
            pytest.param([2], id="wrong-start-empty-journal"),
            pytest.param([0], id="seq-zero"),
            pytest.param([2, 3, 4], id="wrong-start-batch"),
            pytest.param([1, 2, 4], id="gap-inside-batch"),
            pytest.param([1, 2, 2], id="duplicate-inside-batch"),
            pytest.param([3, 2, 1], id="descending"),
        ],
    )
    def test_non_contiguous_first_batch_is_refused(self, journal, tmp_path, seqs):
        self.assert_refused(journal, tmp_path, [], seqs)

    @pytest.mark.parametrize(
        "offsets",
        [
            pytest.param([2], id="gap-before-batch"),
            pytest.param([0], id="overlap-repeats-last-seq"),
            pytest.param([-5, -4, -3], id="overlap-rewrites-history"),
            pytest.param([1, 2, 4, 5], id="gap-inside-batch"),
            pytest.param([1, 1, 2], id="duplicate-inside-batch"),
            pytest.param([1, 2, 3, 3], id="duplicate-at-end"),
        ],
    )
    def test_non_contiguous_batch_is_refused(self, journal, tmp_path, offsets):
        batches = self.fill(journal)
        last = journal.last_seq
        self.assert_refused(journal, tmp_path, batches, [last + o for o in offsets])

    def test_reordered_batch_is_refused(self, journal, tmp_path):
        """Right first and last seq and right length, but out of order inside: a record whose
        header says 1..4 while its commands run 1, 3, 2, 4 cannot be replayed."""
        self.assert_refused(journal, tmp_path, [], [1, 3, 2, 4])

    def test_gap_hidden_by_a_duplicate_is_refused(self, journal, tmp_path):
        """Seqs 1, 3, 3: first, last and count agree with 1..3, but 2 is missing."""
        self.assert_refused(journal, tmp_path, [], [1, 3, 3])

    def assert_refused(self, journal: Journal, tmp_path: Path, batches: list[list], seqs: list[int]):
        before = encoded(journal.read())
        last = journal.last_seq
        bad = [make_command(max(s, 1)) for s in seqs]
        for cmd, s in zip(bad, seqs, strict=True):
            cmd.seq = s
        with pytest.raises(JournalError):
            journal.append(bad)
        assert journal.last_seq == last
        assert encoded(journal.read()) == before
        # Nothing of the refused batch was kept: the right batch still goes in after it.
        good = self.fill(journal, [2])
        assert good[0][0].seq == last + 1
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches + good)

    # -- injected write failures --------------------------------------------------------------

    @pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
    def test_write_failure_leaves_nothing_and_the_same_seqs_succeed_later(self, journal, tmp_path, err):
        batches = self.fill(journal)
        last = journal.last_seq
        failing = make_commands(6, last + 1)
        journal.fail_writes(err)
        for _ in range(2):  # still failing on a retry, and a retry changes nothing either
            with pytest.raises(JournalWriteError):
                journal.append(failing)
            assert journal.last_seq == last
            self.assert_contents(journal, batches)
        journal.fail_writes(None)
        assert journal.append(failing) > 0
        assert journal.last_seq == last + 6
        self.assert_contents(journal, [*batches, failing])
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, [*batches, failing])

    def test_write_failure_on_an_empty_journal(self, journal, tmp_path):
        journal.fail_writes(errno.EIO)
        with pytest.raises(JournalWriteError):
            journal.append(make_commands(3))
        assert journal.last_seq == 0
        assert list(journal.read()) == []
        journal.fail_writes(None)
        batches = self.fill(journal, [3, 1])
        self.assert_contents(journal, batches)
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches)

    def test_write_failure_is_a_journal_error(self, journal):
        assert issubclass(JournalWriteError, JournalError)
        journal.fail_writes(errno.ENOSPC)
        with pytest.raises(JournalError):
            journal.append(make_commands(1))

    def test_contiguity_is_checked_even_while_writes_fail(self, journal):
        batches = self.fill(journal, [2])
        journal.fail_writes(errno.EIO)
        with pytest.raises(JournalError):
            journal.append(make_commands(2, 10))
        journal.fail_writes(None)
        self.assert_contents(journal, batches)

    def test_restart_while_writes_were_failing(self, journal, tmp_path):
        batches = self.fill(journal)
        journal.fail_writes(errno.EIO)
        for _ in range(3):
            with pytest.raises(JournalWriteError):
                journal.append(make_commands(4, journal.last_seq + 1))
        journal.fail_writes(None)
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches)
        more = self.fill(journal, [4])
        self.assert_contents(journal, batches + more)

    # -- durability ---------------------------------------------------------------------------

    def test_restart_gives_the_same_contents_and_appends_continue(self, journal, tmp_path):
        batches = self.fill(journal)
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches)
        more = self.fill(journal, [5, 1])
        journal = self.restart(journal, tmp_path)
        self.assert_contents(journal, batches + more)
        assert encoded(journal.read(batches[-1][-1].seq)) == encoded([batches[-1][-1], *flatten(more)])

    # -- closing ------------------------------------------------------------------------------

    def test_append_after_close_is_refused(self, journal):
        self.fill(journal, [1])
        journal.close()
        with pytest.raises(JournalError):
            journal.append(make_commands(1, 2))
        journal.close()  # closing twice is harmless
