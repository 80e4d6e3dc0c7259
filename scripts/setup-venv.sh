#!/usr/bin/env bash
# Create .venv (if it is not there) and install the project into it: the runtime
# dependencies only (`make run`), or with EXTRAS=test what the tests need as well (`make test`;
# its FIX client, quickfix, compiles from source for minutes). Versions come from
# constraints.txt, what was tested (CONSTRAINTS= installs the newest within pyproject's bounds).
# On a fresh Debian machine the venv module needs python3-venv (ensurepip); install it when we
# are root and it is missing.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-}
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
if [ -x "$VENV/bin/python" ]; then
  :
elif ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Loom Exchange needs Python >= 3.11; $PY is $("$PY" --version 2>&1)" >&2
  exit 1
elif ! "$PY" -m venv "$VENV" 2>/dev/null; then
  rm -rf "$VENV"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "python venv support missing: installing python3-venv" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv "$VENV"
  else
    echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  fi
fi
args=(-q -e ".${EXTRAS:+[$EXTRAS]}")
[ -n "$CONSTRAINTS" ] && args+=(-c "$CONSTRAINTS")
"$VENV/bin/python" -m pip install "${args[@]}"
