"""On-path cost of surveillance per order: the old listener (Surveillance.on_events, counting
per batch on the commit loop) against the desk's append, alternated in one run, and the
off-path drain (every detector). `python -m engine.bench.surveillance_cost`."""

import statistics
import time

from engine.bench.workload import generate, make_engine
from engine.core.batch_events import BatchEvents
from engine.core.surveillance import Surveillance
from engine.surveillance_desk import SurveillanceDesk

w = generate(200_000, seed=1)
eng = make_engine()
cmds = w.commands
ts = 1_700_000_000_000_000_000
results = []
for i, c in enumerate(cmds):
    c.seq = i + 1
    c.ts = ts + i * 1000
    results.append(eng.apply(c))
B = 64
batches = [(cmds[i : i + B], results[i : i + B]) for i in range(0, len(cmds), B)]
splits = [BatchEvents(r) for _c, r in batches]


def run(listener):
    t = time.perf_counter()
    for (c, r), s in zip(batches, splits, strict=True):
        listener(c, r, s)
    return (time.perf_counter() - t) / len(cmds) * 1e9


old, new, drain = [], [], []
for _ in range(5):
    old.append(run(Surveillance().on_events))
    d = SurveillanceDesk()
    new.append(run(d.on_events))
    t = time.perf_counter()
    d.drain()
    drain.append((time.perf_counter() - t) / len(cmds) * 1e9)
print(f"{len(cmds)} orders in batches of {B}: on the order path, ns/order (median of 5, alternated):")
print(f"  main  Surveillance.on_events (counting per batch): {statistics.median(old):.0f}")
print(f"  branch SurveillanceDesk.on_events (append only):  {statistics.median(new):.0f}")
print(f"  branch off-path drain (all detectors), ns/order:  {statistics.median(drain):.0f}")
