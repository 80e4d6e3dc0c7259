"""The heap huge-page keeper (engine/hugepages.py): what it reads of the kernel, that a pass
puts a real heap on huge pages, and that it never works while a snapshot child runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.hugepages import HUGE, HugePageKeeper, anonymous_ranges, thp_mode


def test_thp_mode_reads_the_bracketed_setting(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(str(setting)) == "madvise"
    setting.write_text("[never]\n")
    assert thp_mode(str(setting)) == "never"
    assert thp_mode(str(tmp_path / "missing")) == ""


def test_anonymous_ranges_are_whole_aligned_huge_pages_of_private_writable_memory(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        # the heap, 0x1000..0x900000: aligned inside it, 0x200000..0x800000
        "00001000-00900000 rw-p 00000000 00:00 0          [heap]\n"
        # an anonymous arena of exactly two huge pages
        "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n"
        # too small to hold an aligned huge page
        "7f0000500000-7f0000600000 rw-p 00000000 00:00 0 \n"
        # a file mapping, a read-only one and the stack are left alone
        "7f1000000000-7f1000400000 rw-p 00000000 08:01 42         /usr/lib/libx.so\n"
        "7f2000000000-7f2000400000 r--p 00000000 00:00 0 \n"
        "7ffc00000000-7ffc00400000 rw-p 00000000 00:00 0          [stack]\n"
    )
    assert list(anonymous_ranges(str(maps))) == [
        (0x200000, 0x800000),
        (0x7F0000000000, 0x7F0000400000),
    ]


def test_a_pass_waits_out_a_running_snapshot_child():
    keeper = HugePageKeeper(busy=lambda: True)
    if not keeper.enabled:
        pytest.skip(keeper.reason)
    assert keeper.run_pass() == 0  # stopped before its first collapse
    assert keeper.passes == 0


PROBE = """
import json, sys
from engine.hugepages import HugePageKeeper

def anon_huge_kb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0

heap = [{"order": i, "price": i * 3, "client": str(i)} for i in range(600_000)]  # ~200 MB
keeper = HugePageKeeper()
if not keeper.enabled:
    print(json.dumps({"skip": keeper.reason}))
    sys.exit(0)
before = anon_huge_kb()
collapsed = keeper.run_pass()
print(json.dumps({"before_kb": before, "after_kb": anon_huge_kb(), "collapsed": collapsed}))
"""


def test_a_pass_puts_a_python_heap_on_huge_pages():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    if "skip" in result:
        pytest.skip(result["skip"])
    if result["collapsed"] == 0:
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux < 6.1)")
    # Most of a 200 MB heap of small objects ends up mapped by 2 MiB pages.
    assert result["after_kb"] - result["before_kb"] >= 100 * 1024, result
    assert result["collapsed"] % HUGE == 0


def test_a_mapping_that_cannot_collapse_does_not_stop_the_others(monkeypatch):
    """FIX: the first EINVAL (one mapping of a `loom run` refuses) ended the whole pass, so a
    real node's heap stayed on 4 KiB pages (67 of 820 MB on huge pages)."""
    import ctypes
    import errno

    import engine.hugepages as hugepages

    ranges = [(0, 2 * HUGE), (4 * HUGE, 6 * HUGE)]
    monkeypatch.setattr(hugepages, "anonymous_ranges", lambda: iter(ranges))
    keeper = HugePageKeeper()
    calls = []

    def fake_madvise(addr, length, advice):
        calls.append((addr, advice))
        if advice == hugepages.MADV_COLLAPSE and addr < 2 * HUGE:
            ctypes.set_errno(errno.EINVAL)
            return -1
        return 0

    keeper._madvise = fake_madvise
    assert keeper.run_pass() == 2 * HUGE  # the second mapping, both of its huge pages
    collapses = [a for a, advice in calls if advice == hugepages.MADV_COLLAPSE]
    assert collapses == [0, 4 * HUGE, 5 * HUGE]  # the refusing mapping is left after one try
