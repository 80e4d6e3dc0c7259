"""`loom stack up|status|down`: start every component, check them, stop them all."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.stack import binaries, configs, layout, nodes
from engine.stack.layout import Component, StackState
from engine.stack.procs import (
    StackError,
    alive,
    free_port,
    get_json,
    http_ok,
    processes_under,
    spawn,
    stop_group,
    wait_until,
)

FAST_INTERVAL = "1s"  # --fast: scrape and evaluate every second (tests, drills)
INTERVAL = "5s"


class AlreadyUp(StackError):
    pass


@dataclass
class Options:
    cluster: bool = False
    demo: bool = False
    fast: bool = False
    rate: int | None = None  # demo orders per second (loom run's default when None)
    data_disk: str = ""  # a tmpfs of this size (e.g. 64M) under the node's data dir: the disk-full drill
    ports: dict[str, int] = field(default_factory=dict)  # prometheus, alertmanager, exchange, pager
    rules: str = str(configs.RULES)  # another rules file or Alertmanager config to try
    alertmanager_config: str = str(configs.ALERTMANAGER_YML)
    timeout: float = 120.0


def pages_path(directory: Path) -> Path:
    return directory / "pager-sink" / "pages.jsonl"


def token_path(directory: Path) -> Path:
    return directory / "alertmanager" / "automation-token"


def up(directory: Path, opts: Options) -> StackState:
    """Starts the whole stack under `directory` and returns once every component is ready:
    the nodes answer (one is ready to take orders), Prometheus scrapes every target and
    knows Alertmanager. On any failure, what was started is stopped again."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    previous = layout.load(directory)
    if previous is not None:
        running = [c.name for c in previous.components if c.proc.alive()]
        if running:
            raise AlreadyUp(
                f"a stack is already up in {directory} ({', '.join(running)} running): "
                "`loom stack status` shows it, `loom stack down` stops it"
            )
        _teardown(previous)  # a stale state file (e.g. after a reboot): unmount, forget
    if opts.cluster and opts.data_disk:
        raise StackError("--data-disk is for the single node (the disk-full drill), not --cluster")
    if opts.cluster and opts.ports.get("exchange"):
        raise StackError("--exchange-port is for the single node: a cluster's nodes take free ports")
    state = StackState(
        str(directory),
        {**{k: v for k, v in vars(opts).items() if k != "ports"}, "interval": _interval(opts)},
        admin_key=secrets.token_hex(16),
        pages=str(pages_path(directory)),
    )
    try:
        _start_all(state, opts)
    except BaseException:
        _teardown(state)
        raise
    return state


def _interval(opts: Options) -> str:
    return FAST_INTERVAL if opts.fast else INTERVAL


def _start_all(state: StackState, opts: Options) -> None:
    directory = Path(state.dir)
    token = secrets.token_hex(24)
    token_file = token_path(directory)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.touch(mode=0o600)
    token_file.write_text(token)

    cluster: list[str] = []
    if opts.cluster:
        state.components += nodes.start_nats(directory / "nats")
        layout.save(state)
        cluster = nodes.nats_urls(state.components)
    config = directory / "loom.toml"
    config.write_text(nodes.exchange_config(state.admin_key, opts.demo))
    names = [f"exchange-{i}" for i in nodes.NODE_IDS] if opts.cluster else ["exchange"]
    started = []
    for i, name in enumerate(names):
        workdir = directory / name
        if opts.data_disk:
            state.mounts.append(str(mount_tmpfs(workdir / "data", opts.data_disk)))
        node = nodes.node_component(
            name,
            workdir,
            config,
            token,
            opts.ports.get("exchange") or free_port(),
            opts.demo,
            opts.rate,
            cluster,
            nodes.NODE_IDS[i] if opts.cluster else "",
        )
        state.components.append(node)
        nodes.start(node, opts.timeout)
        layout.save(state)
        started.append(node)
    nodes.wait_ready(started, opts.timeout)

    sink = _daemon(
        state,
        "pager-sink",
        opts.ports.get("pager"),
        "/-/ready",
        lambda port: [
            sys.executable,
            "-m",
            "engine.stack.pager_sink",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--out",
            state.pages,
        ],
        {"PYTHONPATH": nodes.SOURCE_ROOT},
    )
    am_dir = directory / "alertmanager"
    am_config = configs.stack_alertmanager_config(
        configs.load_yaml(Path(opts.alertmanager_config)), sink.url, [n.url for n in started], token_file
    )
    configs.write_json(am_dir / "alertmanager.yml", am_config)
    am_binary = binaries.alertmanager()
    am = _daemon(
        state,
        "alertmanager",
        opts.ports.get("alertmanager"),
        "/-/ready",
        lambda port: configs.alertmanager_argv(am_binary, port, am_dir),
    )

    prom_dir = directory / "prometheus"
    am_address = am.url.removeprefix("http://")
    targets = [n.url.removeprefix("http://") for n in started]
    prom_config = configs.prometheus_config(
        configs.stack_scrape_configs(targets, am_address),
        _interval(opts),
        [str(Path(opts.rules).resolve())],
        [am_address],
    )
    configs.write_json(prom_dir / "prometheus.yml", prom_config)
    prom_binary = binaries.prometheus()
    prom = _daemon(
        state,
        "prometheus",
        opts.ports.get("prometheus"),
        "/-/ready",
        lambda port: configs.prometheus_argv(prom_binary, port, prom_dir),
    )
    expected = len(targets) + 1
    wait_until(
        f"Prometheus to scrape all {expected} targets up",
        lambda: _targets_up(prom.url, expected),
        opts.timeout,
        interval=0.2,
        proc=prom.proc,
        log=Path(prom.log),
    )
    wait_until(
        "Prometheus to find Alertmanager",
        lambda: get_json(prom.url + "/api/v1/alertmanagers")["data"]["activeAlertmanagers"],
        opts.timeout,
        interval=0.2,
        proc=prom.proc,
        log=Path(prom.log),
    )


