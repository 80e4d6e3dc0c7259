"""The FIX session store holds its writes until the session's bytes go out (one write per
flush, issue 13): against a real `loom run`, every ExecutionReport a client has read is
already in the store on disk, so after a SIGKILL the restarted node resends each of them,
under its number, and numbers the next message after them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from loomproc import loom_run_process

from engine.gateways.fix.codec import FixMessage, FixParser, encode_message, utc_timestamp
from engine.load.spawn import LOAD_ACCOUNTS, _config_text

KEY, ACCOUNT = next(iter(LOAD_ACCOUNTS.items()))
COMP_ID = "FLUSH1"
ORDERS = 300  # one write: a read's worth of orders, answered as one batch
WAIT = 20.0


class Peer:
    """A blocking FIX client on a raw loopback socket, built from the codec."""

    def __init__(self, port: int, seq: int = 1) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.parser = FixParser()
        self.seq = seq
        self.pending: list[FixMessage] = []

    def encode(self, msg_type: str, body=(), seq: int | None = None) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        return encode_message(msg_type, COMP_ID, "LOOM", seq, utc_timestamp(0), body)

    def receive(self, msg_type: str) -> FixMessage:
        while True:
            for i, msg in enumerate(self.pending):
                if msg.msg_type == msg_type:
                    return self.pending.pop(i)
            data = self.sock.recv(65536)  # the socket's timeout bounds the wait
            assert data, "connection closed by the node"
            self.parser.receive_data(data)
            self.pending += [e for e in self.parser.events() if isinstance(e, FixMessage)]

    def logon(self) -> FixMessage:
        self.sock.sendall(self.encode("A", [(98, 0), (108, 30), (553, ACCOUNT), (554, KEY)]))
        return self.receive("A")


def _order(peer: Peer, i: int) -> bytes:
    side = "1" if i % 2 else "2"  # both sides, some trades: reports of fills too
    return peer.encode(
        "D", [(11, f"c{i}"), (55, "LOAD-USD"), (54, side), (38, 1), (40, "2"), (44, 100 + i % 3)]
    )


def test_every_report_read_is_in_the_store_and_resent_after_a_sigkill(tmp_path: Path) -> None:
    config = tmp_path / "loom.toml"
    config.write_text(_config_text())
    data = tmp_path / "data"
    args = ["--config", str(config), "--data-dir", str(data), "--http-port", "0", "--fix-port", "0"]
    args += ["--binary-port", "-1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}

    with loom_run_process(args, env) as (proc, ports):
        peer = Peer(ports["fix"])
        assert peer.logon().seq_num == 1
        peer.sock.sendall(b"".join(_order(peer, i) for i in range(ORDERS)))
        reports: dict[int, FixMessage] = {}
        answered: set[str] = set()
        while len(answered) < ORDERS:  # each order's first report: New (or its fill)
            report = peer.receive("8")
            reports[report.seq_num] = report
            answered.add(report[11])
        while peer.pending:  # fill reports already read for the other side of a trade
            extra = peer.pending.pop()
            if extra.msg_type == "8":
                reports[extra.seq_num] = extra
        last = max(reports)
        assert sorted(reports) == list(range(2, last + 1))  # no gap in what was read
        on_disk = (data / "fix" / COMP_ID / "seqnums").read_text().split()
        assert int(on_disk[0]) > last  # every number read is recorded before it was sent
        peer.sock.close()
        proc.kill()  # no shutdown: nothing gets a chance to write the store late
        proc.wait(timeout=30)

    with loom_run_process(args, env) as (_proc, ports):
        peer = Peer(ports["fix"], seq=peer.seq)
        logon = peer.logon()
        assert logon.seq_num >= last + 1  # numbered after everything sent before the kill
        peer.sock.sendall(peer.encode("2", [(7, 2), (16, last)]))
        resent: dict[int, FixMessage] = {}
        while len(resent) < last - 1:
            msg = peer.receive("8")
            assert msg[43] == "Y"  # PossDupFlag
            resent[msg.seq_num] = msg
        assert sorted(resent) == sorted(reports)
        for seq, report in reports.items():
            assert (resent[seq][11], resent[seq][150], resent[seq][17]) == (
                report[11],
                report[150],
                report[17],
            )
        peer.sock.close()
