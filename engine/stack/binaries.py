"""Where the real servers are: the Debian packages `make test` installs
(scripts/install-tools.sh) and the nats-server wheel (engine/cluster/natsserver.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.stack.procs import StackError

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
_INSTALL = "`make test` installs it (scripts/install-tools.sh)"


def _find(path: str, name: str) -> str:
    found = path if Path(path).is_file() else shutil.which(name)
    if not found:
        raise StackError(f"{name} not found at {path} or on PATH: {_INSTALL}")
    return found


def prometheus() -> str:
    return _find(PROMETHEUS, "prometheus")


def alertmanager() -> str:
    try:
        return _find(ALERTMANAGER, "prometheus-alertmanager")
    except StackError:
        return _find("/usr/bin/alertmanager", "alertmanager")