def _targets_up(prometheus: str, expected: int) -> bool:
    targets = get_json(prometheus + "/api/v1/targets?state=active")["data"]["activeTargets"]
    return len(targets) == expected and all(t["health"] == "up" for t in targets)


def _daemon(
    state: StackState, name: str, port: int | None, health: str, argv, env: dict | None = None
) -> Component:
    """Starts a server in its own session under <dir>/<name>, waits for `health` to answer."""
    workdir = Path(state.dir) / name
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = argv(port)
    log = workdir / f"{name}.log"
    proc = spawn(cmd, log, workdir, {**os.environ, **(env or {})})
    comp = Component(
        name,
        proc.pid,
        proc.started,
        f"http://127.0.0.1:{port}",
        health,
        str(log),
        cmd,
        str(workdir),
        env or {},
    )
    state.components.append(comp)
    layout.save(state)
    wait_until(
        f"{name} {comp.url}{health}",
        lambda: http_ok(comp.url + health),
        state.options["timeout"],
        proc=proc,
        log=log,
    )
    return comp


def status(directory: Path) -> list[dict]:
    """Each component: its pid, whether that process runs, whether it answers its health
    check (a node also says whether it is ready to take orders). [] when nothing is up."""
    state = layout.load(directory.resolve())
    if state is None:
        return []
    rows = []
    for c in state.components:
        running = c.proc.alive()
        row = {
            "name": c.name,
            "pid": c.pid,
            "url": c.url,
            "running": running,
            "healthy": running and http_ok(c.url + c.health),
        }
        if c.name.startswith("exchange"):
            row["ready"] = running and http_ok(c.url + "/readyz")
        rows.append(row)
    return rows


def down(directory: Path) -> dict:
    """Stops every component (its whole process group; reverse start order), unmounts the
    data disk, then stops anything else still running under the directory. Returns what
    it stopped and anything it could not."""
    directory = directory.resolve()
    state = layout.load(directory)
    stopped: list[str] = []
    if state is not None:
        stopped = _teardown(state)
    strays = processes_under(directory)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = [p for p in strays if alive(p)]
    return {"stopped": stopped, "strays_killed": strays, "left": left}


def _teardown(state: StackState) -> list[str]:
    stopped, failed = [], []
    for c in reversed(state.components):
        running = c.proc.alive()
        if stop_group(c.proc):
            if running:
                stopped.append(c.name)
        else:
            failed.append(c.name)
    for mount in reversed(state.mounts):
        unmount(Path(mount))
    if failed:
        layout.save(state)
        raise StackError(
            f"could not stop {', '.join(failed)}: their pids are in {layout.state_path(Path(state.dir))}"
        )
    layout.remove(Path(state.dir))
    return stopped


def mount_tmpfs(path: Path, size: str) -> Path:
    """A tmpfs of `size` at `path` (root only): a data disk small enough to fill in a drill."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(
            f"--data-disk {size}: cannot mount a tmpfs at {path} (needs root): "
            f"{proc.stderr.strip() or proc.returncode}"
        )
    return path


def unmount(path: Path) -> None:
    if os.path.ismount(path) and subprocess.run(["umount", str(path)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=False)
