"""Order tracing, the cheap half: what the exchange's own process does for a trace.

An OpenTelemetry SDK span costs 11-15 µs in this process, more than a whole match, so the
exchange never builds one. The gateways and the core take plain `time.time_ns()` stamps
into an `OrderTrace` record; `TraceShipper.record()` samples it and appends its msgpack
encoding to a buffer, and `flush()` hands the buffer to a child process
(`telemetry.trace_worker`) in one non-blocking pipe write. The child builds the SDK spans
with explicit start and end times and exports them over OTLP. When the child is slow, hung
or dead, records are dropped and counted: tracing never blocks or fails an order.

Trace context enters through the W3C `traceparent` header (`parse_traceparent`); orders
without one get a fresh id (`new_trace_id`), and the child makes the exported spans carry
exactly that id. The ids themselves are in telemetry/trace_ids.py (pure functions, no I/O),
so the node names traces without importing the shipper.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

SAMPLING_ENV = "LOOM_TRACE_SAMPLING"
STATS_FD_ENV = "LOOM_TRACE_STATS_FD"  # where the worker keeps its export counts
FRAME_HEADER = 4  # little-endian u32 length before each msgpack record
MAX_RECORD_BYTES = 1 << 20  # the worker treats a longer frame as a broken stream

_ID_LIMIT = (1 << 64) - 1  # ratio sampling looks at the trace id's low 64 bits, as OTel does


class OrderTrace(msgspec.Struct, tag="o", array_like=True, gc=False):
    """What one order's trip through the exchange looked like. Timestamps are epoch
    nanoseconds (`time.time_ns()`); 0 means the order never reached that stage (e.g. a
    gateway rejection is never journaled)."""

    trace_id: str
    parent_span_id: str  # "" when the trace started here
    order_id: int
    client_order_id: str
    account: str
    symbol: str
    side: str
    order_type: str
    outcome: str  # "accepted", "filled", "cancelled", "rejected:<REASON>"
    protocol: str  # "http", "ws", "fix", "binary"
    received_ns: int
    decoded_ns: int = 0
    journal_start_ns: int = 0
    journal_end_ns: int = 0  # durable
    matched_ns: int = 0
    acked_ns: int = 0
    fills: list[tuple[int, int, int, int]] = []  # (trade_id, price, qty, ts_ns)
    # The pre-trade checks (inside match), when the order's batch had them timed (one in 8).
    risk_start_ns: int = 0
    risk_end_ns: int = 0
    status_code: int = 0  # the REST answer's HTTP status (0 for the other protocols)


class FillTrace(msgspec.Struct, tag="f", array_like=True, gc=False):
    """A fill of a resting (maker) order, for the maker's own trace: the order was accepted
    and exported in an earlier batch, and another order traded against it now. Times are
    epoch nanoseconds."""

    trace_id: str  # the maker's
    order_id: int
    account: str
    symbol: str
    side: str
    trade_id: int
    price: int
    qty: int
    leaves: int  # the maker's open quantity after the fill
    ts_ns: int  # the trade's time (the sequencer's stamp of the taker's command)
    start_ns: int  # the batch durable: matching began
    end_ns: int  # the batch matched
    taker_order_id: int = 0
    taker_trace_id: str = ""


class Sampler:
    """Which order traces to keep, decided in the exchange before anything is encoded.

    Specs (env `LOOM_TRACE_SAMPLING`):
      "all"                          keep every trace (the default);
      "ratio:<p>"                    keep a fraction p in [0, 1], deterministically on the trace id
                                     (the same rule as OTel's TraceIdRatioBased, so an upstream
                                     service sampling at the same ratio keeps the same traces);
      "errors-and-slow:<ms>[:<p>]"   keep every rejection and every order whose received->acked
                                     took more than <ms> milliseconds, plus a fraction p (default 0)
                                     of the rest.
    """

    __slots__ = ("bound", "keep_all", "keep_errors", "mode", "ratio", "slow_ns", "spec")

    def __init__(self, spec: str = "all") -> None:
        self.spec = spec = (spec or "all").strip()
        self.keep_all = False
        self.keep_errors = False
        self.ratio = 1.0
        self.slow_ns = 0
        kind, _, arg = spec.partition(":")
        try:
            if kind == "all" and not arg:
                self.keep_all = True
            elif kind == "ratio":
                self.ratio = float(arg)
            elif kind == "errors-and-slow":
                self.keep_errors = True
                ms, _, ratio = arg.partition(":")
                self.slow_ns = round(float(ms) * 1_000_000)
                self.ratio = float(ratio) if ratio else 0.0
                if self.slow_ns < 0:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad trace sampling spec {spec!r}") from None
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"bad trace sampling spec {spec!r}: ratio outside [0, 1]")
        self.mode = kind
        self.bound = round(self.ratio * (_ID_LIMIT + 1))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Sampler:
        return cls((os.environ if env is None else env).get(SAMPLING_ENV, "all"))

    def ratio_keeps(self, trace_id: str) -> bool:
        """TraceIdRatioBased's rule: the id's low 64 bits below ratio * 2**64."""
        try:
            return int(trace_id[16:], 16) < self.bound
        except ValueError:
            return False

    def should_sample(self, trace: OrderTrace) -> bool:
        latency = trace.acked_ns - trace.received_ns if trace.acked_ns else 0
        return self.keep(trace.trace_id, trace.outcome.startswith("rejected"), latency)

    def keep(self, trace_id: str, rejected: bool, latency_ns: int) -> bool:
        """The decision on raw values, so a caller can skip building a record it drops."""
        if self.keep_all:
            return True
        if self.keep_errors and (rejected or latency_ns > self.slow_ns):
            return True
        return self.ratio_keeps(trace_id)

    def __repr__(self) -> str:
        return f"Sampler({self.spec!r})"


@dataclass
class ExportCounts:
    """What the trace worker did with its spans, shared with the exchange through a small
    file both hold open (the worker rewrites it in place; the exchange reads it at scrape
    time). `handed`: spans given to the export queue; `submitted`: spans taken from it into
    an export (so handed - submitted is what the queue holds)."""

    exported: int = 0
    queue_full: int = 0
    failed_spans: int = 0
    errors: int = 0
    handed: int = 0
    submitted: int = 0

    _FORMAT = struct.Struct("<7Q")  # the four counts, handed, submitted, a check
    _MASK = (1 << 64) - 1
    _SALT = 0x6C6F6F6D2D737461  # a torn read (a write in progress) fails the check

    def _check(self, values: tuple[int, ...]) -> int:
        return (sum(values) * 0x9E3779B97F4A7C15 ^ self._SALT) & self._MASK

    def pack(self) -> bytes:
        values = (self.exported, self.queue_full, self.failed_spans, self.errors, self.handed, self.submitted)
        return self._FORMAT.pack(*values, self._check(values))

    @classmethod
    def unpack(cls, data: bytes) -> ExportCounts | None:
        """The counts, or None for a short or torn record."""
        if len(data) != cls._FORMAT.size:
            return None
        *values, check = cls._FORMAT.unpack(data)
        counts = cls(*values)
        return counts if counts._check(tuple(values)) == check else None

    def write(self, fd: int) -> None:
        os.pwrite(fd, self.pack(), 0)

    @classmethod
    def read(cls, fd: int, tries: int = 3) -> ExportCounts | None:
        for _ in range(tries):
            counts = cls.unpack(os.pread(fd, cls._FORMAT.size, 0))
            if counts is not None:
                return counts
        return None


def _set_pipe_size(fd: int, size: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        pass


class TraceShipper:
    """Samples order traces and ships them to a `telemetry.trace_worker` child process.

    Use from the exchange's event loop (not thread-safe):
      shipper = TraceShipper()              # starts the child; OTEL_* env configures its exporter
      shipper.record(trace)                 # per order, once it is acked (or rejected)
      shipper.flush()                       # once per batch / loop iteration: one pipe write
      shipper.close()                       # on shutdown: flush, EOF to the child, wait for it

    Counters: `recorded` (record() calls), `sampled_out`, `shipped` (written to the pipe),
    `dropped` (lost because the pipe was full, the child gone, or the shipper closed).
    """

    def __init__(
        self,
        sampler: Sampler | None = None,
        env: Mapping[str, str] | None = None,
        *,
        command: Sequence[str] | None = None,
        max_buffer_bytes: int = 1 << 20,
        pipe_size: int = 1 << 20,
    ) -> None:
        self.sampler = sampler if sampler is not None else Sampler.from_env(env)
        self.recorded = 0
        self.sampled_out = 0
        self.shipped = 0
        self.dropped = 0
        self.max_buffer_bytes = max_buffer_bytes
        self._buf = bytearray()
        self._ends: list[int] = []  # end offset of each record in _buf
        self._pending: memoryview | None = None  # the unwritten tail of a partial write
        self._pending_ends: list[int] = []
        self._encode = msgspec.msgpack.Encoder().encode
        self._closed = False
        self._dead = False
        child_env = dict(os.environ if env is None else env)
        root = str(Path(__file__).resolve().parent.parent)  # so the child finds `telemetry`
        path = child_env.get("PYTHONPATH")
        child_env["PYTHONPATH"] = root if not path else f"{root}{os.pathsep}{path}"
        argv = list(command) if command is not None else [sys.executable, "-m", "telemetry.trace_worker"]
        # Own session: a Ctrl-C at the terminal stops the exchange, which then closes the
        # pipe; the child sees EOF and exports what it holds instead of dying mid-batch.
        ready_r, ready_w = os.pipe()
        child_env["LOOM_TRACE_READY_FD"] = str(ready_w)
        # The worker's export counts (loom_trace_spans_*): an unlinked file both keep open.
        self._stats = tempfile.TemporaryFile(prefix="loom-trace-stats-")  # noqa: SIM115 (closed in close())
        ExportCounts().write(self._stats.fileno())
        self._export_counts = ExportCounts()
        child_env[STATS_FD_ENV] = str(self._stats.fileno())
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            env=child_env,
            bufsize=0,
            start_new_session=True,
            pass_fds=(ready_w, self._stats.fileno()),
        )
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        self._ready_fd = ready_r
        self._ready = False
        assert self.process.stdin is not None
        self._fd = self.process.stdin.fileno()
        _set_pipe_size(self._fd, pipe_size)
        os.set_blocking(self._fd, False)

    # -- hot path -----------------------------------------------------------------------------

    def record(self, trace: OrderTrace) -> None:
        """Sample and buffer one trace (a few µs; never raises for a sick child)."""
        self.recorded += 1
        if not self.sampler.should_sample(trace):
            self.sampled_out += 1
            return
        if self._dead:
            self.dropped += 1
            return
        self._append(trace)

    def record_fill(self, fill: FillTrace) -> None:
        """Buffer a maker fill: no sampling here, it belongs to an order already exported."""
        self.recorded += 1
        if self._dead:
            self.dropped += 1
            return
        self._append(fill)

    def _append(self, record: OrderTrace | FillTrace) -> None:
        data = self._encode(record)
        buf = self._buf
        buf += len(data).to_bytes(FRAME_HEADER, "little")
        buf += data
        self._ends.append(len(buf))
        if len(buf) >= self.max_buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records to the child in one non-blocking write."""
        if self._pending is not None:
            self._send(self._pending, self._pending_ends, True)
            if self._pending is not None:  # the child still is not reading
                self.dropped += len(self._ends)
                self._buf = bytearray()
                self._ends = []
                return
        if not self._ends:
            return
        data, ends = self._buf, self._ends
        self._buf = bytearray()
        self._ends = []
        self._send(memoryview(data), ends, False)

    def _send(self, data: memoryview, ends: list[int], is_pending: bool) -> None:
        if self._dead:
            self.dropped += len(ends)
            self._pending = None
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # EPIPE: the child is gone; EBADF: closed
            self._dead = True
            self.dropped += len(ends)
            self._pending = None
            return
        if n == len(data):
            self.shipped += len(ends)
            self._pending = None
            return
        if n == 0 and not is_pending:
            self.dropped += len(ends)  # nothing of it went out: whole records, safe to drop
            return
        # A partial write: the tail must follow, or the child's framing would break.
        done = bisect.bisect_right(ends, n)
        self.shipped += done
        self._pending = data[n:]
        self._pending_ends = [end - n for end in ends[done:]]

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._ends)

    def worker_ready(self) -> bool:
        """Whether the child has finished starting (imported the SDK, built its exporter)."""
        if not self._ready and self._ready_fd >= 0:
            try:
                if os.read(self._ready_fd, 1):
                    self._ready = True
            except BlockingIOError:
                return False
            except OSError:
                pass
            os.close(self._ready_fd)
            self._ready_fd = -1
        return self._ready

    def export_stats(self) -> ExportCounts:
        """The worker's export counts as it last wrote them (read at scrape time; the last
        good read stands while the worker is mid-write or after close)."""
        if not self._stats.closed:
            counts = ExportCounts.read(self._stats.fileno())
            if counts is not None:
                self._export_counts = counts
        return self._export_counts

    def alive(self) -> bool:
        return not self._dead and self.process.poll() is None

    def close(self, timeout: float = 10.0) -> int | None:
        """Flush, send EOF, and wait up to `timeout` s for the child to export and exit (it is
        killed after that). Returns the child's exit code."""
        if self._closed:
            return self.process.returncode
        deadline = time.monotonic() + timeout
        self.flush()
        while self._pending is not None and not self._dead:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self._fd], [], min(remaining, 0.1))
            self._send(self._pending, self._pending_ends, True)
        if self._pending is not None:
            self.dropped += len(self._pending_ends)
            self._pending = None
        self._closed = True
        self._dead = True
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            return self.process.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.export_stats()  # the worker's final counts, kept after the file is gone
            self._stats.close()

    def __enter__(self) -> TraceShipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "sampled_out": self.sampled_out,
            "shipped": self.shipped,
            "dropped": self.dropped,
            "buffered": self.buffered,
        }
