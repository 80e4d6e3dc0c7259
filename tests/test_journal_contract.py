"""The journal contract (tests/journal_contract.py) run against every backend."""

from __future__ import annotations

import pytest
from journal_contract import JournalContract, flatten, make_batches
from natsproc import unique_stream

from engine.cluster.journal import NatsJournal
from engine.journal.format import SEGMENT_HEADER
from engine.journal.memory import MemoryJournal
from engine.journal.segments import SEGMENT_RE, FileJournal, scan


class TestMemoryJournal(JournalContract):
    def make_journal(self, tmp_path):
        return MemoryJournal()

    def test_size_bytes_counts_every_record(self, journal):
        written = sum(journal.append(b) for b in make_batches([1, 4, 2]))
        assert journal.size_bytes == written


class TestFileJournal(JournalContract):
    segment_bytes = 64 * 1024 * 1024
    fsync = True

    def make_journal(self, tmp_path):
        return FileJournal(tmp_path / "journal", self.segment_bytes, self.fsync)

    def reopen(self, journal, tmp_path):
        journal.close()
        reopened = FileJournal(tmp_path / "journal", self.segment_bytes, self.fsync)
        assert reopened.torn_tail_truncations == 0  # a clean shutdown leaves no torn tail
        return reopened

    def test_reordered_batch_is_refused(self, journal, tmp_path):
        super().test_reordered_batch_is_refused(journal, tmp_path)

    def test_gap_hidden_by_a_duplicate_is_refused(self, journal, tmp_path):
        super().test_gap_hidden_by_a_duplicate_is_refused(journal, tmp_path)

    def test_files_on_disk_match_what_was_appended(self, journal, tmp_path):
        batches = self.fill(journal, [3, 4, 5] * 10)
        report = scan(tmp_path / "journal")
        assert report.damage is None
        assert report.torn_tail_bytes == 0
        assert report.last_seq == journal.last_seq == len(flatten(batches))
        assert report.records == len(batches)
        assert report.bytes == journal.size_bytes
        for seg in report.segments:
            assert SEGMENT_RE.match(seg.path.name)
            assert seg.path.stat().st_size == seg.size


class TestFileJournalTinySegments(TestFileJournal):
    """Segments of a few hundred bytes: nearly every batch rolls over to a new file."""

    segment_bytes = 300

    def test_segments_roll_over(self, journal, tmp_path):
        batches = self.fill(journal)
        files = sorted(p.name for p in (tmp_path / "journal").iterdir())
        assert len(files) >= 5
        assert len(journal.segments) == len(files)
        # Each segment starts where the previous one ended and is named after its first seq.
        for prev, seg in zip(journal.segments, journal.segments[1:], strict=False):
            assert seg.first_seq == prev.last_seq + 1
            assert seg.path.name == f"journal-{seg.first_seq:020d}.seg"
            assert prev.size <= self.segment_bytes or prev.records == 1
        assert journal.segments[0].size > SEGMENT_HEADER.size
        reopened = self.restart(journal, tmp_path)
        assert [s.first_seq for s in reopened.segments] == [s.first_seq for s in journal.segments]
        self.assert_contents(reopened, batches)


class TestFileJournalNoFsync(TestFileJournal):
    """fsync=False (benchmarks, tests) must not change what is written."""

    fsync = False


class TestNatsJournal(JournalContract):
    """The replicated backend, on a real 3-node JetStream cluster (tests/natsproc.py)."""

    @pytest.fixture(autouse=True)
    def _link(self, nats_link):
        self.link = nats_link
        self.names = unique_stream()

    def make_journal(self, tmp_path):
        return NatsJournal(self.link, *self.names)

    def reopen(self, journal, tmp_path):
        journal.close()
        return NatsJournal(self.link, *self.names)

    def test_each_batch_is_one_stream_message(self, journal):
        batches = self.fill(journal, [3, 1, 4])
        assert journal.expected == len(batches)  # stream seq of the last message
        assert [len(m.commands) for m in journal.messages(1, 3, journal.batch_subject)] == [3, 1, 4]
