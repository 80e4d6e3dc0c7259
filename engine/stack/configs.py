"""The configurations `loom stack` writes: Prometheus (the project's rules, exemplar
storage, scraping the nodes and Alertmanager) and Alertmanager (the project's routing with
its placeholder receivers pointed at this stack). JSON is YAML: both are written as JSON."""

from __future__ import annotations

import copy
import json
import urllib.parse
from pathlib import Path

import alerts

RULES = Path(alerts.__file__).parent / "generated" / "loom-rules.yml"
ALERTMANAGER_YML = Path(alerts.__file__).parent / "alertmanager.yml"
EXCHANGE_JOB = "loom"  # the job the generated rules select (alerts/rules.py)
AUTOMATION_PATH = "/v1/admin/automation"  # engine/gateways/rest_admin.py


def prometheus_config(
    scrape_configs: list[dict],
    interval: str,
    rule_files: list[str] = (),
    alertmanagers: list[str] = (),
) -> dict:
    """One scrape and evaluation interval for everything (the scrape timeout may not exceed it)."""
    config: dict = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": scrape_configs,
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return config


def prometheus_argv(binary: str, port: int, workdir: Path) -> list[str]:
    return [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--config.file={workdir / 'prometheus.yml'}",
        "--enable-feature=exemplar-storage",
    ]


def alertmanager_argv(binary: str, port: int, workdir: Path, config: Path | None = None) -> list[str]:
    """Alertmanager's flags: `config` (default workdir/alertmanager.yml), data under `workdir`."""
    return [
        binary,
        f"--config.file={config or workdir / 'alertmanager.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # one Alertmanager: no gossip port
        f"--storage.path={workdir / 'data'}",
    ]


def stack_scrape_configs(nodes: list[str], alertmanager: str) -> list[dict]:
    """The exchange's nodes (host:port) under the rules' job, and Alertmanager."""
    return [
        {"job_name": EXCHANGE_JOB, "static_configs": [{"targets": nodes}]},
        {"job_name": "alertmanager", "static_configs": [{"targets": [alertmanager]}]},
    ]


def is_automation_receiver(name: str) -> bool:
    """The receiver that drives runbook automation (alerts/alertmanager.yml's
    `runbook-automation`); every other receiver is a person's (pager, ticket, ...)."""
    return "automation" in name


def stack_alertmanager_config(
    source: dict, sink_base: str, exchange_bases: list[str], token_file: Path
) -> dict:
    """The project's routing unchanged; every webhook of a person's receiver goes to the pager
    sink (same path, so the sink records which one), and the automation receiver gets one
    webhook per exchange node (its own endpoint, the stack's token file)."""
    config = copy.deepcopy(source)
    for receiver in config.get("receivers", []):
        hooks = receiver.get("webhook_configs")
        if not hooks:
            continue
        if is_automation_receiver(receiver["name"]):
            template = hooks[0]
            receiver["webhook_configs"] = [
                _automation_hook(template, base + AUTOMATION_PATH, token_file) for base in exchange_bases
            ]
        else:
            for hook in hooks:
                path = urllib.parse.urlsplit(hook["url"]).path or "/"
                hook["url"] = sink_base + path
    return config


def _automation_hook(template: dict, url: str, token_file: Path) -> dict:
    hook = copy.deepcopy(template)
    hook["url"] = url
    auth = hook.setdefault("http_config", {}).setdefault("authorization", {"type": "Bearer"})
    auth.pop("credentials", None)
    auth["credentials_file"] = str(token_file)
    return hook


def load_yaml(path: Path) -> dict:
    # Imported here: `loom run` (which loads the CLI, and so this module) needs no extra.
    from engine.extras import require

    require("yaml", "PyYAML", "stack", "loom stack")
    import yaml

    return yaml.safe_load(path.read_text())


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def rule_names(rules: Path = RULES) -> set[str]:
    """The alert names the rules file declares."""
    return {r["alert"] for g in load_yaml(rules)["groups"] for r in g["rules"] if "alert" in r}
