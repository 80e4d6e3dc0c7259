"""`loom load --plot FILE.png`: one picture of a run, three panels: the distribution of
order-to-ack latency, the same as an HDR-style percentile plot (latency against 1/(1-p), so
p99.9 and p99.99 get the room they deserve), and acknowledgements per second over the run
against the offered rate. matplotlib is the `plot` extra; the load does not need it."""

from __future__ import annotations

from pathlib import Path

PERCENTILES = (50, 90, 99, 99.9, 99.99)
BIN_S = 0.1  # throughput is counted per 100 ms


def write_plot(path: str | Path, report: dict, latencies_ns: list[int], acks_s: list[float]) -> Path:
    """Write the PNG; `latencies_ns` of the journaled orders, `acks_s` their answer times in
    seconds since the first send."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    lat_ms = sorted(ns / 1e6 for ns in latencies_ns)
    fig, (hist, pct, rate) = plt.subplots(3, 1, figsize=(9, 11), constrained_layout=True)
    title = (
        f"loom load --protocol {report['protocol']}: offered {report['offered_rate']:,}/s for "
        f"{report['duration_s']} s; acked {report['acked']:,}, rejected {report['rejected']:,}, "
        f"overloaded {report['overloaded']:,}"
    )
    fig.suptitle(title, fontsize=10)

    if lat_ms:
        hist.hist(lat_ms, bins=100, color="tab:blue")
        hist.set_yscale("log")
    hist.set_xlabel("order-to-ack latency (ms, from the scheduled send)")
    hist.set_ylabel("orders")
    hist.set_title("latency distribution", fontsize=9)

    n = len(lat_ms)
    if n:
        xs = [1 / (1 - i / n) for i in range(n)]  # 1/(1-p) for each ranked sample
        pct.plot(xs, lat_ms, color="tab:red")
        pct.set_xscale("log")
        ticks = [1 / (1 - p / 100) for p in PERCENTILES]
        pct.set_xticks(ticks, [f"p{p:g}" for p in PERCENTILES])
        pct.set_xlim(1, max(ticks[-1], xs[-1]))
    pct.set_ylabel("latency (ms)")
    pct.set_title("percentiles (HDR style)", fontsize=9)
    pct.grid(True, which="major", alpha=0.3)

    if acks_s:
        bins = int(max(acks_s) / BIN_S) + 1
        counts = [0] * bins
        for t in acks_s:
            counts[int(t / BIN_S)] += 1
        rate.plot(
            [i * BIN_S for i in range(bins)], [c / BIN_S for c in counts], color="tab:green", label="acks/s"
        )
    rate.axhline(report["offered_rate"], color="grey", linestyle="--", label="offered")
    rate.set_ylim(bottom=0)
    rate.set_xlabel("seconds since the first send")
    rate.set_ylabel("answers per second")
    rate.set_title(f"throughput over time ({BIN_S * 1000:.0f} ms bins)", fontsize=9)
    rate.legend(loc="lower right")

    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
