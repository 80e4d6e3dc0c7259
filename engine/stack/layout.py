"""The stack's directory and its state file (state.json): what `up` started and where."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.stack.procs import Proc

DEFAULT_DIR = ".loom-stack"
STATE = "state.json"


def default_dir() -> Path:
    """$LOOM_STACK_DIR, else ./.loom-stack."""
    return Path(os.environ.get("LOOM_STACK_DIR") or DEFAULT_DIR)


@dataclass
class Component:
    """One started process: how to reach it, how to check it, how to start it again."""

    name: str
    pid: int
    started: int  # start time in clock ticks (procs.start_time): a reused pid is not ours
    url: str  # its HTTP base URL
    health: str  # the path that answers 200 while it is healthy
    log: str
    argv: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)  # what it got beyond the caller's environment
    client_url: str = ""  # a nats-server's client URL (nats://), which the nodes use

    @property
    def proc(self) -> Proc:
        return Proc(self.pid, self.started)


@dataclass
class StackState:
    dir: str
    options: dict
    components: list[Component] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # tmpfs data disks `down` unmounts
    admin_key: str = ""
    pages: str = ""  # the pager sink's JSON-lines file

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def named(self, prefix: str) -> list[Component]:
        return [c for c in self.components if c.name == prefix or c.name.startswith(prefix + "-")]

    def summary(self) -> dict:
        """What `up --json` prints: the URLs and pids."""
        nodes = self.named("exchange")
        return {
            "dir": self.dir,
            "prometheus": self.component("prometheus").url,
            "alertmanager": self.component("alertmanager").url,
            "exchange": nodes[0].url,
            "exchanges": [c.url for c in nodes],
            "pager_sink": self.component("pager-sink").url,
            "pages": self.pages,
            "pids": {c.name: c.pid for c in self.components},
            "logs": {c.name: c.log for c in self.components},
            "options": self.options,
        }


def state_path(directory: Path) -> Path:
    return directory / STATE


def load(directory: Path) -> StackState | None:
    try:
        raw = json.loads(state_path(directory).read_text())
    except FileNotFoundError:
        return None
    raw["components"] = [Component(**c) for c in raw["components"]]
    return StackState(**raw)


def save(state: StackState) -> None:
    """Atomically (a reader never sees half a file); 0600: it holds the admin key."""
    path = state_path(Path(state.dir))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=2)
    os.replace(tmp, path)


def remove(directory: Path) -> None:
    state_path(directory).unlink(missing_ok=True)
