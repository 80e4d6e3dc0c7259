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


@pytest.fixture(scope="module")
def resolved_cluster() -> dict:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose missing: `make test` installs it (scripts/install-tools.sh)"
    out = subprocess.run(
        [tool, "-f", str(COMPOSE), "--profile", "cluster", "config"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return yaml.safe_load(out.stdout)


def test_cluster_profile_runs_three_nats_servers_and_two_nodes(resolved_cluster):
    services = resolved_cluster["services"]
    assert {"nats-1", "nats-2", "nats-3", "loom-a", "loom-b", "prometheus-cluster"} <= set(services)
    for name in ("loom-a", "loom-b"):
        env = services[name]["environment"]
        assert env["LOOM_CLUSTER"].split(",") == [f"nats://nats-{i}:4222" for i in (1, 2, 3)]
        assert "--node-id" in services[name]["command"]
    ids = {
        services[n]["command"][services[n]["command"].index("--node-id") + 1] for n in ("loom-a", "loom-b")
    }
    assert ids == {"a", "b"}
    names = {services[f"nats-{i}"]["environment"]["SERVER_NAME"] for i in (1, 2, 3)}
    assert names == {"nats-1", "nats-2", "nats-3"}
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_nats_config_passes_the_real_nats_server_check():
    from engine.cluster.natsserver import find_nats_server

    conf = REPO / "compose" / "nats" / "nats.conf"
    ok = subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)],
        env={"SERVER_NAME": "nats-1"},
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The check bites: without the server name the configuration is refused.
    missing = subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)], env={}, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "SERVER_NAME" in missing.stdout + missing.stderr


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


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-cluster.yml"])
def test_prometheus_config_passes_promtool(config):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs it (scripts/install-tools.sh)"
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(REPO / "compose" / config)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
