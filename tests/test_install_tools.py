"""scripts/install-tools.sh keeps package services stopped only while it installs (issue 14).

FIX: it wrote /usr/sbin/policy-rc.d ("exit 101") and left it there, so every later package's
services on the host failed to start. The script runs here for real, as bash, but on a
PATH of its own: `id` says root, `apt-get` is a stand-in that records what policy-rc.d held
while it ran, and POLICY_RC_D points into a temporary directory, so nothing needs root or
touches the host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-tools.sh"
TOOLS = ("bash", "cat", "chmod", "cp", "mktemp", "mv", "rm", "dirname")


def fake_path(tmp: Path, apt_exit: int) -> Path:
    """A bin directory with the shell tools the script uses, `id` = 0 and a recording
    apt-get (and no promtool, alertmanager, docker-compose or npm, so all four are missing)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "apt-get $*" >> "{tmp}/calls"\n'
        f'cat "$POLICY_RC_D" >> "{tmp}/policy-during-install"\n'
        f"exit {apt_exit}\n"
    )
    for name in ("id", "apt-get"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def schema_in_place(tmp: Path) -> Path:
    """Grafana's dashboard schema as if installed already (its step is then skipped)."""
    version = re.search(r"^GRAFANA_SCHEMA=(\S+)$", SCRIPT.read_text(), re.M)[1]
    schema = tmp / "grafana-schema"
    schema.mkdir()
    (schema / "VERSION").write_text(version + "\n")
    (schema / "dashboard.schema.json").write_text("{}")
    return schema


def run(tmp: Path, policy: Path, apt_exit: int = 0) -> subprocess.CompletedProcess:
    bin_dir = fake_path(tmp, apt_exit)
    return subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)],
        env={
            "PATH": str(bin_dir),
            "POLICY_RC_D": str(policy),
            "GRAFANA_SCHEMA_DIR": str(schema_in_place(tmp)),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("apt_exit", [0, 100])
def test_no_policy_before_means_none_after(tmp_path, apt_exit):
    policy = tmp_path / "usr-sbin" / "policy-rc.d"
    policy.parent.mkdir()
    done = run(tmp_path, policy, apt_exit)
    assert done.returncode == apt_exit, done.stderr
    assert "exit 101" in (tmp_path / "policy-during-install").read_text()  # services held during it
    calls = (tmp_path / "calls").read_text().splitlines()
    if apt_exit:  # a failed update stops the script: the policy is restored all the same
        assert calls == ["apt-get update -qq"]
    else:
        assert calls[-1] == (
            "apt-get install -y -qq --no-install-recommends "
            "prometheus prometheus-alertmanager docker-compose npm"
        )
    assert not policy.exists() and not policy.is_symlink(), "policy-rc.d left behind"
    assert list(policy.parent.iterdir()) == []  # no saved copy either


def test_the_hosts_own_policy_is_put_back(tmp_path):
    policy = tmp_path / "usr-sbin" / "policy-rc.d"
    policy.parent.mkdir()
    own = "#!/bin/sh\n# the host's own policy\nexit 0\n"
    policy.write_text(own)
    policy.chmod(0o750)
    done = run(tmp_path, policy)
    assert done.returncode == 0, done.stderr
    assert "exit 101" in (tmp_path / "policy-during-install").read_text()
    assert policy.read_text() == own
    assert policy.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in policy.parent.iterdir()] == ["policy-rc.d"]


def test_nothing_missing_touches_nothing(tmp_path):
    policy = tmp_path / "policy-rc.d"
    bin_dir = fake_path(tmp_path, 0)
    for tool in ("promtool", "prometheus-alertmanager", "docker-compose", "npm"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    done = subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)],
        env={
            "PATH": str(bin_dir),
            "POLICY_RC_D": str(policy),
            "GRAFANA_SCHEMA_DIR": str(schema_in_place(tmp_path)),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "calls").exists() and not policy.exists()
