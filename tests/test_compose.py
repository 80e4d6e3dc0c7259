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


# -- Alertmanager: routing to the compose services ------------------------------------------

AM_DIR = REPO / "compose" / "alertmanager"


def _am_config() -> dict:
    return yaml.safe_load((AM_DIR / "alertmanager.yml").read_text())


def _listening_ports(service: dict) -> set[int]:
    """The container ports a service listens on: published targets, `expose`, and a
    `--port` in its command."""
    ports = {
        int(p["target"]) if isinstance(p, dict) else int(str(p).split("/")[0].rsplit(":", 1)[-1])
        for p in service.get("ports", [])
    }
    ports |= {int(p) for p in service.get("expose", [])}
    command = service.get("command") or []
    if "--port" in command:
        ports.add(int(command[command.index("--port") + 1]))
    return ports


def _mount_source(service: dict, target_file: str) -> Path | None:
    """The host file behind `target_file` inside the container (a file or directory bind)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):  # docker-compose v2 prints the long form
            source, inside = volume.get("source", ""), volume["target"]
        else:
            source, inside = str(volume).split(":")[:2]
        if not source.startswith("/"):
            continue  # a named volume
        inside = inside.rstrip("/")
        if target_file == inside or target_file.startswith(inside + "/"):
            return Path(source) / target_file[len(inside) :].lstrip("/")
    return None


def test_compose_alertmanager_config_is_generated_from_the_bare_metal_one():
    from alerts import alertmanager

    assert alertmanager.main(["--check"]) == 0, "run `python -m alerts.alertmanager`"
    bare = yaml.safe_load((REPO / "alerts" / "alertmanager.yml").read_text())
    ours = _am_config()
    assert ours["route"] == bare["route"] and ours["inhibit_rules"] == bare["inhibit_rules"]


def test_every_webhook_reaches_a_compose_service_on_a_port_it_listens_on(resolved_cluster):
    from urllib.parse import urlsplit

    services = resolved_cluster["services"]
    urls = [h["url"] for r in _am_config()["receivers"] for h in r.get("webhook_configs", [])]
    assert len(urls) >= 4
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname in services, f"{url}: no compose service {parts.hostname}"
        assert parts.port in _listening_ports(services[parts.hostname]), f"{url}: nothing listens there"
    # the default profile alone reaches the pager sink and the exchange too
    for needed in ("pager-sink", "loom"):
        assert any(urlsplit(u).hostname == needed for u in urls), needed


def test_every_file_the_compose_alertmanager_reads_is_mounted_and_exists(resolved):
    service = resolved["services"]["alertmanager"]
    command = service["command"]
    config_file = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    referenced = [config_file]

    def files(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_file") and isinstance(value, str):
                    referenced.append(value)
                else:
                    files(value)
        elif isinstance(node, list):
            for item in node:
                files(item)

    files(_am_config())
    assert len(referenced) >= 2, referenced  # the config and the automation token at least
    for inside in referenced:
        source = _mount_source(service, inside)
        assert source is not None, f"alertmanager reads {inside}, which no volume mounts"
        assert source.is_file(), f"{inside} comes from {source}, which does not exist"


def test_the_automation_token_is_the_one_the_exchanges_expect(resolved_cluster):
    token = (AM_DIR / "secrets" / "automation-token").read_text().strip()
    assert token
    for name in ("loom", "loom-a", "loom-b"):
        assert resolved_cluster["services"][name]["environment"]["LOOM_AUTOMATION_TOKEN"] == token, name


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-cluster.yml"])
def test_prometheus_timings_are_the_slo_configs(config):
    from alerts.slo import CONFIG

    glob = yaml.safe_load((REPO / "compose" / config).read_text())["global"]
    assert glob["scrape_interval"] == CONFIG.scrape_interval
    assert glob["evaluation_interval"] == CONFIG.evaluation_interval
