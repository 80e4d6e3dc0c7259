"""`loom fuzz`: a seeded campaign of bad input against one gateway of a throwaway node.

It asserts what a hostile client must never achieve: a crash (the node exits), a hang (a
connection neither answered nor closed in time), a 5xx, a traceback in the server log, or
a node that no longer takes a normal order afterwards. The same code runs reduced in the
test suite (tests/test_fuzz.py) and in full from the command line.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from engine.fuzz import binary, fix, rest, ws
from engine.fuzz.node import FuzzNode

TARGETS = ("rest", "ws", "fix", "binary")
CONCURRENCY = 8
TIMEOUT_S = 10.0  # per exchange: far beyond any answer; a hang is a connection still silent after it
# Messages per session: a WebSocket session survives bad messages; FIX and binary sessions
# end at the first fatal frame, so theirs are short.
PER_SESSION = {"rest": 1, "ws": 20, "fix": 5, "binary": 5}


@dataclass
class FuzzReport:
    target: str
    cases: int
    seed: int
    seconds: float = 0.0
    hangs: int = 0
    server_errors: int = 0  # 5xx answers (REST), close 1011 (WebSocket)
    crashed: bool = False
    tracebacks: int = 0
    error_lines: int = 0
    log_bytes: int = 0
    order_after: bool = False
    statuses: dict[str, int] = field(default_factory=dict)  # REST status / WS close code -> count
    samples: list[str] = field(default_factory=list)  # a few failing cases, for reproduction

    @property
    def ok(self) -> bool:
        return (
            not self.hangs
            and not self.server_errors
            and not self.crashed
            and not self.tracebacks
            and self.order_after
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"fuzz {self.target}: {self.cases} cases (seed {self.seed}) in {self.seconds:.1f} s: "
            f"{self.hangs} hangs, {self.server_errors} 5xx, crashed {self.crashed}, "
            f"{self.tracebacks} tracebacks, {self.error_lines} ERROR lines, log {self.log_bytes} bytes, "
            f"order afterwards {'ok' if self.order_after else 'FAILED'}: {verdict}"
        )


async def _run_cases(node: FuzzNode, report: FuzzReport) -> None:
    rng = random.Random(report.seed)
    statuses: Counter[str] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    target = report.target
    per = PER_SESSION[target]
    sessions = max(1, -(-report.cases // per))

    async def one(index: int, case_rng: random.Random) -> None:
        async with gate:
            if target == "rest":
                data = rest.case(case_rng)
                got, hung = await rest.send(node.ports["http"], data, TIMEOUT_S)
                statuses.update(str(s) for s in got)
                bad = [s for s in got if s >= 500]
                report.server_errors += len(bad)
                report.hangs += hung
                if (bad or hung) and len(report.samples) < 5:
                    report.samples.append(f"case {index}: {data[:200]!r} -> {got}{' hang' if hung else ''}")
                return
            if target == "ws":
                if case_rng.random() < 0.3:
                    out = await ws.raw_session(node.ports["http"], case_rng, TIMEOUT_S)
                else:
                    out = await ws.session(node.ports["http"], case_rng, per, TIMEOUT_S)
                statuses[f"close {out['close_code']}" if out["close_code"] else "alive"] += 1
                report.server_errors += out["close_code"] == 1011
            elif target == "fix":
                out = await fix.session(node.ports["fix"], case_rng, per, TIMEOUT_S)
                statuses["closed" if out["closed"] else "alive"] += 1
            else:
                out = await binary.session(node.ports["binary"], case_rng, per, TIMEOUT_S)
                statuses["closed" if out["closed"] else "alive"] += 1
            report.hangs += out["hung"]
            if out["hung"] and len(report.samples) < 5:
                report.samples.append(f"session {index} (seed {report.seed}): hang")

    await asyncio.gather(*(one(i, random.Random(rng.getrandbits(64))) for i in range(sessions)))
    report.statuses = dict(statuses.most_common())


def run_campaign(
    target: str, cases: int, seed: int | None = None, node: FuzzNode | None = None
) -> FuzzReport:
    """Run `cases` bad inputs against `target` on `node` (a fresh node when None)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    seed = random.randrange(2**32) if seed is None else seed
    report = FuzzReport(target, cases, seed)
    own = node is None
    node = node or FuzzNode.start()
    try:
        log_before = len(node.log_text())
        started = time.perf_counter()
        asyncio.run(_run_cases(node, report))
        report.seconds = time.perf_counter() - started
        report.crashed = not node.alive()
        report.order_after = not report.crashed and node.order_works()
        text = node.log_text()[log_before:]
        report.log_bytes = len(text.encode())
        report.tracebacks = text.count("Traceback")
        report.error_lines = sum(
            " ERROR " in line or '"level": "ERROR"' in line for line in text.splitlines()
        )
        if report.tracebacks and len(report.samples) < 5:
            at = text.index("Traceback")
            report.samples.append(text[max(0, at - 300) : at + 1500])
    finally:
        if own:
            node.cleanup()
    return report
