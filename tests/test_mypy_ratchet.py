"""The mypy ratchet (scripts/mypy_ratchet.py): a count above the baseline fails, one below it
passes and asks for the baseline to be lowered, and a run without a summary is not "0 errors"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mypy_ratchet.py"
_spec = importlib.util.spec_from_file_location("mypy_ratchet", SCRIPT)
assert _spec is not None and _spec.loader is not None
ratchet = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ratchet  # dataclasses look their module up there
_spec.loader.exec_module(ratchet)


def test_more_errors_than_the_baseline_fail_naming_how_many_are_new():
    verdict = ratchet.judge(312, 310, "base.txt")
    assert not verdict.ok
    assert "312 errors, above the baseline of 310 (base.txt)" in verdict.message
    assert "2 new" in verdict.message


def test_fewer_errors_pass_and_ask_for_the_baseline_to_be_lowered():
    verdict = ratchet.judge(300, 310, "base.txt")
    assert verdict.ok
    assert "Lower the baseline" in verdict.message and "write 300 to base.txt" in verdict.message


def test_the_baseline_itself_passes():
    assert ratchet.judge(310, 310).ok


def test_the_count_is_read_from_mypys_summary_and_a_crash_is_not_zero():
    assert (
        ratchet.count_errors("a.py:1: error: x  [misc]\nFound 1 error in 1 file (checked 3 source files)\n")
        == 1
    )
    assert ratchet.count_errors("Found 214 errors in 40 files (checked 166 source files)\n") == 214
    assert ratchet.count_errors("Success: no issues found in 166 source files\n") == 0
    with pytest.raises(ValueError, match="no mypy summary line"):
        ratchet.count_errors("mypy: can't read file 'nowhere': No such file or directory\n")


def test_the_committed_baseline_is_a_count(tmp_path):
    assert ratchet.read_baseline() >= 0
    bad = tmp_path / "baseline.txt"
    bad.write_text("lots\n")
    with pytest.raises(ValueError, match="expected an error count"):
        ratchet.read_baseline(bad)
