"""`loom journal …` and `loom snapshot …`: look into and look after a node's data."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from engine.cli_datadir import EXIT_USAGE, DataDirRefused, data_dir_of, journal_dir, node_stopped
from engine.journal import JournalCorruptError
from engine.journal.segments import FileJournal, archive_dir, scan

_SNAPSHOT_API = (
    "ask it for one: curl -XPOST -H 'X-API-Key: ADMIN_KEY' http://HOST:HTTP_PORT/v1/admin/snapshot "
    "(POST /v1/admin/snapshot with the admin key)"
)


def _refused(command: str, exc: DataDirRefused) -> int:
    print(f"loom {command}: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _snapshot_dir(path: str) -> Path:
    p = Path(path)
    return p / "snapshots" if (p / "snapshots").is_dir() else p


def cmd_journal_inspect(args: argparse.Namespace) -> int:
    try:  # read-only: no lock, a live node's journal may be inspected
        directory = journal_dir(args.path)
    except DataDirRefused as exc:
        return _refused("journal inspect", exc)
    report = scan(directory)
    verdict = "ok"
    if report.damage is not None:
        verdict = f"DAMAGED: {report.damage.problem} in {report.damage.path} at byte {report.damage.offset}"
        if report.damage.seq is not None:
            verdict += f" (sequence {report.damage.seq})"
    elif report.torn_tail_bytes:
        verdict = (
            f"torn tail: {report.torn_tail_bytes} bytes at the end of {report.torn_tail_path} "
            "(an unacknowledged batch; truncated on the next start, unless a verified snapshot "
            "covers seqs beyond it)"
        )
    archived = _archived(directory)
    result = {
        "path": str(directory),
        "segments": [
            {
                "file": s.path.name,
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "records": s.records,
                "bytes": s.size,
                "version": s.version,
            }
            for s in report.segments
        ],
        "archived": archived,
        "records": report.records,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "bytes": report.bytes,
        "verdict": verdict,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"journal {directory}")
        for s in result["segments"]:
            print(
                f"  {s['file']}  seq {s['first_seq']}..{s['last_seq']}  "
                f"{s['records']} records  {s['bytes']:,} bytes  format v{s['version']}"
            )
        print(
            f"  {report.records:,} records (group-commit batches), commands seq "
            f"{report.first_seq}..{report.last_seq}, {report.bytes:,} bytes"
        )
        print(f"  integrity: {verdict}")
        if archived is not None:
            print(
                f"  archive {archived['path']}: {len(archived['segments'])} segments, commands seq "
                f"{archived['first_seq']}..{archived['last_seq']}, {archived['bytes']:,} bytes "
                f"(integrity: {archived['verdict']})"
            )
    return 1 if report.damage is not None else 0


def _archived(directory: Path) -> dict | None:
    """The segments journal retention archived (journal/archive/), checked like the live
    ones; None when there is no archive."""
    path = archive_dir(directory)
    if not path.is_dir():
        return None
    report = scan(path)
    verdict = "ok"
    if report.damage is not None:
        verdict = f"DAMAGED: {report.damage.problem} in {report.damage.path} at byte {report.damage.offset}"
    return {
        "path": str(path),
        "segments": [
            {"file": s.path.name, "first_seq": s.first_seq, "last_seq": s.last_seq, "bytes": s.size}
            for s in report.segments
        ],
        "first_seq": report.first_seq if report.segments else 0,
        "last_seq": report.last_seq,
        "bytes": report.bytes,
        "verdict": verdict,
    }


def cmd_journal_replay(args: argparse.Namespace) -> int:
    try:
        directory = journal_dir(args.path)
        with contextlib.ExitStack() as held:
            if not args.read_only:  # opening for writing cuts a torn tail: never under a live node
                held.enter_context(
                    node_stopped(
                        data_dir_of(directory),
                        "replay its journal",
                        "add --read-only (a replay that leaves a torn tail in place)",
                    )
                )
            return _replay(directory, args)
    except DataDirRefused as exc:
        return _refused("journal replay", exc)


def _replay(directory: Path, args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.core.matcher import MatchingEngine
    from engine.core.state import state_hash
    from engine.recovery import replay

    try:
        journal = FileJournal(directory, read_only=args.read_only)
    except JournalCorruptError as exc:
        print(exc)
        return 1
    first = journal.segments[0].first_seq if journal.segments else 1
    if first > 1:
        journal.close()
        print(
            f"the journal at {directory} begins at seq {first} (journal retention archived or deleted "
            "the segments before it): a replay into a fresh engine needs seq 1"
        )
        return 1
    total = journal.last_seq
    engine = MatchingEngine([])
    started = time.perf_counter()
    with Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} commands"),
        TimeRemainingColumn(),
        disable=args.json,
    ) as progress:
        task = progress.add_task("replay", total=total)
        commands, events = replay(engine, journal, 1, lambda done, _ev: progress.update(task, completed=done))
    elapsed = time.perf_counter() - started
    journal.close()
    result = {
        "commands": commands,
        "events": events,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(commands / elapsed) if elapsed else 0,
        "events_per_s": round(events / elapsed) if elapsed else 0,
        "last_seq": engine.last_seq,
        "state_hash": state_hash(engine),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"replayed {commands:,} commands -> {events:,} events in {elapsed:.2f} s "
            f"({result['commands_per_s']:,} commands/s, {result['events_per_s']:,} events/s)"
        )
        print(f"last seq {engine.last_seq}, state hash {result['state_hash']}")
    return 0


def cmd_journal_repair(args: argparse.Namespace) -> int:
    from engine.repair import RepairRefused, describe, plan, rebuild_from_snapshot, truncate

    try:
        directory = journal_dir(args.path)
    except DataDirRefused as exc:
        return _refused("journal repair", exc)
    found = plan(args.path)
    if not found.needed:
        print("\n".join(describe(found)))
        return 0
    if not args.yes:
        print("\n".join(describe(found)))
        way = "rebuild from the snapshot" if args.use_snapshot else "truncate the journal there"
        print(f"re-run with --yes to {way}")
        return 1
    try:
        with node_stopped(
            data_dir_of(directory), "repair its journal", "run `loom journal repair` without --yes"
        ):
            found = plan(args.path)  # again, under the lock: what is repaired is what was planned
            done = rebuild_from_snapshot(found) if args.use_snapshot else truncate(found)
    except DataDirRefused as exc:
        return _refused("journal repair", exc)
    except RepairRefused as exc:
        print(f"loom journal repair: {exc}", file=sys.stderr)
        return 1
    print("\n".join(done))
    return 0


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    from engine.snapshots import SnapshotStore

    store = SnapshotStore(_snapshot_dir(args.path))
    infos = store.list()
    if args.json:
        print(json.dumps([{"file": i.path.name, "seq": i.seq, "bytes": i.size} for i in infos]))
    else:
        for i in infos:
            print(f"{i.path.name}  seq {i.seq}  {i.size:,} bytes")
        if not infos:
            print("no snapshots")
    return 0


def cmd_snapshot_verify(args: argparse.Namespace) -> int:
    from engine.snapshots import SnapshotError, SnapshotStore

    store = SnapshotStore(_snapshot_dir(args.path))
    bad = 0
    for info in store.list():
        try:
            loaded = store.verify(info)
            print(f"ok   {info.path.name}  seq {loaded.seq}  hash {loaded.state_hash[:16]}")
        except (SnapshotError, ValueError) as exc:
            bad += 1
            print(f"BAD  {info.path.name}: {exc}")
    return 1 if bad else 0


def cmd_snapshot_take(args: argparse.Namespace) -> int:
    from engine.exchange import DataDirLocked, ExchangeNode, NodeConfig

    try:
        journal_dir(args.path)
    except DataDirRefused as exc:
        return _refused("snapshot take", exc)
    try:
        node = ExchangeNode(NodeConfig(Path(args.path)))
    except DataDirLocked as exc:
        print(
            f"loom snapshot take: {exc}: a running node's data directory; {_SNAPSHOT_API}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        written = node.take_snapshot()
    finally:
        node.close()
    print(f"snapshot {written.path} at seq {written.seq}, {written.size:,} bytes")
    print(f"state hash {written.state_hash}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    journal = sub.add_parser("journal", help="inspect, replay or repair a journal")
    jsub = journal.add_subparsers(dest="journal_command", required=True)
    p = jsub.add_parser("inspect", help="segments, sequence range and integrity verdict")
    p.add_argument("path", help="data directory or journal directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_journal_inspect)
    p = jsub.add_parser("replay", help="replay into a fresh engine: events/s and the state hash")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--read-only", action="store_true", help="do not truncate a torn tail (inspect a live node's journal)"
    )
    p.set_defaults(func=cmd_journal_replay)
    p = jsub.add_parser(
        "repair",
        help="truncate the journal at the first damage, or rebuild from a snapshot (explicit, lossy; "
        "what is cut is kept in journal/repaired/)",
    )
    p.add_argument("path", help="data directory or journal directory")
    p.add_argument("--yes", action="store_true", help="really repair (without it: say what would be dropped)")
    p.add_argument(
        "--use-snapshot",
        action="store_true",
        help="keep the newest verified snapshot beyond the journal's intact end; a fresh journal continues "
        "after its seq",
    )
    p.set_defaults(func=cmd_journal_repair)

    snap = sub.add_parser("snapshot", help="take, list or verify snapshots")
    ssub = snap.add_subparsers(dest="snapshot_command", required=True)
    p = ssub.add_parser("take", help="recover the node's state offline and snapshot it")
    p.add_argument("path", help="data directory (the node must not be running)")
    p.set_defaults(func=cmd_snapshot_take)
    p = ssub.add_parser("list")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot_list)
    p = ssub.add_parser("verify", help="check every snapshot's checksum and state hash")
    p.add_argument("path")
    p.set_defaults(func=cmd_snapshot_verify)
