"""`loom load --plot FILE.png` (issue 14): a picture of a real run (latency distribution,
HDR-style percentiles, throughput over time) from the `plot` extra, which `make test`
installs; without the extra the command says so before it runs any load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
from test_packaging import without

REPO = Path(__file__).resolve().parents[1]
LOAD = ["load", "--protocol", "binary", "--rate", "200", "--duration", "1"]


def test_load_writes_a_three_panel_plot(tmp_path):
    out = tmp_path / "run.png"
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *LOAD, "--json", "--plot", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acked"] == 200  # stdout stays JSON; the path goes to stderr
    assert f"plot: {out}" in done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _channels = matplotlib.image.imread(out).shape
    assert (width, height) == (900, 1100)  # 9 x 11 inches at 100 dpi: the three panels


def test_without_the_plot_extra_it_says_so_before_loading(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *LOAD, "--plot", str(tmp_path / "run.png")],
        cwd=REPO,
        env=without(tmp_path, ("matplotlib",)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'loom-exchange[plot]'" in done.stderr and "Traceback" not in done.stderr
    assert "offered" not in done.stdout  # no load was run
    assert not (tmp_path / "run.png").exists()
