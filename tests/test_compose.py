"""The compose stack for Docker users: the real docker-compose validates it (no Docker
engine runs here), every port is published on loopback only, every file it mounts exists,
and the real promtool accepts its Prometheus configuration."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def resolved() -> dict:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose missing: `make test` installs it (scripts/install-tools.sh)"
    out = subprocess.run([tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid(resolved):
    assert {"loom", "prometheus", "alertmanager", "tempo", "grafana"} <= set(resolved["services"])


def test_ports_are_published_on_loopback_only(resolved):
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_every_mounted_file_exists(resolved):
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if volume.get("type") == "volume" if isinstance(volume, dict) else not source.startswith("/"):
                continue  # a named volume
            assert Path(source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs it (scripts/install-tools.sh)"
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(REPO / "compose" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
