"""Candles from before this node's start, read back from the journal after start.

The journal holds commands, so the trades are the replay's events: from seq 1 when the
journal still begins there, else from the oldest snapshot that loads (a trimmed journal
holds nothing older). Each symbol keeps only its newest `days` of 1-minute buckets, so
memory is bounded whatever the journal's length; the read's time is the replay's (the
journal after the oldest kept snapshot). It runs in a one-shot spawned process (the order
index rebuild's, engine/order_lookup.py), so recovery, readiness and the order path are
untouched; until it is in, candle answers say `"partial": true`.
"""

from __future__ import annotations

import asyncio
import logging

from engine.candles import Candles
from engine.core.events import Trade
from engine.core.matcher import MatchingEngine
from engine.order_history import HistorySource

log = logging.getLogger("loom.marketdata")

RETRY_S = 5.0


def rebuild_candles(source: HistorySource, upto_seq: int, days: int) -> dict:
    """Candles.export() of every trade up to `upto_seq` the journal still yields, plus
    "from_seq": where the replay began."""
    candles = Candles(days)
    journal = source.journal(upto_seq)
    engine: MatchingEngine | None = MatchingEngine([])
    if source.first_seq(journal) > 1:
        engine = source.oldest(upto_seq)
    if engine is None:
        return {"from_seq": upto_seq + 1, **candles.export()}
    from_seq = engine.last_seq + 1
    apply = engine.apply
    add = candles.add
    for _meta, batch in journal.read_records(from_seq):
        for cmd in batch:
            if cmd.seq > upto_seq:
                return {"from_seq": from_seq, **candles.export()}
            for ev in apply(cmd):
                if type(ev) is Trade:
                    add(ev.symbol, ev.ts, ev.price, ev.qty)
    return {"from_seq": from_seq, **candles.export()}


def _rebuild_in_worker(spec, upto_seq: int, days: int) -> dict:
    from engine.order_lookup import open_source

    source = open_source(spec)
    try:
        return rebuild_candles(source, upto_seq, days)
    finally:
        source.close()


async def read_back_candles(spec, upto_seq: int, market_data) -> None:
    """Rebuild the candles up to `upto_seq` in a worker process and merge them in front of
    the live ones; retried until it succeeds (the node's stop cancels it)."""
    from engine.order_lookup import spawn_pool, stop_pool

    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        attempt += 1
        pool = spawn_pool()
        try:
            exported = await loop.run_in_executor(
                pool, _rebuild_in_worker, spec, upto_seq, market_data.candles.days
            )
            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            (log.warning if attempt == 1 else log.error)(
                "market data: reading back candles up to seq %d failed: %s; retrying in %.0f s",
                upto_seq,
                exc,
                RETRY_S,
            )
        finally:
            stop_pool(pool)
        await asyncio.sleep(RETRY_S)
    market_data.candles.merge_older(exported)
    market_data.candles_complete = True
    log.info(
        "market data: candles read back from seq %d to %d (%d symbols)",
        exported["from_seq"],
        upto_seq,
        len(exported["minutes"]),
    )
