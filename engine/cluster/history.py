"""Order histories read back in cluster mode: the replicated stream is the journal, and the
snapshots are this node's local ones and the replicated ones (the stream may be purged
behind the latter). Opened in the lookup worker process, on its own NATS connection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.setup import stream_names
from engine.cluster.snapshot_store import ReplicatedSnapshots
from engine.core.matcher import MatchingEngine
from engine.order_history import HistorySource


class StreamHistory(HistorySource):
    def __init__(self, urls: list[str], stream: str, data_dir: str | Path, node_id: str) -> None:
        super().__init__(Path(data_dir) / "snapshots")
        prefix, _lease, snapshot_bucket, _positions = stream_names(stream)
        link = NatsLink(urls, name=f"loom-{node_id}-lookup")
        try:
            self._journal = NatsJournal(link, stream=stream, prefix=prefix, owns_link=True)
            self._journal.writable = False  # a reader: it never appends
            self.replicated = ReplicatedSnapshots(link, snapshot_bucket)
        except BaseException:
            link.close()
            raise

    def where(self) -> str:
        return f"the stream {self._journal.stream}"

    def gone_why(self) -> str:
        return "[retention] purged them behind a replicated snapshot"

    def journal(self, upto_seq: int = 0) -> NatsJournal:
        return self._journal  # each read plans from the stream as it stands

    def candidates(self) -> list[tuple[int, tuple, Callable[[], MatchingEngine]]]:
        found = super().candidates()
        for snap in self._journal.link.call(self.replicated.list()):
            load = lambda s=snap: self.replicated.load(s)[0].engine  # noqa: E731
            found.append((snap.seq, ("replicated", snap.name), load))
        return sorted(found, key=lambda c: c[0])

    def close(self) -> None:
        self._journal.close()
