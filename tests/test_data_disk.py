"""The data directory's file system gauges, read through a real registry at scrape time."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry

from telemetry.collectors import DataDiskCollector


def _registry(data_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DataDiskCollector(data_dir))
    return registry


def test_the_gauges_are_the_file_systems_figures(tmp_path):
    registry = _registry(tmp_path)
    st = os.statvfs(tmp_path)
    size = registry.get_sample_value("loom_data_disk_size_bytes")
    free = registry.get_sample_value("loom_data_disk_free_bytes")
    assert size == st.f_blocks * st.f_frsize
    # Others share the disk: free may move between the two reads, but not by much.
    assert abs(free - st.f_bavail * st.f_frsize) < 256 * 1024 * 1024
    assert 0 < free <= size


def test_free_space_goes_down_as_the_directory_grows(tmp_path):
    registry = _registry(tmp_path)
    before = registry.get_sample_value("loom_data_disk_free_bytes")
    blob = tmp_path / "blob"
    with open(blob, "wb") as f:  # real blocks, not a sparse file
        f.write(os.urandom(1024 * 1024) * 64)
        f.flush()
        os.fsync(f.fileno())
    after = registry.get_sample_value("loom_data_disk_free_bytes")
    # 64 MiB written; other writers on the machine blur it, so only the direction and rough size
    assert before - after > 16 * 1024 * 1024


def test_a_missing_directory_exports_nothing_rather_than_zero(tmp_path):
    registry = _registry(tmp_path / "gone")
    assert registry.get_sample_value("loom_data_disk_free_bytes") is None
    assert registry.get_sample_value("loom_data_disk_size_bytes") is None
